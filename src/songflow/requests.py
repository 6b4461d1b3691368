"""Typed generation requests: the one schema behind the Python API, the CLI, the REST server and the UI.

A request is a frozen dataclass tagged by ``task``. ``to_dict``/``request_from_dict`` give a JSON round
trip that rejects unknown keys by name, so a sidecar ``params.json`` written next to a song regenerates it
exactly. Defaults follow the official ACE-Step ``__call__``, except where noted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from songflow.audio.geometry import LatentGeometry
from songflow.errors import ConfigError
from songflow.sampling.guidance import GUIDANCE_TYPES as GUIDANCE_NAMES  # noqa: F401 (re-exported)
from songflow.sampling.guidance import GuidanceKind
from songflow.sampling.steppers import SAMPLERS as SAMPLER_NAMES  # noqa: F401 (re-exported)
from songflow.sampling.steppers import Sampler
from songflow.text.lyric_tokenizer import MAX_LYRICS_CHARS

MAX_STEPS = 1000
MAX_BATCH = 64
MAX_TAGS_CHARS = 4096
MAX_EXTEND_S = 3600.0
#: the longest song one run generates (the ACE-Step v1 window); extend grows songs past it in windows
MAX_DURATION_S = LatentGeometry().max_duration_s
# metadata keys of a number field's bounds (checked by ``_check_numbers``; the REST schema shows them)
_BOUND_KEYS = ("ge", "gt", "le", "lt")
_SEEDS: dict[str, Any] = {"min_length": 1, "items": {"ge": 0, "lt": 2**63}}
_STEP_INDICES: dict[str, Any] = {"items": {"ge": 1, "le": MAX_STEPS}}
_FRACTION: dict[str, Any] = {"ge": 0.0, "le": 1.0}


class RequestFieldError(ConfigError):
    """A request field holds an invalid value; ``loc`` names it (e.g. ``("params", "steps")``)."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc

    def under(self, *prefix: str | int) -> RequestFieldError:
        """The same error for a field nested under ``prefix`` (e.g. ``params``)."""
        return RequestFieldError((*prefix, *self.loc), str(self))


