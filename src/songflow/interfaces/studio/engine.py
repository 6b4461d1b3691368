"""The studio's engine, without gradio: generation into a persistent history, LoRA discovery, the
waveform/spectrogram picture.

History layout (``--output-dir``), one folder per output, written atomically and readable by the CLI::

    <output_dir>/<YYYYmmdd-HHMMSS>-<task>-<id>/song.wav   (song_0.wav, song_1.wav, ... for a batch)
                                              song.flac, song.ogg, song.mp3 (every supported format)
                                              source.wav  (a copy of the uploaded input, if any)
                                              song.json   (the reproducibility sidecar, written last)

An entry exists once its sidecar exists, so a crash mid-generation leaves no half entry in the list;
``songflow generate --from <entry>/song.json`` regenerates an entry on the command line.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import gc
import json
import logging
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from songflow.audio.geometry import LatentGeometry
from songflow.audio.io import SUPPORTED_FORMATS, load_audio, save_audio
from songflow.errors import AudioError, ConfigError, SongflowError
from songflow.interfaces.sidecar import (
    output_labels,
    pipeline_family,
    pipeline_weight_hashes,
    schema_of,
    sidecar_family,
    sidecar_path,
    sidecar_plans,
    write_sidecar,
)
from songflow.interfaces.studio.form import build_request
from songflow.interfaces.studio.models import ModelChoice
from songflow.requests import Request, RequestSchema

log = logging.getLogger("songflow.ui")

AUDIO_STEM = "song"
_ENTRY_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[a-z0-9]+-[0-9a-f]{8}$")

# (fraction done 0..1, what is happening)
StatusFn = Callable[[float, str], None]


@dataclass(frozen=True)
class HistoryEntry:
    """One finished output: its resolved request (seeds filled in) and its files."""

    id: str
    folder: Path
    created: str
    request: Request
    takes: tuple[Path, ...]  # one wav per batch item (stems: per track)
    sample_rate_hz: int
    timings_s: dict[str, float]
    plans: tuple[Any, ...] = ()  # the 5 Hz LM's plan of each song (``SongPlan``), from the sidecar
    stems: dict[str, Any] | None = None  # the sidecar's stems record (tracks, residual_db) for task "stems"

    @property
    def take_labels(self) -> list[str]:
        """What each take is: its stem's name for a stems entry, else "take 1", "take 2", ..."""
        tracks = list((self.stems or {}).get("tracks") or ())
        if len(tracks) == len(self.takes):
            return [str(t) for t in tracks]
        return [f"take {i + 1}" for i in range(len(self.takes))]

    @property
    def files(self) -> list[Path]:
        """Every downloadable file: each take in every format, then the sidecar."""
        out = [take.with_suffix(f".{fmt}") for take in self.takes for fmt in SUPPORTED_FORMATS]
        return [p for p in out if p.exists()] + [self.folder / f"{AUDIO_STEM}.json"]

    @property
    def prompt(self) -> str:
        """The request's prompt text: v1's tags, 1.5's caption (simple mode: its description)."""
        for name in ("tags", "caption", "description"):
            if text := getattr(self.request, name, None):
                return str(text)
        return ""

    def summary(self) -> str:
        """One line for the history picker."""
        tags = self.prompt if len(self.prompt) <= 40 else self.prompt[:39] + "…"
        return f"{self.created} · {self.request.task} · {tags}"


