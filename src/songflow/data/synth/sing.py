"""A diphone singer: lyrics on a melody, sung by MBROLA, with the sung pitch and timing as labels.

Pipeline: word -> ARPAbet (CMUdict through ``pronouncing``; a letter-rule fallback for unknown words) ->
MBROLA's US SAMPA phonemes -> syllables (one vowel each, maximal legal onset) -> one syllable per note ->
phoneme segments (onset consonants before the note start so the vowel lands on the beat, coda consonants
closing the note) -> a ``.pho`` script with durations and f0 points (glide, vibrato) -> ``mbrola`` -> 16 kHz
mono -> resampled with soxr.

MBROLA realises f0 as a whole number of 16 kHz samples per period, rounding the period down, which makes a
request up to ~35 cents sharp at 350-520 Hz. Each requested frequency is therefore replaced by one whose
truncated period equals the *rounded* ideal period, which bounds the error to half a sample (about ±11 cents
at 200 Hz, ±21 cents at 400 Hz); the realised frequency is reported per syllable.

System dependencies (``scripts/install_synth_deps.sh``): Debian ``mbrola`` (contrib) and the voices
``mbrola-us1`` (female) / ``mbrola-us3`` (male) (non-free; the voice licence forbids selling them or shipping
them in a sold product). Python: ``pronouncing``, ``soxr``.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from songflow.errors import SongflowError

INSTALL_HINT = "run scripts/install_synth_deps.sh (apt: mbrola [contrib], mbrola-us1 / mbrola-us3 [non-free])"
MBROLA_VOICE_DIRS = ("/usr/share/mbrola", "/usr/local/share/mbrola")
MBROLA_ENV = "SONGFLOW_MBROLA_DIR"


class SingerDependencyError(SongflowError):
    """The ``mbrola`` program or a voice database is missing."""


@dataclass(frozen=True)
class VoiceSpec:
    name: str
    gender: str  # 'female' | 'male'
    comfort_midi: int  # median pitch of a comfortable singing line
    min_midi: int  # below this the voice turns to creak
    max_midi: int  # above this the period quantisation gets coarse (and it sounds strained)
    sample_rate: int = 16000
    phone_renames: tuple[tuple[str, str], ...] = ()


VOICES: dict[str, VoiceSpec] = {
    "us1": VoiceSpec("us1", "female", comfort_midi=64, min_midi=53, max_midi=72),
    "us2": VoiceSpec("us2", "male", comfort_midi=51, min_midi=40, max_midi=62),
    # us3's schwa diphones are near silent when held: sing the stressed vowel instead
    "us3": VoiceSpec("us3", "male", comfort_midi=51, min_midi=40, max_midi=62, phone_renames=(("@", "V"),)),
}
DEFAULT_VOICE = {"female": "us1", "male": "us3"}


# --------------------------------------------------------------------------------------------- phonemes
_ARPA_TO_SAMPA = {
    # vowels
    "AA": "A", "AE": "{", "AH": "V", "AO": "O", "AW": "aU", "AY": "AI", "EH": "E", "ER": "r=", "EY": "EI",
    "IH": "I", "IY": "i", "OW": "@U", "OY": "OI", "UH": "U", "UW": "u",
    # consonants
    "B": "b", "CH": "tS", "D": "d", "DH": "D", "F": "f", "G": "g", "HH": "h", "JH": "dZ", "K": "k",
    "L": "l", "M": "m", "N": "n", "NG": "N", "P": "p", "R": "r", "S": "s", "SH": "S", "T": "t", "TH": "T",
    "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "Z",
}  # fmt: skip
VOWELS = frozenset({"A", "{", "V", "O", "aU", "AI", "E", "r=", "EI", "I", "i", "@U", "OI", "U", "u", "@"})
VOICELESS = frozenset({"p", "t", "k", "f", "T", "s", "S", "h", "tS"})
# nominal sung consonant lengths (seconds) by phoneme
_CONSONANT_S = {
    "p": 0.065, "t": 0.060, "k": 0.070, "b": 0.055, "d": 0.050, "g": 0.055,
    "f": 0.085, "v": 0.060, "T": 0.080, "D": 0.040, "s": 0.095, "z": 0.075, "S": 0.095, "Z": 0.075,
    "h": 0.055, "tS": 0.095, "dZ": 0.085, "m": 0.065, "n": 0.060, "N": 0.065, "l": 0.055, "r": 0.050,
    "w": 0.050, "j": 0.045,
}  # fmt: skip
# legal English syllable onsets of two or three consonants (single consonants are always legal)
_ONSETS = frozenset(
    tuple(o.split())
    for o in (
        "p r|t r|k r|b r|d r|g r|f r|T r|S r|p l|k l|b l|g l|f l|s l|s w|t w|k w|d w|g w|s m|s n|s p|s t|s k"
        "|p j|b j|f j|m j|k j|v j|h j|s f|s p r|s t r|s k r|s p l|s k w|s p j|s k j"
    ).split("|")
)
_LETTER_DIGRAPHS = {
    "th": ["T"],
    "sh": ["S"],
    "ch": ["tS"],
    "ng": ["N"],
    "ph": ["f"],
    "ck": ["k"],
    "qu": ["k", "w"],
}
_LETTERS = {
    "a": ["{"], "e": ["E"], "i": ["I"], "o": ["A"], "u": ["V"], "y": ["i"],
    "b": ["b"], "c": ["k"], "d": ["d"], "f": ["f"], "g": ["g"], "h": ["h"], "j": ["dZ"], "k": ["k"],
    "l": ["l"], "m": ["m"], "n": ["n"], "p": ["p"], "q": ["k"], "r": ["r"], "s": ["s"], "t": ["t"],
    "v": ["v"], "w": ["w"], "x": ["k", "s"], "z": ["z"],
}  # fmt: skip


def _letters_to_phones(word: str) -> list[str]:
    """Crude spelling rules for words missing from CMUdict (names, invented words)."""
    w = "".join(c for c in word.lower() if c.isalpha())
    if len(w) > 2 and w.endswith("e") and any(c in "aiouy" for c in w[:-1]):
        w = w[:-1]  # silent final e
    out: list[str] = []
    i = 0
    while i < len(w):
        if w[i : i + 2] in _LETTER_DIGRAPHS:
            ph = _LETTER_DIGRAPHS[w[i : i + 2]]
            i += 2
        else:
            ph = _LETTERS.get(w[i], [])
            i += 1
            while i < len(w) and w[i] == w[i - 1]:  # doubled letters sound once
                i += 1
        out.extend(ph)
    if not any(p in VOWELS for p in out):
        out.append("@")
    return out


@functools.lru_cache(maxsize=8192)
def word_phonemes(word: str) -> tuple[str, ...]:
    """MBROLA US SAMPA phonemes of ``word`` (first CMUdict pronunciation; unstressed AH -> schwa)."""
    import pronouncing

    key = word.lower().strip(".,!?;:\"'()[]-")
    prons = pronouncing.phones_for_word(key) if key else []
    if not prons:
        return tuple(_letters_to_phones(key or "a"))
    phones = []
    for arpa in prons[0].split():
        base = arpa.rstrip("012")
        phones.append("@" if base == "AH" and arpa.endswith("0") else _ARPA_TO_SAMPA[base])
    return tuple(phones)


def syllabify(phones: Sequence[str]) -> list[list[str]]:
    """Split phonemes into syllables: one vowel each; consonants between vowels go to the next syllable's
    onset as far as that onset stays legal (maximal onset), the rest close the previous syllable."""
    nuclei = [i for i, p in enumerate(phones) if p in VOWELS]
    if not nuclei:
        return [list(phones)]
    bounds = [0]
    for a, b in zip(nuclei, nuclei[1:], strict=False):
        cluster = tuple(phones[a + 1 : b])
        take = 0
        for k in range(len(cluster), 0, -1):
            if k == 1 or cluster[-k:] in _ONSETS:
                take = k
                break
        bounds.append(b - take)
    bounds.append(len(phones))
    return [list(phones[s:e]) for s, e in zip(bounds, bounds[1:], strict=False)]


def fit_syllables(syllables: list[list[str]], n: int) -> list[list[str]]:
    """Make ``n`` syllables: merge the last ones when there are too many; when too few, hold the last vowel
    over the extra notes (a melisma), moving the coda to the final note."""
    syl = [list(s) for s in syllables]
    while len(syl) > max(n, 1):
        tail = syl.pop()
        syl[-1].extend(tail)
    while len(syl) < n:
        last = syl[-1]
        vi = max(i for i, p in enumerate(last) if p in VOWELS) if any(p in VOWELS for p in last) else None
        if vi is None:
            syl.append(["@"])
            continue
        syl[-1] = last[: vi + 1]
        syl.append([last[vi]] + last[vi + 1 :])
    return syl


# --------------------------------------------------------------------------------------------- layout
class NoteLike(Protocol):
    start_s: float
    end_s: float
    midi_pitch: int
    word: str
    syllable_index: int
    word_index: int


@dataclass
class _Seg:
    phone: str
    start: float
    end: float
    midi: int | None  # None: unvoiced, no f0 target
    note: int | None = None  # index of the note whose vowel this is


@dataclass(frozen=True)
class SungSyllable:
    """One sung note: the vowel nucleus timing and the pitch actually requested from the voice."""

    start_s: float
    end_s: float
    midi_pitch: int  # after the octave transposition to the voice's range
    realised_hz: float  # the f0 MBROLA produces (period quantisation)
    word: str
    word_index: int
    syllable_index: int
    phonemes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "start": round(self.start_s, 4),
            "end": round(self.end_s, 4),
            "midi": self.midi_pitch,
            "hz": round(self.realised_hz, 3),
            "word": self.word,
            "word_index": self.word_index,
            "syllable_index": self.syllable_index,
            "phonemes": list(self.phonemes),
        }


@dataclass
class VocalTake:
    audio: np.ndarray  # float32 [channels, T] at sample_rate
    sample_rate: int
    voice: str
    gender: str
    transpose: int  # semitones added to the written melody
    syllables: list[SungSyllable]
    pho: str = field(repr=False)

    @property
    def words(self) -> list[dict]:
        out: list[dict] = []
        for s in self.syllables:
            if out and out[-1]["word_index"] == s.word_index:
                out[-1]["end"] = round(s.end_s, 4)
                out[-1]["notes"].append(s.midi_pitch)
            else:
                out.append(
                    {
                        "word": s.word,
                        "word_index": s.word_index,
                        "start": round(s.start_s, 4),
                        "end": round(s.end_s, 4),
                        "notes": [s.midi_pitch],
                    }
                )
        return out


def choose_transpose(pitches: Sequence[int], voice: VoiceSpec) -> int:
    """The octave shift that best puts the melody's median near the voice's comfortable pitch while keeping
    its notes inside the voice's range (each semitone outside the range costs three of distance)."""
    med, low, top = float(np.median(pitches)), min(pitches), max(pitches)

    def cost(shift: int) -> float:
        over = max(0, top + shift - voice.max_midi) + max(0, voice.min_midi - (low + shift))
        return abs(med + shift - voice.comfort_midi) + 3.0 * over

    return min(range(-36, 37, 12), key=lambda s: (cost(s), abs(s)))


