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
        if self.seeds is not None:
            if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
                raise ConfigError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
            if any(not 0 <= s < 2**63 for s in self.seeds):
                raise ConfigError("seeds must be in [0, 2**63)")


@dataclass(frozen=True)
class Text2Music:
    """Generate a song from style tags and lyrics.

    ``lyrics`` uses structure tags such as ``[verse]``/``[chorus]``; an empty string (or ``[inst]``)
    asks for an instrumental.
    """

    task: ClassVar[str] = "text2music"
    tags: str
    lyrics: str = ""
    duration_s: float = 60.0
    params: GenerationParams = field(default_factory=GenerationParams)

    def __post_init__(self) -> None:
        if not isinstance(self.tags, str) or not self.tags.strip():
            raise ConfigError("tags must be a non-empty text, e.g. 'funk, pop, 105 BPM, energetic, guitar'")
        if len(self.tags) > MAX_TAGS_CHARS:
            raise ConfigError(f"tags are {len(self.tags)} characters long; the limit is {MAX_TAGS_CHARS}")
        if not isinstance(self.lyrics, str):
            raise ConfigError("lyrics must be text")
        d = self.duration_s
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0:
            raise ConfigError(f"duration_s must be a positive number of seconds, got {d!r}")


Request = Text2Music
_TASKS: dict[str, type] = {"text2music": Text2Music}


def _params_from_dict(data: dict[str, Any]) -> GenerationParams:
    names = {f.name for f in dataclasses.fields(GenerationParams)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown generation parameter(s) {unknown}; valid ones are {sorted(names)}")
    data = dict(data)
    for key in ("step_indices", "seeds"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    return GenerationParams(**data)


def request_from_dict(data: dict[str, Any]) -> Request:
    """Build a request from its JSON form ``{"task": ..., <task fields>, "params": {...}}``."""
    if not isinstance(data, dict):
        raise ConfigError("a request must be a JSON object")
    data = dict(data)
    task = data.pop("task", "text2music")
    cls = _TASKS.get(task)
    if cls is None:
        raise ConfigError(f"unknown task {task!r}; choose one of {sorted(_TASKS)}")
    params = _params_from_dict(data.pop("params", {}) or {})
    names = {f.name for f in dataclasses.fields(cls)} - {"params"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} for task {task!r}; valid ones are {sorted(names)}")
    try:
        return cls(params=params, **data)
    except TypeError as exc:
        raise ConfigError(f"invalid {task} request: {exc}") from exc


def request_to_dict(request: Request) -> dict[str, Any]:
    """JSON-ready dict of a request (inverse of :func:`request_from_dict`)."""
    out: dict[str, Any] = {"task": request.task}
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if f.name == "params":
            value = {
                p.name: (list(v) if isinstance(v := getattr(value, p.name), tuple) else v)
                for p in dataclasses.fields(value)
            }
        out[f.name] = value
    return out


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
