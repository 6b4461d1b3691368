"""Typed generation requests: the one schema behind the Python API, the CLI, the REST server and the UI.

A request is a frozen dataclass tagged by ``task``. ``to_dict``/``request_from_dict`` give a JSON round
trip that rejects unknown keys by name, so a sidecar ``params.json`` written next to a song regenerates it
exactly. Defaults follow the official ACE-Step ``__call__`` (SPEC §7.1), except where noted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from songflow.errors import ConfigError

Sampler = Literal["euler", "heun", "pingpong"]
GuidanceKind = Literal["cfg", "apg", "cfg_star"]

SAMPLER_NAMES: tuple[str, ...] = ("euler", "heun", "pingpong")
GUIDANCE_NAMES: tuple[str, ...] = ("cfg", "apg", "cfg_star")
MAX_STEPS = 1000
MAX_BATCH = 64
MAX_TAGS_CHARS = 4096
MAX_EXTEND_S = 3600.0


@dataclass(frozen=True)
class GenerationParams:
    """Sampler, guidance and seed settings shared by every task.

    The three ``legacy_*``/``omega_mean_over`` switches choose between the reference implementation's
    behaviour and the corrected one (SPEC §7.3, §11; DESIGN §2 bugs 3 and 7):

    - ``legacy_double_shift`` (default True, as the reference): the sigma schedule is shifted twice; False
      shifts once (see ``songflow.sampling.schedules.flow_sigmas``).
    - ``omega_mean_over`` "sample" (default): the Euler/Heun omega mean shift is taken per sample, so a
      batch equals its singles; "batch" reproduces the reference's whole-batch mean. ``legacy_batch_noise``
      likewise draws ping-pong noise for the whole batch from the first seed's generator, as the reference.
    - ``legacy_heun_interval`` True reproduces the reference counting the guidance interval over Heun's
      2N-1 evaluations with N; False (default) decides guidance per step, for both Heun evaluations.
    """

    steps: int = 60
    sampler: Sampler = "euler"
    shift: float = 3.0
    guidance: GuidanceKind = "apg"
    guidance_scale: float = 15.0
    guidance_interval: float = 0.5
    guidance_interval_decay: float = 0.0
    min_guidance_scale: float = 3.0
    guidance_scale_text: float = 0.0
    guidance_scale_lyric: float = 0.0
    omega_scale: float = 10.0
    use_erg_tag: bool = True
    use_erg_lyric: bool = True
    use_erg_diffusion: bool = True
    step_indices: tuple[int, ...] = ()
    seeds: tuple[int, ...] | None = None
    batch_size: int = 1
    legacy_double_shift: bool = True
    omega_mean_over: Literal["sample", "batch"] = "sample"
    legacy_batch_noise: bool = False
    legacy_heun_interval: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.steps, bool)
            or not isinstance(self.steps, int)
            or not 1 <= self.steps <= MAX_STEPS
        ):
            raise ConfigError(f"steps must be an integer in [1, {MAX_STEPS}], got {self.steps!r}")
        if self.sampler not in SAMPLER_NAMES:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {list(SAMPLER_NAMES)}")
        if self.guidance not in GUIDANCE_NAMES:
            raise ConfigError(f"unknown guidance {self.guidance!r}; choose one of {list(GUIDANCE_NAMES)}")
        if self.omega_mean_over not in ("sample", "batch"):
            raise ConfigError(f"omega_mean_over must be 'sample' or 'batch', got {self.omega_mean_over!r}")
        for name in (
            "shift",
            "guidance_scale",
            "guidance_interval",
            "guidance_interval_decay",
            "min_guidance_scale",
            "guidance_scale_text",
            "guidance_scale_lyric",
            "omega_scale",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.shift <= 0:
            raise ConfigError(f"shift must be > 0, got {self.shift}")
        if not 0.0 <= self.guidance_interval <= 1.0:
            raise ConfigError(f"guidance_interval must be in [0, 1], got {self.guidance_interval}")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(f"batch_size must be an integer in [1, {MAX_BATCH}], got {self.batch_size!r}")
        if self.step_indices:
            if any(not isinstance(k, int) or k < 1 or k > MAX_STEPS for k in self.step_indices):
                raise ConfigError(f"step_indices must be 1-based step numbers in [1, {MAX_STEPS}]")
            if list(self.step_indices) != sorted(set(self.step_indices)):
                raise ConfigError("step_indices must be strictly increasing")
            if self.sampler == "heun":
                raise ConfigError(
                    "step_indices (oss_steps) work with the euler and pingpong samplers, not heun"
                )
        _check_seeds("seeds", self.seeds)


def _check_seeds(name: str, seeds: tuple[int, ...] | None) -> None:
    if seeds is None:
        return
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"{name} must be a non-empty list of integers, got {seeds!r}")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise ConfigError(f"{name} must be in [0, 2**63)")


def _check_number(name: str, value: Any, low: float | None = None, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"{name} must be in {bounds}, got {value!r}")


@dataclass(frozen=True)
class LoraRef:
    """A LoRA adapter to apply: a folder (or ``.safetensors`` file) and its weight (0 = off)."""

    path: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError("a LoRA needs a path")
        _check_number("LoRA weight", self.weight, -10.0, 10.0)


@dataclass(frozen=True, kw_only=True)
class _Request:
    """Fields every task has: the style tags, the lyrics, sampler settings and LoRA adapters."""

    tags: str
    lyrics: str = ""
    params: GenerationParams = field(default_factory=GenerationParams)
    loras: tuple[LoraRef, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.tags, str) or not self.tags.strip():
            raise ConfigError("tags must be a non-empty text, e.g. 'funk, pop, 105 BPM, energetic, guitar'")
        if len(self.tags) > MAX_TAGS_CHARS:
            raise ConfigError(f"tags are {len(self.tags)} characters long; the limit is {MAX_TAGS_CHARS}")
        if not isinstance(self.lyrics, str):
            raise ConfigError("lyrics must be text")
        if not isinstance(self.params, GenerationParams):
            raise ConfigError("params must be a GenerationParams")


def _check_source(name: str, path: Any) -> None:
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{name} must name an audio file")


@dataclass(frozen=True, kw_only=True)
class Text2Music(_Request):
    """Generate a song of ``duration_s`` seconds from style tags and lyrics.

    ``lyrics`` uses structure tags such as ``[verse]``/``[chorus]``; an empty string (or ``[inst]``)
    asks for an instrumental.
    """

    task: ClassVar[str] = "text2music"
    duration_s: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.duration_s
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0:
            raise ConfigError(f"duration_s must be a positive number of seconds, got {d!r}")


@dataclass(frozen=True, kw_only=True)
class Retake(Text2Music):
    """A variation of a text2music song: its request (same seeds) plus retake seeds.

    ``variance_frac`` mixes the original noise with the retake noise (cos/sin of variance·π/2):
    0 reproduces the original exactly, 1 is a fresh song.
    """

    task: ClassVar[str] = "retake"
    variance_frac: float = 0.2
    retake_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("variance_frac", self.variance_frac, 0.0, 1.0)
        _check_seeds("retake_seeds", self.retake_seeds)


@dataclass(frozen=True, kw_only=True)
class Repaint(_Request):
    """Regenerate the window [start_s, end_s) of ``source_path``; everything outside is kept."""

    task: ClassVar[str] = "repaint"
    source_path: str
    start_s: float = 0.0
    end_s: float = 30.0
    variance_frac: float = 0.2
    retake_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_source("source_path", self.source_path)
        _check_number("start_s", self.start_s, 0.0)
        _check_number("end_s", self.end_s, 0.0)
        if self.end_s <= self.start_s:
            raise ConfigError(f"the repaint window is empty: end_s {self.end_s} <= start_s {self.start_s}")
        _check_number("variance_frac", self.variance_frac, 0.0, 1.0)
        _check_seeds("retake_seeds", self.retake_seeds)


@dataclass(frozen=True, kw_only=True)
class Extend(_Request):
    """Add ``left_s`` seconds before and ``right_s`` after ``source_path``; the source is kept.

    Songs may grow past the model's 240 s window: the new audio is generated in windows.
    """

    task: ClassVar[str] = "extend"
    source_path: str
    left_s: float = 0.0
    right_s: float = 30.0
    retake_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_source("source_path", self.source_path)
        _check_number("left_s", self.left_s, 0.0, MAX_EXTEND_S)
        _check_number("right_s", self.right_s, 0.0, MAX_EXTEND_S)
        if self.left_s == 0 and self.right_s == 0:
            raise ConfigError("extend needs left_s > 0 or right_s > 0")
        _check_seeds("retake_seeds", self.retake_seeds)


@dataclass(frozen=True, kw_only=True)
class AudioToAudio(_Request):
    """Restyle ``reference_path`` with the tags/lyrics; ``strength_frac`` 1 returns the reference."""

    task: ClassVar[str] = "audio2audio"
    reference_path: str
    strength_frac: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_source("reference_path", self.reference_path)
        _check_number("strength_frac", self.strength_frac, 0.0, 1.0)


EDIT_PRESETS: dict[str, tuple[float, float]] = {"only_lyrics": (0.6, 1.0), "remix": (0.2, 0.4)}


@dataclass(frozen=True, kw_only=True)
class Edit(_Request):
    """FlowEdit: change the tags and/or lyrics of ``source_path`` (described by ``tags``/``lyrics``)
    to ``target_tags``/``target_lyrics`` while keeping the rest. Presets (``EDIT_PRESETS``):
    only_lyrics (n_min 0.6, n_max 1.0) and remix (0.2, 0.4)."""

    task: ClassVar[str] = "edit"
    source_path: str
    target_tags: str | None = None
    target_lyrics: str | None = None
    n_min_frac: float = 0.6
    n_max_frac: float = 1.0
    n_avg: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_source("source_path", self.source_path)
        if self.target_tags is None and self.target_lyrics is None:
            raise ConfigError("edit needs target_tags and/or target_lyrics")
        if self.target_tags is not None and not str(self.target_tags).strip():
            raise ConfigError("target_tags must be a non-empty text when given")
        _check_number("n_min_frac", self.n_min_frac, 0.0, 1.0)
        _check_number("n_max_frac", self.n_max_frac, 0.0, 1.0)
        if self.n_min_frac >= self.n_max_frac:
            raise ConfigError(f"n_min_frac {self.n_min_frac} must be < n_max_frac {self.n_max_frac}")
        if isinstance(self.n_avg, bool) or not isinstance(self.n_avg, int) or not 1 <= self.n_avg <= 64:
            raise ConfigError(f"n_avg must be an integer in [1, 64], got {self.n_avg!r}")


Request = Text2Music | Retake | Repaint | Extend | AudioToAudio | Edit
TASKS: dict[str, type] = {c.task: c for c in (Text2Music, Retake, Repaint, Extend, AudioToAudio, Edit)}


def _params_from_dict(data: dict[str, Any]) -> GenerationParams:
    names = {f.name for f in dataclasses.fields(GenerationParams)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown generation parameter(s) {unknown}; valid ones are {sorted(names)}")
    data = dict(data)
    return GenerationParams(**{k: _tuple(v) for k, v in data.items()})


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def request_from_dict(data: dict[str, Any]) -> Request:
    """Build a request from its JSON form ``{"task": ..., <task fields>, "params": {...}}``."""
    if not isinstance(data, dict):
        raise ConfigError("a request must be a JSON object")
    data = dict(data)
    task = data.pop("task", "text2music")
    cls = TASKS.get(task)
    if cls is None:
        raise ConfigError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    params = _params_from_dict(data.pop("params", {}) or {})
    loras = data.pop("loras", []) or []
    try:
        loras = tuple(LoraRef(**ref) if isinstance(ref, dict) else LoraRef(*ref) for ref in loras)
    except TypeError as exc:
        raise ConfigError(f"loras must be a list of {{'path': ..., 'weight': ...}}: {exc}") from exc
    names = {f.name for f in dataclasses.fields(cls)} - {"params", "loras"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} for task {task!r}; valid ones are {sorted(names)}")
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.name in names
        and f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ConfigError(f"task {task!r} needs field(s) {missing}")
    return cls(params=params, loras=loras, **{k: _tuple(v) for k, v in data.items()})


def request_to_dict(request: Request) -> dict[str, Any]:
    """JSON-ready dict of a request (inverse of :func:`request_from_dict`)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return {"task": request.task, **plain(request)}