class History:
    """The output folder: a list of :class:`HistoryEntry`, newest first."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def new_folder(self, task: str) -> Path:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        folder = self.root / f"{stamp}-{task}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def entries(self) -> list[HistoryEntry]:
        out = []
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            if _ENTRY_ID.match(folder.name) and (folder / f"{AUDIO_STEM}.json").is_file():
                try:
                    out.append(self._read(folder))
                except SongflowError as exc:  # a foreign or damaged folder: list the others
                    log.warning("skipping history entry %s: %s", folder, exc)
        return sorted(out, key=lambda e: e.id, reverse=True)

    def get(self, entry_id: str) -> HistoryEntry:
        """The entry ``entry_id`` (a folder name of the history)."""
        folder = self.root / str(entry_id)
        if not _ENTRY_ID.match(str(entry_id)) or not (folder / f"{AUDIO_STEM}.json").is_file():
            raise ConfigError(f"no history entry {entry_id!r} in {self.root}")
        return self._read(folder)

    def _read(self, folder: Path) -> HistoryEntry:
        path = folder / f"{AUDIO_STEM}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            request_data = dict(data["request"])
            schema = schema_of(sidecar_family(data, path))
            takes = tuple(folder / name for name in data["outputs"])
            rate = int(data["sample_rate_hz"])
            plans = tuple(sidecar_plans(data, path) or ())
            stems = data.get("stems") if isinstance(data.get("stems"), dict) else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a readable studio entry: {exc}") from exc
        # inputs copied into the entry follow the folder if the output dir moved
        for key, value in request_data.items():
            if key.endswith("_path") and isinstance(value, str) and not Path(value).exists():
                if (folder / Path(value).name).exists():
                    request_data[key] = str(folder / Path(value).name)
        return HistoryEntry(
            id=folder.name,
            folder=folder,
            created=str(data.get("created", "")).replace("T", " ")[:19],
            request=schema.from_dict(request_data),
            takes=takes,
            sample_rate_hz=rate,
            timings_s=dict(data.get("timings_s", {})),
            plans=plans,
            stems=stems,
        )


class Studio:
    """Runs requests on one loaded pipeline and keeps their outputs in a :class:`History`; with ``models``
    and a ``loader`` it switches between the models of ``--checkpoint``, one loaded at a time.

    Args:
        pipeline: a loaded pipeline (:func:`songflow.families.load_pipeline`).
        history: where outputs go.
        runtime: checkpoint/device/dtype, recorded in each sidecar (a switch rewrites them).
        loras: ``(name, path)`` adapters offered in the form.
        models: the models offered (:func:`songflow.interfaces.studio.models.discover_models`).
        loader: ``loader(choice) -> pipeline`` loads one of them.
        current: the key of the model ``pipeline`` is (default: the first of ``models``).
    """

    def __init__(
        self,
        pipeline,
        history: History,
        *,
        runtime: Mapping[str, str] | None = None,
        loras: Sequence[tuple[str, str]] = (),
        models: Sequence[ModelChoice] = (),
        loader: Callable[[ModelChoice], Any] | None = None,
        current: str | None = None,
    ):
        self.pipeline = pipeline
        self.history = history
        self.runtime = dict(runtime or {})
        self.loras = list(loras)
        self.models = list(models)
        self.loader = loader
        self.model = next((m for m in self.models if m.key == current), self.models[0] if models else None)
        self._lock = threading.Lock()  # one generation (or model switch) at a time on the one pipeline

    @property
    def family(self) -> Any:
        """The loaded pipeline's model family (None for a bare pipeline)."""
        return pipeline_family(self.pipeline)

    @property
    def schema(self) -> RequestSchema:
        """The loaded family's request schema (v1's without a family)."""
        return schema_of(self.family)

    @property
    def param_defaults(self) -> Any:
        """The settings the form starts from: the loaded family's ``default_params`` (None without a
        family: the dataclass defaults), with a 1.5 checkpoint's preset written in (its variant's steps,
        shift and guidance scale, :data:`songflow.tasks.acestep_v15.presets.PRESETS`)."""
        return preset_defaults(getattr(self.family, "default_params", None), self.pipeline)

    def switch(self, key: str) -> ModelChoice:
        """Load the model ``key`` (a :attr:`ModelChoice.key`) in place of the loaded one (freed first: one
        model in memory); if it fails to load, the previous model is loaded back and the error raised.

        Raises:
            SongflowError: an unknown model, no loader, or the load failing (with the loader's message).
        """
        choice = next((m for m in self.models if m.key == key), None)
        if choice is None:
            raise ConfigError(f"unknown model {key!r}; choose one of {[m.label for m in self.models]}")
        if self.loader is None:
            raise ConfigError("this studio was started with one model; it cannot switch")
        with self._lock:
            if self.model is not None and choice.key == self.model.key:
                return choice
            previous = self.model
            self._unload()
            try:
                self._use(choice, self.loader(choice))
            except BaseException:
                if previous is not None:
                    self._use(previous, self.loader(previous))
                raise
            return choice

    def _unload(self) -> None:
        self.pipeline = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _use(self, choice: ModelChoice, pipeline: Any) -> None:
        self.pipeline, self.model = pipeline, choice
        self.runtime |= {
            "checkpoint": str(choice.path),
            "device": str(getattr(pipeline, "device", self.runtime.get("device", "?"))),
            "dtype": str(getattr(pipeline, "dtype", self.runtime.get("dtype", "?"))).replace("torch.", ""),
        }

    def generate(
        self,
        task: str,
        values: Mapping[str, Any],
        params: Mapping[str, Any],
        loras: Sequence[str] = (),
        lora_weight: Any = None,
        status: StatusFn | None = None,
    ) -> HistoryEntry:
        """Build the request from form values, check it, run it and store the output.

        Raises:
            SongflowError: bad input (missing or unreadable upload, invalid value, duration out of range)
                or a generation failure, with a message for the user.
        """
        status = status or (lambda frac, what: None)
        request = build_request(task, values, params, loras, lora_weight, self.param_defaults, self.schema)
        check = getattr(self.pipeline, "check_request", None)
        if check is not None:
            check(request)
        uploads = {
            f.name: getattr(request, f.name)
            for f in dataclasses.fields(request)
            if f.name.endswith("_path") and getattr(request, f.name) is not None
        }
        for name, path in uploads.items():
            check_upload(self.pipeline, task, name, path)
        with self._lock:
            folder = self.history.new_folder(task)
            copies = {name: str(folder / _copy_name(path, name)) for name, path in uploads.items()}
            # messages name an upload by its file name on the user's machine, never a server path
            client_names = {p: client_name(uploads[n]) for n, p in copies.items()}
            client_names |= {p: client_name(p) for p in uploads.values()}
            try:
                for name, path in uploads.items():
                    shutil.copyfile(path, copies[name])
                request = dataclasses.replace(request, **copies)
                status(0.0, "encoding the prompt")

                def on_step(step: int, total: int) -> None:
                    status(step / max(total, 1), f"sampling step {step}/{total}")

                result = self.pipeline.generate(request, progress=on_step)
                status(1.0, "writing audio")
                return self._save(folder, result)
            except SongflowError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise _renamed(exc, client_names) from exc
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise

    @property
    def has_planner(self) -> bool:
        """Whether the pipeline has a 5 Hz LM planner with an LM folder (ACE-Step 1.5)."""
        planner = getattr(self.pipeline, "planner", None)
        return planner is not None and getattr(planner, "lm_dir", None) is not None

    def ask_planner(
        self, task: str, values: Mapping[str, Any], params: Mapping[str, Any], audio_path: str | None = None
    ) -> Any:
        """The planner's first answer (a ``SongPlan``) for ``task`` "format" (the form's caption, lyrics and
        metadata, tidied) or "understand" (``audio_path`` read back); the form's planner settings and
        first seed apply.

        Raises:
            SongflowError: no planner, a bad form value or upload, with a message for the user.
        """
        from songflow.requests_v15 import Format15, Understand15

        if not self.has_planner:
            raise ConfigError("this checkpoint has no 5 Hz LM (acestep-5Hz-lm-*); download one to use it")
        form: Any = build_request("text2music", values, params, (), None, self.param_defaults, self.schema)
        seeds = form.params.seeds[:1] if form.params.seeds else None
        settings = dataclasses.replace(form.params, batch_size=1, seeds=seeds, lm_seeds=None)
        if task == "understand":
            if not audio_path:
                raise ConfigError("upload the audio to understand first")
            check_upload(self.pipeline, "cover", "source_path", audio_path)
            request: Any = Understand15(source_path=audio_path, params=settings)
        else:
            request = Format15(
                caption=form.caption, lyrics=form.lyrics, bpm=form.bpm, key_scale=form.key_scale,
                time_signature=form.time_signature, vocal_language=form.vocal_language, params=settings,
            )  # fmt: skip
        with self._lock:
            try:
                return getattr(self.pipeline, task)(self.pipeline.resolve_seeds(request))[0]
            except SongflowError as exc:
                raise _renamed(exc, {audio_path: client_name(audio_path)} if audio_path else {}) from exc

    def _save(self, folder: Path, result) -> HistoryEntry:
        """Every take in every format (``song.wav``; a batch ``song_0.wav``...; stems ``song_vocals.wav``...),
        then the sidecar with the weight hashes of the loaded model."""
        labels = output_labels(result.request, len(result.audio))
        names = [AUDIO_STEM] if len(labels) == 1 else [f"{AUDIO_STEM}_{label}" for label in labels]
        takes = [folder / f"{name}.wav" for name in names]
        for take, audio in zip(takes, result.audio, strict=True):
            for fmt in SUPPORTED_FORMATS:
                save_audio(take.with_suffix(f".{fmt}"), audio, result.sample_rate_hz)
        sidecar = sidecar_path(folder / f"{AUDIO_STEM}.wav")
        root = self.model.path if self.model is not None else None
        weights = pipeline_weight_hashes(self.pipeline, result, root=root)
        write_sidecar(
            sidecar, result, [t.name for t in takes], self.runtime, family=self.family, weights_sha256=weights
        )
        return self.history.get(folder.name)