@dataclass(frozen=True)
class GenerationParams:
    """Sampler, guidance and seed settings shared by every task.

    The three ``legacy_*``/``omega_mean_over`` switches choose between the reference implementation's
    behaviour and the corrected one (docs/reference_behaviour.md#r9-#r12):

    - ``legacy_double_shift`` (default True, as the reference): the sigma schedule is shifted twice; False
      shifts once (see ``songflow.sampling.schedules.flow_sigmas``).
    - ``omega_mean_over`` "sample" (default): the Euler/Heun omega mean shift is taken per sample, so a
      batch equals its singles; "batch" reproduces the reference's whole-batch mean. ``legacy_batch_noise``
      likewise draws ping-pong noise for the whole batch from the first seed's generator, as the reference.
    - ``legacy_heun_interval`` True reproduces the reference counting the guidance interval over Heun's
      2N-1 evaluations with N; False (default) decides guidance per step, for both Heun evaluations.
    - ``legacy_output_length`` True returns the decoded audio at the reference's length (whole latent
      frames); False (default) gives exactly the requested or source length (docs/reference_behaviour.md#r22).
    """

    steps: int = field(
        default=60, metadata={"ge": 1, "le": MAX_STEPS, "help": "diffusion steps (more: slower, finer)"}
    )
    sampler: Sampler = field(default="euler", metadata={"help": "sampler (scheduler_type)"})
    shift: float = field(
        default=3.0,
        metadata={"gt": 0, "help": "sigma schedule shift (higher spends more steps at high noise)"},
    )
    guidance: GuidanceKind = field(default="apg", metadata={"help": "guidance kind (cfg_type)"})
    guidance_scale: float = field(
        default=15.0, metadata={"ge": 0, "help": "classifier-free guidance strength (0 = unguided)"}
    )
    guidance_interval: float = field(
        default=0.5,
        metadata={"ge": 0.0, "le": 1.0, "help": "fraction of the steps, centred, that are guided"},
    )
    guidance_interval_decay: float = field(
        default=0.0, metadata={"help": "decay of the guidance scale over the interval (0 = constant)"}
    )
    min_guidance_scale: float = field(
        default=3.0, metadata={"help": "the guidance scale that the decay ends at"}
    )
    guidance_scale_text: float = field(
        default=0.0, metadata={"help": "extra guidance on the tags alone (0 = off)"}
    )
    guidance_scale_lyric: float = field(
        default=0.0, metadata={"help": "extra guidance on the lyrics alone (0 = off)"}
    )
    omega_scale: float = field(default=10.0, metadata={"help": "omega (mean shift) scale of the sampler"})
    use_erg_tag: bool = field(default=True, metadata={"help": "entropy-rescaled guidance on the tag encoder"})
    use_erg_lyric: bool = field(
        default=True, metadata={"help": "entropy-rescaled guidance on the lyric encoder"}
    )
    use_erg_diffusion: bool = field(
        default=True, metadata={"help": "entropy-rescaled guidance in the diffusion model"}
    )
    step_indices: tuple[int, ...] = field(
        default=(),
        metadata={**_STEP_INDICES, "help": "only these 1-based steps of the schedule (oss_steps; not heun)"},
    )
    seeds: tuple[int, ...] | None = field(
        default=None,
        metadata={
            **_SEEDS,
            "help": "one seed, or one per batch item (default: random, written to the sidecar)",
        },
    )
    batch_size: int = field(
        default=1, metadata={"ge": 1, "le": MAX_BATCH, "help": "songs generated together, one file each"}
    )
    legacy_double_shift: bool = field(
        default=True, metadata={"help": "shift the sigma schedule twice, as the reference does"}
    )
    omega_mean_over: Literal["sample", "batch"] = field(
        default="sample", metadata={"help": "omega mean per sample, or over the batch as the reference"}
    )
    legacy_batch_noise: bool = field(
        default=False,
        metadata={"help": "ping-pong noise from the first seed for the whole batch (reference)"},
    )
    legacy_heun_interval: bool = field(
        default=False, metadata={"help": "count the guidance interval over Heun's evaluations (reference)"}
    )
    legacy_output_length: bool = field(  # docs/reference_behaviour.md#r22
        default=False, metadata={"help": "return the decoded length, not the exact one (reference)"}
    )

    def __post_init__(self) -> None:
        check_fields(self)  # types, Literal choices (sampler, guidance, omega_mean_over) and bounds
        if self.step_indices:
            items = _STEP_INDICES["items"]
            if any(
                isinstance(k, bool) or not isinstance(k, int) or not items["ge"] <= k <= items["le"]
                for k in self.step_indices
            ):
                raise RequestFieldError(
                    ("step_indices",), f"step_indices must be 1-based step numbers in [1, {MAX_STEPS}]"
                )
            if list(self.step_indices) != sorted(set(self.step_indices)):
                raise RequestFieldError(("step_indices",), "step_indices must be strictly increasing")
            if self.sampler == "heun":
                raise RequestFieldError(
                    ("step_indices",),
                    "step_indices (oss_steps) work with the euler and pingpong samplers, not heun",
                )
        check_seeds("seeds", self.seeds, self.batch_size)


