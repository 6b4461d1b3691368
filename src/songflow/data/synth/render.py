"""Render a :class:`pretty_midi.PrettyMIDI` to audio with one long-lived FluidSynth synthesizer.

A :class:`MidiRenderer` loads the SoundFont once (0.05-9 CPU-s depending on the font; rendering a 30 s
piece costs ~0.3 CPU-s), so a corpus worker makes one renderer and reuses it for every clip.

Rendering is bit-exact reproducible: a clip renders to the same samples whichever clips the worker rendered
before it. A FluidSynth synth is not: a system reset leaves the reverb's modulation phase, the 64-frame block
phase and per-voice/per-sample lazily computed state behind (measured differences up to 3e-2). So every
piece after the first gets a new synth object, created while the previous one still holds the SoundFont, so
FluidSynth's in-process sample cache makes the reload cost ~0.04 CPU-s instead of a full load.

System dependencies (``scripts/install_synth_deps.sh``): Debian ``fluidsynth`` (``libfluidsynth3``) and
``fluid-soundfont-gm``; Python ``pyfluidsynth`` and ``pretty_midi``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from songflow.errors import SongflowError

if TYPE_CHECKING:  # pragma: no cover
    import pretty_midi

INSTALL_HINT = "run scripts/install_synth_deps.sh (apt: fluidsynth fluid-soundfont-gm; pip: pyfluidsynth)"
SOUNDFONT_ENV = "SONGFLOW_SOUNDFONT"
# searched in order; FluidR3_GM (MIT, 148 MB, good drums) first, then smaller General MIDI fonts
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
)
DRUM_CHANNEL = 9
DRUM_BANK = 128
_BLOCK = 4096  # samples per synth write call between events


class SynthDependencyError(SongflowError):
    """FluidSynth, its Python binding or a usable SoundFont is missing or broken."""


def check_soundfont(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` if it is a readable SoundFont (RIFF ``sfbk``), else raise a clear error."""
    p = Path(path)
    if not p.is_file():
        raise SynthDependencyError(f"SoundFont {p} does not exist; {INSTALL_HINT} or pass an existing .sf2")
    try:
        with p.open("rb") as fh:
            head = fh.read(12)
    except OSError as exc:
        raise SynthDependencyError(f"SoundFont {p} cannot be read ({exc}); {INSTALL_HINT}") from exc
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise SynthDependencyError(
            f"{p} is not a SoundFont (no RIFF 'sfbk' header: corrupt or truncated?); "
            f"reinstall it ({INSTALL_HINT}) or pass another .sf2/.sf3"
        )
    declared = int.from_bytes(head[4:8], "little") + 8
    if p.stat().st_size < declared:
        raise SynthDependencyError(
            f"SoundFont {p} is truncated ({p.stat().st_size} of {declared} bytes); {INSTALL_HINT}"
        )
    return p


def find_soundfont(path: str | os.PathLike[str] | None = None) -> Path:
    """The SoundFont to use: ``path``, else ``$SONGFLOW_SOUNDFONT``, else the first installed GM font."""
    if path is not None:
        return check_soundfont(path)
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        return check_soundfont(env)
    for cand in SOUNDFONT_CANDIDATES:
        if Path(cand).is_file():
            return check_soundfont(cand)
    raise SynthDependencyError(
        "no General MIDI SoundFont found (looked for " + ", ".join(SOUNDFONT_CANDIDATES[:3]) + ", ...); "
        f"{INSTALL_HINT}, or set ${SOUNDFONT_ENV} to an .sf2 file"
    )


def _import_fluidsynth():
    try:
        import fluidsynth  # pyfluidsynth
    except ImportError as exc:  # the module raises ImportError when libfluidsynth is missing too
        msg = f"pyfluidsynth / libfluidsynth is not available ({exc}); {INSTALL_HINT}"
        raise SynthDependencyError(msg) from exc
    if not hasattr(fluidsynth, "Synth"):
        raise SynthDependencyError(
            "the imported 'fluidsynth' module is not pyfluidsynth (pip uninstall fluidsynth; "
            f"pip install pyfluidsynth); {INSTALL_HINT}"
        )
    return fluidsynth


@dataclass(frozen=True)
class _Event:
    time_s: float
    order: int  # note-offs (0) before controllers (1) before note-ons (2) at the same time
    channel: int
    kind: str
    a: int
    b: int


def _channel_plan(midi: pretty_midi.PrettyMIDI) -> list[tuple[int, int, bool]]:
    """(channel, program, is_drum) per instrument; drums share channel 9, others get 0-8, 10-15 in turn."""
    melodic = [c for c in range(16) if c != DRUM_CHANNEL]
    plan, k = [], 0
    for inst in midi.instruments:
        if inst.is_drum:
            plan.append((DRUM_CHANNEL, inst.program, True))
        else:
            plan.append((melodic[k % len(melodic)], inst.program, False))
            k += 1
    return plan