def preset_defaults(defaults: Any, pipeline: Any) -> Any:
    """``defaults`` (a family's ``default_params``) with the preset of ``pipeline``'s 1.5 variant written
    in (steps, shift, guidance scale: what a run leaving them empty uses); ``defaults`` as given for
    any other family or pipeline."""
    from songflow.requests_v15 import Params15
    from songflow.tasks.acestep_v15.presets import PRESETS

    variant = str(getattr(pipeline, "variant", "") or "")
    preset = PRESETS.get(variant.removeprefix("xl-"))
    if not isinstance(defaults, Params15) or preset is None:
        return defaults
    return dataclasses.replace(
        defaults, steps=preset.steps, shift=preset.shift, guidance_scale=preset.guidance_scale
    )


def client_name(path: str | Path) -> str:
    """The name a user knows an upload by: its file name (Gradio keeps the uploaded file's own name inside
    its temporary folder), never the server folder it lies in."""
    return Path(path).name


def _renamed(exc: SongflowError, names: Mapping[str, str]) -> SongflowError:
    """``exc`` with every path of ``names`` in its message replaced by the name the user knows it by."""
    text = str(exc)
    for path in sorted(names, key=len, reverse=True):  # the longest first: a folder is a prefix of its files
        text = text.replace(path, names[path])
    if text == str(exc):
        return exc
    try:
        return type(exc)(text)
    except TypeError:  # an error type with other constructor arguments
        return SongflowError(text)