def check_seeds(name: str, seeds: tuple[int, ...] | None, batch_size: int) -> None:
    """A seed list is one seed for every item, or one per batch item (never silently padded)."""
    if seeds is None:
        return
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise RequestFieldError((name,), f"{name} must be a non-empty list of integers, got {seeds!r}")
    if any(not _SEEDS["items"]["ge"] <= s < _SEEDS["items"]["lt"] for s in seeds):
        raise RequestFieldError((name,), f"{name} must be in [0, 2**63)")
    if len(seeds) not in (1, batch_size):
        raise RequestFieldError(
            (name,),
            f"{name} has {len(seeds)} seeds for batch_size {batch_size}; give one seed or {batch_size}",
        )


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` exactly: no bool for an int, no int or str for a bool."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, tuple) and all(_type_ok(v, args[0]) for v in value)
        return isinstance(value, tuple) and len(value) == len(args) and all(map(_type_ok, value, args))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a text"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def check_fields(obj: Any) -> None:
    """The one validator of every request dataclass: each field's type (from its type hint, strictly),
    then the bounds and lengths in its metadata (``ge``/``gt``/``le``/``lt``, ``min_length``/``max_length``,
    the names the REST schema uses)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        if not _type_ok(value, hint):
            if typing.get_origin(hint) is Literal and isinstance(value, str):
                raise RequestFieldError(
                    (f.name,), f"unknown {f.name} {value!r}; choose one of {list(typing.get_args(hint))}"
                )
            raise RequestFieldError((f.name,), f"{f.name} must be {_describe(hint)}, got {value!r}")
        if isinstance(value, str) and len(value) > f.metadata.get("max_length", math.inf):
            raise RequestFieldError(
                (f.name,),
                f"{f.name} is {len(value)} characters long; the limit is {f.metadata['max_length']}",
            )
    _check_numbers(obj)


def _check_numbers(obj: Any) -> None:
    """Check every ``int``/``float`` field of a request dataclass against its type and the bounds in its
    field metadata (``ge``/``gt``/``le``/``lt``, the names the REST schema uses)."""
    for f in dataclasses.fields(obj):
        kind = str(f.type).removesuffix(" | None")  # an optional number: None passes, a number is checked
        if kind in ("int", "float", "<class 'int'>", "<class 'float'>"):
            value = getattr(obj, f.name)
            if value is None and kind != str(f.type):
                continue
            bounds = {k: f.metadata[k] for k in _BOUND_KEYS if k in f.metadata}
            _check_number(f.name, value, integer="int" in kind, unit=f.metadata.get("unit"), **bounds)


def _check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    unit: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        ok = False
    else:
        ok = math.isfinite(value) and not (
            (ge is not None and value < ge)
            or (gt is not None and value <= gt)
            or (le is not None and value > le)
            or (lt is not None and value >= lt)
        )
    if ok:
        return
    low, high = (ge if ge is not None else gt), (le if le is not None else lt)
    interval = f"{'[' if ge is not None else '('}{low}, {high}{']' if le is not None else ')'}"
    if integer:
        what = "an integer" + (f" in {interval}" if low is not None and high is not None else "")
        what += f" >= {ge}" if high is None and ge is not None else ""
    elif gt == 0:
        what = "a positive number" + (f" of {unit}" if unit else "") + (f" up to {high}" if high else "")
    elif low is not None and high is not None:
        what = f"in {interval}"
    elif low is not None:
        what = f"a number {'>=' if ge is not None else '>'} {low}"
    else:
        what = "a finite number"
    raise RequestFieldError((name,), f"{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class LoraRef:
    """A LoRA adapter to apply: a folder (or ``.safetensors`` file) and its weight (0 = off)."""

    path: str = field(metadata={"min_length": 1, "help": "LoRA folder or .safetensors file"})
    weight: float = field(default=1.0, metadata={"ge": -10.0, "le": 10.0, "help": "LoRA weight (0 = off)"})

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise RequestFieldError(("path",), "a LoRA needs a path")
        check_fields(self)


@dataclass(frozen=True, kw_only=True)
class _Request:
    """Fields every task has: the style tags, the lyrics, sampler settings and LoRA adapters."""

    tags: str = field(
        metadata={
            "min_length": 1,
            "max_length": MAX_TAGS_CHARS,
            "label": "Tags",
            "help": "style tags, e.g. 'funk, pop, 105 BPM, energetic, guitar'",
        }
    )
    lyrics: str = field(
        default="",
        metadata={
            "max_length": MAX_LYRICS_CHARS,
            "label": "Lyrics",
            "help": "lyrics with [verse]/[chorus] tags; empty or [inst] for an instrumental",
        },
    )
    params: GenerationParams = field(default_factory=GenerationParams)
    loras: tuple[LoraRef, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.tags, str) or not self.tags.strip():
            raise RequestFieldError(
                ("tags",), "tags must be a non-empty text, e.g. 'funk, pop, 105 BPM, energetic, guitar'"
            )
        if not isinstance(self.params, GenerationParams):
            raise RequestFieldError(("params",), "params must be a GenerationParams")
        check_fields(self)


def _check_source(name: str, path: Any) -> None:
    if not isinstance(path, str) or not path.strip():
        raise RequestFieldError((name,), f"{name} must name an audio file")


_RETAKE_SEEDS_HELP = "seeds of the new noise, one or one per batch item (default: random)"
_SOURCE_HELP = "the audio file to work on"


@dataclass(frozen=True, kw_only=True)
class Text2Music(_Request):
    """Generate a song of ``duration_s`` seconds from style tags and lyrics.

    ``lyrics`` uses structure tags such as ``[verse]``/``[chorus]``; an empty string (or ``[inst]``)
    asks for an instrumental.
    """

    task: ClassVar[str] = "text2music"
    duration_s: float = field(
        default=60.0,
        metadata={
            "gt": 0,
            "le": MAX_DURATION_S,
            "unit": "seconds",
            "label": "Duration (s)",
            "help": f"length of the song in seconds (at most {MAX_DURATION_S:g})",
        },
    )


@dataclass(frozen=True, kw_only=True)
class Retake(Text2Music):
    """A variation of a text2music song: its request (same seeds) plus retake seeds.

    ``variance_frac`` mixes the original noise with the retake noise (cos/sin of variance·π/2):
    0 reproduces the original exactly, 1 is a fresh song.
    """

    task: ClassVar[str] = "retake"
    variance_frac: float = field(
        default=0.2, metadata={**_FRACTION, "help": "how far from the original: 0 same song, 1 a new one"}
    )
    retake_seeds: tuple[int, ...] | None = field(
        default=None, metadata={**_SEEDS, "help": _RETAKE_SEEDS_HELP}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_seeds("retake_seeds", self.retake_seeds, self.params.batch_size)


@dataclass(frozen=True, kw_only=True)
class Repaint(_Request):
    """Regenerate the window [start_s, end_s) of ``source_path``; everything outside is kept."""

    task: ClassVar[str] = "repaint"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    start_s: float = field(
        default=0.0, metadata={"ge": 0.0, "unit": "seconds", "help": "start of the window to regenerate (s)"}
    )
    end_s: float = field(
        default=30.0, metadata={"ge": 0.0, "unit": "seconds", "help": "end of the window to regenerate (s)"}
    )
    variance_frac: float = field(
        default=0.2, metadata={**_FRACTION, "help": "how far the window moves from the source: 0 to 1"}
    )
    keep_source_samples: bool = field(  # docs/reference_behaviour.md#r23
        default=True, metadata={"help": "original samples outside the window (False: decoded only)"}
    )
    retake_seeds: tuple[int, ...] | None = field(
        default=None, metadata={**_SEEDS, "help": _RETAKE_SEEDS_HELP}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_source("source_path", self.source_path)
        if self.end_s <= self.start_s:
            raise RequestFieldError(
                ("end_s",), f"the repaint window is empty: end_s {self.end_s} <= start_s {self.start_s}"
            )
        check_seeds("retake_seeds", self.retake_seeds, self.params.batch_size)


@dataclass(frozen=True, kw_only=True)
class Extend(_Request):
    """Add ``left_s`` seconds before and ``right_s`` after ``source_path``; the source is kept.

    Songs may grow past the model's 240 s window: the new audio is generated in windows.
    """

    task: ClassVar[str] = "extend"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    left_s: float = field(
        default=0.0,
        metadata={
            "ge": 0.0,
            "le": MAX_EXTEND_S,
            "unit": "seconds",
            "help": "seconds to add before the source",
        },
    )
    right_s: float = field(
        default=30.0,
        metadata={
            "ge": 0.0,
            "le": MAX_EXTEND_S,
            "unit": "seconds",
            "help": "seconds to add after the source",
        },
    )
    keep_source_samples: bool = field(  # docs/reference_behaviour.md#r23
        default=True, metadata={"help": "original samples outside the window (False: decoded only)"}
    )
    retake_seeds: tuple[int, ...] | None = field(
        default=None, metadata={**_SEEDS, "help": _RETAKE_SEEDS_HELP}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_source("source_path", self.source_path)
        if self.left_s == 0 and self.right_s == 0:
            raise RequestFieldError(("right_s",), "extend needs left_s > 0 or right_s > 0")
        check_seeds("retake_seeds", self.retake_seeds, self.params.batch_size)


@dataclass(frozen=True, kw_only=True)
class AudioToAudio(_Request):
    """Restyle ``reference_path`` with the tags/lyrics; ``strength_frac`` 1 returns the reference."""

    task: ClassVar[str] = "audio2audio"
    reference_path: str = field(metadata={"min_length": 1, "help": "the audio file to restyle"})
    strength_frac: float = field(
        default=0.5, metadata={**_FRACTION, "help": "how much of the reference is kept: 0 to 1 (all)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_source("reference_path", self.reference_path)


EDIT_PRESETS: dict[str, tuple[float, float]] = {"only_lyrics": (0.6, 1.0), "remix": (0.2, 0.4)}


def edit_n_min_frac() -> Any:
    """The FlowEdit schedule fields every family's edit request has (this one and the two below)."""
    return field(
        default=0.6, metadata={**_FRACTION, "help": "start of the edited part of the schedule, 0 to 1"}
    )


def edit_n_max_frac() -> Any:
    return field(
        default=1.0, metadata={**_FRACTION, "help": "end of the edited part of the schedule, 0 to 1"}
    )


def edit_n_avg() -> Any:
    return field(default=1, metadata={"ge": 1, "le": 64, "help": "noise draws averaged per edit step"})


def check_edit_fractions(request: Any) -> None:
    """An edit's ``n_min_frac < n_max_frac``, or the field error saying so."""
    if request.n_min_frac >= request.n_max_frac:
        raise RequestFieldError(
            ("n_min_frac",), f"n_min_frac {request.n_min_frac} must be < n_max_frac {request.n_max_frac}"
        )


@dataclass(frozen=True, kw_only=True)
class Edit(_Request):
    """FlowEdit: change the tags and/or lyrics of ``source_path`` (described by ``tags``/``lyrics``)
    to ``target_tags``/``target_lyrics`` while keeping the rest. Presets (``EDIT_PRESETS``):
    only_lyrics (n_min 0.6, n_max 1.0) and remix (0.2, 0.4)."""

    task: ClassVar[str] = "edit"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    target_tags: str | None = field(
        default=None, metadata={"max_length": MAX_TAGS_CHARS, "help": "the tags the edited song has"}
    )
    target_lyrics: str | None = field(
        default=None,
        metadata={"max_length": MAX_LYRICS_CHARS, "help": "the lyrics the edited song has (text or @FILE)"},
    )
    n_min_frac: float = edit_n_min_frac()
    n_max_frac: float = edit_n_max_frac()
    n_avg: int = edit_n_avg()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_source("source_path", self.source_path)
        if self.target_tags is None and self.target_lyrics is None:
            raise RequestFieldError(("target_tags",), "edit needs target_tags and/or target_lyrics")
        if self.target_tags is not None and not str(self.target_tags).strip():
            raise RequestFieldError(("target_tags",), "target_tags must be a non-empty text when given")
        check_edit_fractions(self)


Request = Text2Music | Retake | Repaint | Extend | AudioToAudio | Edit
TASKS: dict[str, type] = {c.task: c for c in (Text2Music, Retake, Repaint, Extend, AudioToAudio, Edit)}


def unknown_key_message(key: str, valid: Any, what: str = "field", where: str = "") -> str:
    """``unknown field 'duraton_s' (did you mean 'duration_s'?)``; without a close match, the valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid ones are {valid}"
    return f"unknown {what} {key!r}{where} ({hint})"


def check_keys(
    data: dict[str, Any], valid: Any, what: str, prefix: tuple[str | int, ...] = (), where: str = ""
) -> None:
    for key in data:
        if key not in valid:
            raise RequestFieldError((*prefix, key), unknown_key_message(str(key), valid, what, where))


def params_from_dict(data: Any, params_cls: type | None = None) -> Any:
    """A settings dataclass (default :class:`GenerationParams`) from its JSON object; unknown keys and bad
    values raise :class:`RequestFieldError` under ``params``."""
    params_cls = params_cls or GenerationParams
    if not isinstance(data, dict):
        raise RequestFieldError(("params",), f"params must be a JSON object, got {data!r}")
    check_keys(data, {f.name for f in dataclasses.fields(params_cls)}, "generation parameter", ("params",))
    try:
        return params_cls(**{k: _tuple(v) for k, v in data.items()})
    except RequestFieldError as exc:
        raise exc.under("params") from None


def loras_from_list(loras: Any) -> tuple[LoraRef, ...]:
    """``loras`` of a JSON request (a list of ``{"path", "weight"}`` objects or ``[path, weight]`` pairs)."""
    shape = "loras must be a list of {'path': ..., 'weight': ...}"
    if not isinstance(loras, list | tuple):
        raise RequestFieldError(("loras",), shape)
    out = []
    names = {f.name for f in dataclasses.fields(LoraRef)}
    for i, ref in enumerate(loras):
        try:
            if isinstance(ref, dict):
                check_keys(ref, names, "LoRA field")
                out.append(LoraRef(**ref))
            elif isinstance(ref, list | tuple) and 1 <= len(ref) <= 2:
                out.append(LoraRef(*ref))
            else:
                raise RequestFieldError((), f"{shape}, got {ref!r}")
        except RequestFieldError as exc:
            raise exc.under("loras", i) from None
    return tuple(out)


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def build_request(data: Any, tasks: dict[str, type], params_cls: type, **parsed: Any) -> Any:
    """The request of ``data`` (``{"task": ..., <fields>, "params": {...}}``) among ``tasks``; ``parsed``
    are fields the caller already turned into objects (e.g. ``loras``). Unknown tasks and keys, missing
    required fields and bad values raise :class:`RequestFieldError` naming the field."""
    if not isinstance(data, dict):
        raise ConfigError("a request must be a JSON object")
    data = dict(data)
    task = data.pop("task", "text2music")
    cls = tasks.get(task)
    if cls is None:
        raise RequestFieldError(("task",), f"unknown task {task!r}; choose one of {sorted(tasks)}")
    params = params_from_dict(data.pop("params", None) or {}, params_cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"params", *parsed}
    check_keys(data, names, "field", where=f" for task {task!r}")
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.name in names
        and f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise RequestFieldError((missing[0],), f"task {task!r} needs field(s) {missing}")
    return cls(params=params, **parsed, **{k: _tuple(v) for k, v in data.items()})


def request_from_dict(data: dict[str, Any]) -> Request:
    """Build a request from its JSON form ``{"task": ..., <task fields>, "params": {...}}``.

    Invalid fields raise :class:`RequestFieldError` (a ``ConfigError``) whose ``loc`` names the field.
    """
    if not isinstance(data, dict):
        raise ConfigError("a request must be a JSON object")
    data = dict(data)
    loras = loras_from_list(data.pop("loras", None) or [])
    return build_request(data, TASKS, GenerationParams, loras=loras)


def with_seeds(request: Any) -> Any:
    """``request`` with its seeds (and retake seeds) filled in, one per batch item, random where unset,
    so the returned request regenerates the output exactly."""
    from songflow.sampling.noise import parse_seeds

    p = request.params
    seeds = tuple(parse_seeds(list(p.seeds) if p.seeds else None, p.batch_size))
    request = dataclasses.replace(request, params=dataclasses.replace(p, seeds=seeds))
    if hasattr(request, "retake_seeds"):
        retake = request.retake_seeds
        retake = tuple(parse_seeds(list(retake) if retake else None, p.batch_size))
        request = dataclasses.replace(request, retake_seeds=retake)
    return request


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
        listed = _official_int_list(seeds)
        batch = params.get("batch_size", 1)
        if isinstance(batch, int) and 1 < len(listed) < batch:  # the official rule: the last seed repeats
            listed += (listed[-1],) * (batch - len(listed))
        params["seeds"] = listed
    if data.get("oss_steps") not in (None, "", []):
        params["step_indices"] = _official_int_list(data["oss_steps"])
    if reference_behaviour:
        params.update(
            legacy_double_shift=True,
            omega_mean_over="batch",
            legacy_batch_noise=True,
            legacy_heun_interval=True,
            legacy_output_length=True,
        )
    return Text2Music(
        tags=data.get("prompt", ""),
        lyrics=data.get("lyrics", "") or "",
        duration_s=float(data.get("audio_duration", 60.0)),
        params=GenerationParams(**params),
    )


@dataclass(frozen=True)
class RequestSchema:
    """A model family's request schema, as the front ends use it: the request class per task, the settings
    class under ``params``, the JSON round trip, and the fields every task has (the CLI gives them their
    own flags). One per family: :data:`V1_SCHEMA` here, ``songflow.requests_v15.V15_SCHEMA``."""

    name: str
    tasks: dict[str, type]
    params_cls: type
    from_dict: Any  # Callable[[dict], request]
    to_dict: Any  # Callable[[request], dict]
    common: frozenset[str]
    text_field: str  # the required prompt field: "tags" (v1) or "caption" (1.5)


V1_SCHEMA = RequestSchema(
    name="acestep-v1",
    tasks=TASKS,
    params_cls=GenerationParams,
    from_dict=request_from_dict,
    to_dict=request_to_dict,
    common=frozenset({"tags", "lyrics", "params", "loras"}),
    text_field="tags",
)