def _layout(notes: Sequence[NoteLike], transpose: int, renames: dict[str, str]) -> tuple[list[_Seg], list]:
    words: dict[int, list[int]] = {}
    for i, n in enumerate(notes):
        words.setdefault(n.word_index, []).append(i)
    note_syl: dict[int, list[str]] = {}
    for idxs in words.values():
        idxs.sort(key=lambda i: (notes[i].syllable_index, notes[i].start_s))
        syl = fit_syllables(syllabify(word_phonemes(notes[idxs[0]].word)), len(idxs))
        for i, s in zip(idxs, syl, strict=True):
            note_syl[i] = [renames.get(p, p) for p in s]

    segs: list[_Seg] = []
    order = sorted(range(len(notes)), key=lambda i: notes[i].start_s)
    for i in order:
        n = notes[i]
        m = int(n.midi_pitch) + transpose
        t0, t1 = float(n.start_s), float(n.end_s)
        t0 = max(t0, segs[-1].end if segs else 0.0)
        dur = t1 - t0
        if dur < 0.03:
            continue
        syl = note_syl[i]
        vi = next((k for k, p in enumerate(syl) if p in VOWELS), None)
        vowel = syl[vi] if vi is not None else "@"
        onset = syl[:vi] if vi is not None else syl
        coda = syl[vi + 1 :] if vi is not None else []
        on_len = [_CONSONANT_S.get(p, 0.06) for p in onset]
        co_len = [_CONSONANT_S.get(p, 0.06) for p in coda]
        co_total = sum(co_len)
        if co_total > 0.4 * dur:
            co_len = [c * 0.4 * dur / co_total for c in co_len]
            co_total = 0.4 * dur
        on_total = sum(on_len)
        # room before the note: the gap since the last segment, plus what the previous vowel can spare
        prev_end = segs[-1].end if segs else 0.0
        room = t0 - prev_end
        if segs and segs[-1].phone in VOWELS:
            pv = segs[-1]
            room += max(0.0, min(pv.end - pv.start - 0.06, 0.5 * (pv.end - pv.start)))
        if on_total == 0:
            t, vstart, scale = t0, t0, 1.0
        elif room >= 0.7 * on_total:
            scale = min(1.0, room / on_total)
            t = t0 - on_total * scale
            vstart = t0
            if segs and segs[-1].end > t:
                segs[-1].end = t
        else:  # no room before the beat: the onset eats into the note
            scale = min(1.0, 0.3 * dur / on_total)
            t = t0
            vstart = t0 + on_total * scale
        for p, c in zip(onset, on_len, strict=True):
            segs.append(_Seg(p, t, t + c * scale, None if p in VOICELESS else m))
            t += c * scale
        vend = max(t1 - co_total, vstart + 0.04)
        segs.append(_Seg(vowel, vstart, vend, m, note=i))
        t = vend
        for p, c in zip(coda, co_len, strict=True):
            segs.append(_Seg(p, t, t + c, None if p in VOICELESS else m))
            t += c
    return segs, [note_syl.get(i, []) for i in range(len(notes))]