# task -> its audio inputs that may be longer than one generation window (extend keeps its source whole)
_LONG_INPUTS = {"extend": frozenset({"source_path"})}


def check_upload(pipeline, task: str, field_name: str, path: str) -> str:
    """Check an uploaded input of ``task`` as the pipeline will when it encodes it (readable, a usable
    sample rate, not silent, at least one latent frame, at most one generation window unless the task
    takes long inputs); see :meth:`songflow.pipeline.Pipeline.load_source`.

    Returns:
        a one-line description of the upload for the page ("take.wav: 12.3 s, 44100 Hz, stereo").

    Raises:
        AudioError: the upload cannot be used; the message names it by its file name only.
    """
    from songflow.pipeline import check_source_audio

    name = client_name(path)
    kind = f"the uploaded {field_name.removesuffix('_path').replace('_', ' ')} audio"
    try:
        wav, rate = load_audio(path)
    except AudioError as exc:
        raise AudioError(f"{kind} cannot be used: {_renamed(exc, {str(path): name})}") from None
    if getattr(pipeline, "geometry", None) is None and hasattr(pipeline, "read_audio"):  # 1.5
        try:
            pipeline.read_audio(str(path), what=kind)
        except AudioError as exc:
            raise AudioError(str(_renamed(exc, {str(path): name}))) from None
    else:
        geometry = getattr(pipeline, "geometry", None) or LatentGeometry()
        long_ok = field_name in _LONG_INPUTS.get(task, ())
        check_source_audio(
            wav, rate, f"{kind} {name}", geometry, getattr(pipeline, "codec", None), allow_long=long_ok
        )
    seconds = wav.shape[-1] / rate
    channels = {1: "mono", 2: "stereo"}.get(wav.shape[0], f"{wav.shape[0]} channels")
    return f"{name}: {seconds:.1f} s, {rate} Hz, {channels}"