# official ACE-Step parameter name -> our GenerationParams field
_OFFICIAL_PARAM_NAMES = {
    "infer_step": "steps",
    "scheduler_type": "sampler",
    "cfg_type": "guidance",
    "guidance_scale": "guidance_scale",
    "guidance_interval": "guidance_interval",
    "guidance_interval_decay": "guidance_interval_decay",
    "min_guidance_scale": "min_guidance_scale",
    "guidance_scale_text": "guidance_scale_text",
    "guidance_scale_lyric": "guidance_scale_lyric",
    "omega_scale": "omega_scale",
    "use_erg_tag": "use_erg_tag",
    "use_erg_lyric": "use_erg_lyric",
    "use_erg_diffusion": "use_erg_diffusion",
    "batch_size": "batch_size",
}


def _official_int_list(value: Any) -> tuple[int, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def request_from_official(data: dict[str, Any], *, reference_behaviour: bool = False) -> Text2Music:
    """Read the official ``__call__`` keyword arguments or an ``*_input_params.json`` sidecar.

    Keys we do not use (format, LoRA, paths, timecosts, ...) are ignored. ``reference_behaviour`` also
    switches on every ``legacy_*`` option, reproducing the reference numerics (batch coupling included).
    """
    params: dict[str, Any] = {ours: data[off] for off, ours in _OFFICIAL_PARAM_NAMES.items() if off in data}
    seeds = data.get("manual_seeds", data.get("actual_seeds"))
    if seeds not in (None, "", []):
        params["seeds"] = _official_int_list(seeds)
    if data.get("oss_steps") not in (None, "", []):
        params["step_indices"] = _official_int_list(data["oss_steps"])
    if reference_behaviour:
        params.update(
            legacy_double_shift=True,
            omega_mean_over="batch",
            legacy_batch_noise=True,
            legacy_heun_interval=True,
        )
    return Text2Music(
        tags=data.get("prompt", ""),
        lyrics=data.get("lyrics", "") or "",
        duration_s=float(data.get("audio_duration", 60.0)),
        params=GenerationParams(**params),
    )