# --------------------------------------------------------------------------------------------- .pho
def midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69.0) / 12.0)


def quantised_request(hz: float, rate: int = 16000) -> tuple[float, float]:
    """(frequency to write in the .pho, frequency MBROLA will then produce) for a wanted ``hz``."""
    period = max(1, round(rate / hz))
    return rate / (period + 0.001), rate / period


def _f0_points(
    seg: _Seg, prev_midi: int | None, vib_cents: float, vib_hz: float
) -> list[tuple[float, float]]:
    """(percent of segment, Hz) pitch targets for a voiced segment."""
    f = midi_hz(seg.midi)
    d = seg.end - seg.start
    if seg.note is None:  # voiced consonant
        return [(0.0, f), (100.0, f)]
    pts: list[tuple[float, float]] = []
    glide = 0.04
    if prev_midi is not None and prev_midi != seg.midi and d > 3 * glide:
        pts.append((0.0, midi_hz(seg.midi + 0.3 * (prev_midi - seg.midi))))
        pts.append((100.0 * glide / d, f))
    else:
        pts.append((0.0, f))
    delay, ramp, step = 0.2, 0.25, 1.0 / (4.0 * vib_hz)
    t = delay
    while vib_cents > 0 and t < d - 0.03 and len(pts) < 24:
        depth = vib_cents * min(1.0, (t - delay) / ramp)
        cents = depth * math.sin(2.0 * math.pi * vib_hz * (t - delay))
        pts.append((100.0 * t / d, f * 2.0 ** (cents / 1200.0)))
        t += step
    pts.append((100.0, f))
    return pts