def _copy_name(path: str, field_name: str) -> str:
    """The file name an uploaded input is kept under in its entry (uploads are temporary; the entry must
    regenerate): ``source.wav``, ``reference.flac``."""
    suffix = Path(path).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
        suffix = ".audio"
    return f"{field_name.removesuffix('_path')}{suffix}"


# -- the waveform + spectrogram picture ----------------------------------------------------------------

# dark blue -> purple -> orange -> pale yellow (a perceptually increasing ramp)
_COLOUR_STOPS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def _colour(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] [...] -> uint8 RGB [..., 3]."""
    pos = np.clip(values, 0.0, 1.0) * (len(_COLOUR_STOPS) - 1)
    low = np.floor(pos).astype(int).clip(0, len(_COLOUR_STOPS) - 2)
    frac = (pos - low)[..., None]
    return (_COLOUR_STOPS[low] * (1 - frac) + _COLOUR_STOPS[low + 1] * frac).astype(np.uint8)


def waveform_spectrogram_image(
    audio: Tensor, sample_rate_hz: int, *, width: int = 900, wave_height: int = 90, spec_height: int = 230
) -> np.ndarray:
    """A picture of ``audio`` [C, N]: the waveform (min/max per column) over a log-frequency
    spectrogram (dB, 80 dB range, 30 Hz to Nyquist). Returns uint8 RGB [wave_height + spec_height, width, 3].
    """
    mono = audio.float().mean(0) if audio.dim() == 2 else audio.float()
    n = mono.numel()
    if n == 0:
        raise AudioError("no audio to draw")
    image = np.zeros((wave_height + spec_height, width, 3), dtype=np.uint8)

    # 1. waveform: the sample range of each column
    image[:wave_height] = _BACKGROUND
    lows, highs = column_ranges(mono.numpy(), width)
    _draw_wave(image[:wave_height], lows, highs, np.ones(width, dtype=bool), _WAVE)

    # 2. spectrogram: STFT magnitude in dB, sampled on a log-frequency axis
    n_fft = 2048
    hop = max(1, n // width)
    padded = torch.nn.functional.pad(mono, (0, max(0, n_fft - n)))
    spec = torch.stft(
        padded, n_fft, hop_length=hop, window=torch.hann_window(n_fft), center=True, return_complex=True
    ).abs()  # [F, T]
    db = 20 * torch.log10(spec.clamp_min(1e-8))
    db = ((db - (db.max() - 80.0)) / 80.0).clamp(0, 1).numpy()
    freqs = np.linspace(0, sample_rate_hz / 2, db.shape[0])
    rows = np.geomspace(30.0, sample_rate_hz / 2, spec_height)[::-1]  # high frequencies on top
    cols = np.linspace(0, db.shape[1] - 1, width).round().astype(int)
    row_idx = np.searchsorted(freqs, rows).clip(0, db.shape[0] - 1)
    image[wave_height:] = _colour(db[row_idx][:, cols])
    return image


# -- the window picker's picture (repaint/lego span, extend's added seconds) ---------------------------

_BACKGROUND = (16, 18, 28)
_WAVE = (120, 200, 255)
_SPAN_BACKGROUND = (92, 46, 12)  # the part a run regenerates or adds
_SPAN_WAVE = (255, 190, 90)
_EDGE = (255, 236, 160)
_TICK = (70, 76, 96)
ENVELOPE_COLUMNS = 1200


def column_ranges(samples: np.ndarray, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest sample of each of ``n_columns`` equal slices of ``samples`` [N] (N >= 1),
    scaled by the peak to [-1, 1]: two arrays [n_columns]."""
    n = len(samples)
    edges = np.linspace(0, n, n_columns + 1).astype(int)
    starts = np.minimum(edges[:-1], n - 1)
    ends = np.maximum(edges[1:], starts + 1)
    highs = np.array([samples[a:b].max() for a, b in zip(starts, ends, strict=True)])
    lows = np.array([samples[a:b].min() for a, b in zip(starts, ends, strict=True)])
    peak = max(float(np.abs(samples).max()), 1e-6)
    return lows / peak, highs / peak