def _events(midi: pretty_midi.PrettyMIDI, plan: Iterable[tuple[int, int, bool]]) -> list[_Event]:
    ev: list[_Event] = []
    for inst, (ch, _prog, _drum) in zip(midi.instruments, plan, strict=True):
        for n in inst.notes:
            ev.append(_Event(float(n.start), 2, ch, "on", int(n.pitch), int(n.velocity)))
            ev.append(_Event(float(n.end), 0, ch, "off", int(n.pitch), 0))
        for pb in inst.pitch_bends:
            ev.append(_Event(float(pb.time), 1, ch, "bend", int(pb.pitch), 0))
        for cc in inst.control_changes:
            ev.append(_Event(float(cc.time), 1, ch, "cc", int(cc.number), int(cc.value)))
    ev.sort(key=lambda e: (e.time_s, e.order, e.channel, e.a))
    return ev


class MidiRenderer:
    """One FluidSynth synth with one SoundFont, rendering PrettyMIDI objects to float32 ``[C, T]``.

    ``channels`` is 1 (the L/R average) or 2. Reverb is on by default (FluidSynth's default room), chorus
    off. ``gain`` is FluidSynth's master gain; output is float, so loud passages are not clipped here.
    """

    def __init__(
        self,
        soundfont: str | os.PathLike[str] | None = None,
        *,
        sample_rate: int = 44100,
        channels: int = 2,
        reverb: bool = True,
        chorus: bool = False,
        gain: float = 0.4,
    ) -> None:
        if channels not in (1, 2):
            raise SongflowError(f"channels must be 1 or 2, got {channels}")
        if not 8000 <= int(sample_rate) <= 96000:
            raise SongflowError(f"FluidSynth renders 8000-96000 Hz, got sample_rate={sample_rate}")
        self.soundfont = find_soundfont(soundfont)
        self.sample_rate = int(sample_rate)
        self.channels = channels
        self.reverb = reverb
        self.chorus = chorus
        self.gain = float(gain)
        self._fl = _import_fluidsynth()
        self._synth = None
        self._used = False
        self._new_synth()

    def _new_synth(self) -> None:
        fl = self._fl
        synth = fl.Synth(
            gain=self.gain,
            samplerate=float(self.sample_rate),
            **{
                "synth.reverb.active": int(self.reverb),
                "synth.chorus.active": int(self.chorus),
                "synth.polyphony": 512,
                "synth.cpu-cores": 1,
            },
        )
        sfid = synth.sfload(str(self.soundfont))
        if sfid is None or sfid < 0:
            synth.delete()
            raise SynthDependencyError(
                f"FluidSynth could not load the SoundFont {self.soundfont} (corrupt?); {INSTALL_HINT}"
            )
        self._synth = synth
        self._sfid = sfid
        write = fl._fl.fluid_synth_write_float
        write.restype = ctypes.c_int
        write.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        self._write_float = write

    @property
    def description(self) -> dict:
        return {
            "synth": "fluidsynth (pyfluidsynth)",
            "soundfont": self.soundfont.name,
            "reverb": self.reverb,
            "chorus": self.chorus,
            "sample_rate": self.sample_rate,
        }

    def _fresh_synth(self) -> None:
        """Swap in a new synth before a piece (the old one is deleted after, so the samples stay cached)."""
        old = self._synth
        self._new_synth()
        old.delete()

    def _generate(self, out: np.ndarray, start: int, n: int) -> None:
        """Synthesise ``n`` frames into ``out[:, start:start+n]`` (``out``: C-contiguous float32 [2, T])."""
        while n > 0:
            m = min(n, _BLOCK)
            left = out[0, start:].ctypes.data
            right = out[1, start:].ctypes.data
            if self._write_float(self._synth.synth, m, left, 0, 1, right, 0, 1) != 0:
                raise SynthDependencyError("fluid_synth_write_float failed")
            start += m
            n -= m

    def render(
        self, midi: pretty_midi.PrettyMIDI, *, duration_s: float | None = None, tail_s: float = 1.5
    ) -> np.ndarray:
        """Render ``midi``; returns float32 ``[channels, T]``.

        ``T`` is ``duration_s`` seconds if given (later events are dropped and notes still sounding are
        cut there), else the end of the last note plus ``tail_s`` of release/reverb tail.
        """
        sr = self.sample_rate
        end_s = float(midi.get_end_time()) + tail_s if duration_s is None else float(duration_s)
        total = max(1, int(round(end_s * sr)))
        out = np.zeros((2, total), dtype=np.float32)
        if self._used:
            self._fresh_synth()
        self._used = True
        plan = _channel_plan(midi)
        syn = self._synth
        for ch, prog, drum in plan:
            syn.program_select(ch, self._sfid, DRUM_BANK if drum else 0, 0 if drum else prog)
        cur = 0
        for e in _events(midi, plan):
            s = int(round(e.time_s * sr))
            if s >= total:
                break
            if s > cur:
                self._generate(out, cur, s - cur)
                cur = s
            if e.kind == "on":
                syn.noteon(e.channel, e.a, e.b)
            elif e.kind == "off":
                syn.noteoff(e.channel, e.a)
            elif e.kind == "bend":
                syn.pitch_bend(e.channel, e.a)
            else:
                syn.cc(e.channel, e.a, e.b)
        if total > cur:
            self._generate(out, cur, total - cur)
        if self.channels == 1:
            return out.mean(axis=0, keepdims=True)
        return out

    def close(self) -> None:
        syn = getattr(self, "_synth", None)
        if syn is not None:
            syn.delete()
            self._synth = None

    def __enter__(self) -> MidiRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