def segments_to_pho(
    segs: Sequence[_Seg], *, rate: int = 16000, vibrato_cents: float = 20.0, vibrato_hz: float = 5.5
) -> str:
    """The ``.pho`` text. Times are kept on an integer-millisecond grid measured from 0, so rounding never
    accumulates into drift."""
    lines = []
    cursor_ms = 0
    prev_midi = None
    for seg in segs:
        s_ms = int(round(seg.start * 1000))
        e_ms = int(round(seg.end * 1000))
        if s_ms > cursor_ms:
            lines.append(f"_ {s_ms - cursor_ms}")
            cursor_ms = s_ms
        dur = e_ms - cursor_ms
        if dur < 5:
            continue
        text = f"{seg.phone} {dur}"
        if seg.midi is not None:
            for pct, hz in _f0_points(seg, prev_midi, vibrato_cents, vibrato_hz):
                text += f" {pct:.0f} {quantised_request(hz, rate)[0]:.3f}"
            if seg.note is not None:
                prev_midi = seg.midi
        lines.append(text)
        cursor_ms = e_ms
    lines.append("_ 150")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- engine
def find_mbrola() -> str:
    exe = shutil.which("mbrola")
    if exe is None:
        raise SingerDependencyError(f"the 'mbrola' program is not installed; {INSTALL_HINT}")
    return exe