def _draw_wave(rows: np.ndarray, lows: np.ndarray, highs: np.ndarray, where: np.ndarray, colour) -> None:
    """Draw a min/max waveform into ``rows`` [H, W, 3] in the columns ``where`` [W] (bool) holds."""
    mid = rows.shape[0] // 2
    for x in np.flatnonzero(where):
        top = mid - int(round(highs[x] * (mid - 2)))
        bottom = mid - int(round(lows[x] * (mid - 2)))
        rows[top : bottom + 1, x] = colour


@dataclass(frozen=True)
class Envelope:
    """A source's waveform at picture resolution: per column the lowest and highest sample (peak-scaled,
    [ENVELOPE_COLUMNS] each) and the source's length in seconds."""

    lows: np.ndarray
    highs: np.ndarray
    duration_s: float


@functools.lru_cache(maxsize=16)
def _envelope_of(path: str, size: int, mtime_ns: int) -> Envelope:
    wav, rate = load_audio(path)
    mono = wav.float().mean(0).numpy()
    if mono.size == 0:
        raise AudioError(f"{client_name(path)} holds no audio")
    lows, highs = column_ranges(mono, ENVELOPE_COLUMNS)
    return Envelope(lows, highs, mono.size / rate)


def source_envelope(path: str | Path) -> Envelope:
    """The :class:`Envelope` of an audio file, read once per file version (the picture is redrawn on
    every slider move)."""
    stat = Path(path).stat()
    return _envelope_of(str(path), stat.st_size, stat.st_mtime_ns)


def window_picture(
    envelope: Envelope,
    start_s: float | None = None,
    end_s: float | None = None,
    *,
    left_s: float = 0.0,
    right_s: float = 0.0,
    width: int = 900,
    height: int = 110,
) -> np.ndarray:
    """The window picker's picture, uint8 RGB [height, width, 3]: the timeline ``left_s`` + source +
    ``right_s`` seconds with the source's waveform, the part a run writes highlighted (amber) and its
    edges marked: the span [start_s, end_s) of the source (a repaint or lego; None: from the start / to
    the end), or the ``left_s`` and ``right_s`` seconds an extend adds around it. Faint ticks every
    second (every 10 s past a minute, every minute past ten)."""
    duration_s = envelope.duration_s
    total_s = max(left_s + duration_s + right_s, 1e-6)
    t = (np.arange(width) + 0.5) / width * total_s - left_s  # source time at each column's centre
    in_source = (t >= 0) & (t < duration_s)
    marked = ~in_source
    if start_s is not None or end_s is not None:
        lo, hi = start_s or 0.0, duration_s if end_s is None else end_s
        marked = in_source & (t >= lo) & (t < hi)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = _BACKGROUND
    image[:, marked] = _SPAN_BACKGROUND
    tick_s = 1.0 if total_s <= 60 else 10.0 if total_s <= 600 else 60.0
    ticks = np.unique(np.floor((t + left_s) / tick_s))
    for k in ticks[1:]:
        x = int(k * tick_s / total_s * width)
        image[: height // 8, x] = _TICK
    index = np.clip((t / max(duration_s, 1e-9) * len(envelope.lows)).astype(int), 0, len(envelope.lows) - 1)
    lows, highs = envelope.lows[index], envelope.highs[index]
    _draw_wave(image, lows, highs, in_source & ~marked, _WAVE)
    _draw_wave(image, lows, highs, in_source & marked, _SPAN_WAVE)
    for edge in np.flatnonzero(np.diff(marked.astype(np.int8))):
        image[:, edge : edge + 2] = _EDGE
    return image