def find_voice(name: str) -> Path:
    if name not in VOICES:
        raise SongflowError(f"unknown MBROLA voice {name!r}; known: {', '.join(sorted(VOICES))}")
    dirs = [os.environ[MBROLA_ENV]] if os.environ.get(MBROLA_ENV) else []
    for d in [*dirs, *MBROLA_VOICE_DIRS]:
        p = Path(d) / name / name
        if p.is_file():
            return p
    raise SingerDependencyError(
        f"MBROLA voice {name!r} not found under {', '.join(MBROLA_VOICE_DIRS)}; {INSTALL_HINT} "
        f"(or apt-get install mbrola-{name})"
    )


def mbrola_available(voices: Sequence[str] = ("us1", "us3")) -> bool:
    try:
        find_mbrola()
        for v in voices:
            find_voice(v)
    except SongflowError:
        return False
    return True


class MbrolaSinger:
    """Sings melodies (sequences of notes carrying a word and a syllable index) with one MBROLA voice."""

    def __init__(
        self,
        voice: str = "us1",
        *,
        sample_rate: int = 44100,
        channels: int = 1,
        vibrato_cents: float = 20.0,
        vibrato_hz: float = 5.5,
    ) -> None:
        if voice in DEFAULT_VOICE:
            voice = DEFAULT_VOICE[voice]
        self.database = find_voice(voice)  # raises a clear error for unknown or missing voices
        self.spec = VOICES[voice]
        self.exe = find_mbrola()
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.vibrato_cents = vibrato_cents
        self.vibrato_hz = vibrato_hz

    def sing(
        self, melody: Sequence[NoteLike], *, duration_s: float | None = None, transpose: int | None = None
    ) -> VocalTake:
        """Sing ``melody``: a stem from time 0 lasting ``duration_s`` (default: melody end + 0.3 s)."""
        if not melody:
            raise SongflowError("nothing to sing: the melody is empty")
        spec = self.spec
        if transpose is None:
            transpose = choose_transpose([n.midi_pitch for n in melody], spec)
        segs, syl_phones = _layout(melody, transpose, dict(spec.phone_renames))
        pho = segments_to_pho(
            segs, rate=spec.sample_rate, vibrato_cents=self.vibrato_cents, vibrato_hz=self.vibrato_hz
        )
        proc = subprocess.run(
            [self.exe, "-e", str(self.database), "-", "-"],
            input=pho.encode("ascii"),
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0 or not proc.stdout:
            err = proc.stderr.decode(errors="replace").strip()[-400:]
            raise SongflowError(f"mbrola failed (exit {proc.returncode}): {err}")
        raw = np.frombuffer(proc.stdout, dtype="<i2").astype(np.float32) / 32768.0
        audio = self._resample(raw)
        end_s = duration_s if duration_s is not None else max(n.end_s for n in melody) + 0.3
        n_out = int(round(end_s * self.sample_rate))
        out = np.zeros(n_out, dtype=np.float32)
        out[: min(n_out, audio.size)] = audio[:n_out]
        syllables = []
        for seg in segs:
            if seg.note is None:
                continue
            n = melody[seg.note]
            syllables.append(
                SungSyllable(
                    start_s=seg.start,
                    end_s=seg.end,
                    midi_pitch=seg.midi,
                    realised_hz=quantised_request(midi_hz(seg.midi), spec.sample_rate)[1],
                    word=n.word,
                    word_index=n.word_index,
                    syllable_index=n.syllable_index,
                    phonemes=tuple(syl_phones[seg.note]),
                )
            )
        return VocalTake(
            audio=np.repeat(out[None, :], self.channels, axis=0),
            sample_rate=self.sample_rate,
            voice=spec.name,
            gender=spec.gender,
            transpose=transpose,
            syllables=syllables,
            pho=pho,
        )

    def _resample(self, x: np.ndarray) -> np.ndarray:
        if self.sample_rate == self.spec.sample_rate:
            return x
        import soxr

        return soxr.resample(x, self.spec.sample_rate, self.sample_rate, quality="HQ").astype(np.float32)
