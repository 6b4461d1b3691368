"""The ACE-Step 1.5 request schema: one frozen dataclass per task, behind the Python API, CLI, server and UI.

Same conventions as :mod:`songflow.requests` (v1): a request is tagged by ``task``, every field is checked by
the one validator (:func:`songflow.requests.check_fields`: types, choices, bounds in the field metadata), and
``request_to_dict`` / ``request_from_dict`` give the JSON round trip of the sidecar. Fields left ``None`` in
:class:`Params15` take the checkpoint's preset (``songflow.families.acestep_v15``): turbo runs 8 steps at
shift 3 without guidance, base/sft run 50 steps at shift 1 with APG scale 7.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from songflow.requests import (
    LoraRef,
    RequestFieldError,
    RequestSchema,
    build_request,
    check_edit_fractions,
    check_fields,
    check_seeds,
    edit_n_avg,
    edit_n_max_frac,
    edit_n_min_frac,
    loras_from_list,
    request_to_dict,
)
from songflow.text.acestep_v15_lm_prompts import MAX_DESCRIPTION_CHARS, NO_USER_INPUT
from songflow.text.lyric_tokenizer import MAX_LYRICS_CHARS

__all__ = [
    "BPM_RANGE",
    "DURATION_RANGE_S",
    "MAX_BATCH_V15",
    "MAX_CUSTOM_TIMESTEPS",
    "TASKS_V15",
    "V15_SCHEMA",
    "VALID_KEYSCALES",
    "VALID_LANGUAGES",
    "MAX_DESCRIPTION_CHARS",
    "PLANNER_TASKS_V15",
    "V15_PLANNER_SCHEMA",
    "VALID_TIME_SIGNATURES",
    "Complete15",
    "Cover15",
    "Edit15",
    "Extend15",
    "Extract15",
    "MAX_EXTEND_V15_S",
    "Stems15",
    "Lego15",
    "TRACK_NAMES_V15",
    "Format15",
    "Params15",
    "Plan15",
    "PlannerRequest15",
    "Repaint15",
    "Request15",
    "Retake15",
    "Simple15",
    "Text2Music15",
    "Understand15",
    "planner_request15_from_dict",
    "request15_from_dict",
    "request15_to_dict",
]

#: the vocal languages the 1.5 prompts know ("unknown": let the model decide)
VALID_LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr",
    "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro",
    "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)  # fmt: skip
#: 7 notes x 5 accidentals (none, ASCII and Unicode sharp/flat) x major/minor = 70 key names
VALID_KEYSCALES = frozenset(
    f"{note}{acc} {mode}"
    for note in "ABCDEFG"
    for acc in ("", "#", "b", "♯", "♭")
    for mode in ("major", "minor")
)
BPM_RANGE = (30, 300)
#: the official handler takes any duration (it generates at least 5.12 s); its REST API clamps to 10-600 s
DURATION_RANGE_S = (1.0, 600.0)
MAX_BATCH_V15 = 16
MAX_CUSTOM_TIMESTEPS = 20
MAX_CAPTION_CHARS = 4096
#: what the 5 Hz LM planner can write: durations (seconds), beats per bar (2/4, 3/4, 4/4, 6/8)
PLAN_DURATION_RANGE_S = (10, 600)
VALID_TIME_SIGNATURES = ("2", "3", "4", "6")
_SEEDS: dict[str, Any] = {"min_length": 1, "items": {"ge": 0, "lt": 2**63}}
_FRACTION: dict[str, Any] = {"ge": 0.0, "le": 1.0}
_SOURCE_HELP = "the audio file to work on (any rate; read as 48 kHz stereo)"


@dataclass(frozen=True)
class Params15:
    """Sampling settings of one 1.5 run; ``None`` = the checkpoint's preset (see the module docstring).

    - ``timesteps``: a custom schedule (turbo: at most 20 values, each snapped to the nearest of the 20
      timesteps the turbo model was distilled on; base/sft: used as given), overriding steps and shift.
    - ``chunk_mask_mode`` "explicit" (default) tells the DiT which frames a repaint regenerates; "auto"
      reproduces the official default, whose mask is all ones (docs/reference_behaviour.md#r24).
    - ``legacy_output_length`` True returns the official length (at least 128 latent frames, 5.12 s, whole
      frames); False (default) returns exactly the requested or source length.
    - ``normalization_db`` peak-normalises each song to that level in dBFS (the official
      ``generate_music`` does it at -1 dB by default); None (default) leaves the decoded level.
    - ``lm_*``, ``use_cot_*``, ``constrained_decoding``, ``legacy_planner``: the 5 Hz LM planner's settings
      (official REST names), used by ``think``, the simple mode and the plan/format/understand requests.
      ``lm_temperature`` 0 is greedy; ``lm_top_k`` None/0 and ``lm_top_p`` 1 are off; ``lm_cfg_scale`` > 1
      guides the audio codes with an unconditional twin; ``legacy_planner`` reproduces the official planner,
      bugs included (a caption may end the metadata early and lose the user's fields).
      ``lm_seeds``: the planner's seeds (one, or one per batch item; default: ``seeds``).
    """

    steps: int | None = field(
        default=None, metadata={"ge": 1, "le": 200, "help": "diffusion steps (base/sft)"}
    )
    shift: float | None = field(
        default=None, metadata={"gt": 0, "le": 10, "help": "timestep shift (turbo: 1, 2 or 3)"}
    )
    timesteps: tuple[float, ...] = field(
        default=(),
        metadata={"items": {"ge": 0.0, "le": 1.0}, "help": "custom timesteps from 1 down (optional)"},
    )
    infer_method: Literal["ode", "sde"] = field(
        default="ode", metadata={"help": "ode: deterministic; sde: re-noise between steps"}
    )
    guidance_scale: float | None = field(
        default=None, metadata={"ge": 0.0, "le": 30.0, "help": "CFG scale (base/sft; turbo has none)"}
    )
    guidance: Literal["apg", "adg"] = field(default="apg", metadata={"help": "guidance kind (base/sft)"})
    cfg_interval_start: float = field(
        default=0.0, metadata={**_FRACTION, "help": "guidance applies for t in [start, end]"}
    )
    cfg_interval_end: float = field(default=1.0, metadata={**_FRACTION, "help": "end of the guided t range"})
    seeds: tuple[int, ...] | None = field(
        default=None, metadata={**_SEEDS, "help": "one seed, or one per batch item (default: random)"}
    )
    batch_size: int = field(
        default=1, metadata={"ge": 1, "le": MAX_BATCH_V15, "help": "songs generated together, one file each"}
    )
    chunk_mask_mode: Literal["explicit", "auto"] = field(
        default="explicit", metadata={"help": "repaint mask the DiT sees (auto: all ones, as the reference)"}
    )
    legacy_output_length: bool = field(
        default=False, metadata={"help": "return the reference's length (>= 5.12 s, whole frames)"}
    )
    normalization_db: float | None = field(
        default=None,
        metadata={"ge": -60.0, "le": 0.0, "help": "peak-normalise each song to this dBFS (official: -1)"},
    )
    lm_temperature: float = field(
        default=0.85, metadata={"ge": 0.0, "le": 5.0, "help": "planner LM temperature (0 = greedy)"}
    )
    lm_cfg_scale: float = field(
        default=2.0,
        metadata={"ge": 1.0, "le": 20.0, "help": "planner CFG scale on the audio codes (1 = off)"},
    )
    lm_top_k: int | None = field(
        default=None, metadata={"ge": 0, "le": 1_000_000, "help": "planner top-k (0 or none = off)"}
    )
    lm_top_p: float | None = field(
        default=0.9, metadata={"gt": 0.0, "le": 1.0, "help": "planner nucleus top-p (1 = off)"}
    )
    lm_repetition_penalty: float = field(
        default=1.0, metadata={"gt": 0.0, "le": 10.0, "help": "planner repetition penalty (1 = off)"}
    )
    lm_negative_prompt: str = field(
        default=NO_USER_INPUT,
        metadata={"max_length": MAX_CAPTION_CHARS, "help": "caption of the planner's CFG twin"},
    )
    use_cot_metas: bool = field(default=True, metadata={"help": "let the planner fill missing bpm/key/..."})
    use_cot_caption: bool = field(default=True, metadata={"help": "the planner rewrites the caption"})
    use_cot_language: bool = field(
        default=True, metadata={"help": "the planner picks the vocal language when it is 'unknown'"}
    )
    constrained_decoding: bool = field(
        default=True, metadata={"help": "keep the planner's output valid (required)"}
    )
    legacy_planner: bool = field(
        default=False, metadata={"help": "the official planner, bugs included (reference behaviour)"}
    )
    lm_seeds: tuple[int, ...] | None = field(
        default=None, metadata={**_SEEDS, "help": "planner seeds, one or one per item (default: seeds)"}
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.constrained_decoding:
            raise RequestFieldError(
                ("constrained_decoding",),
                "constrained_decoding must stay on: the grammar is what keeps the planned metadata and "
                "codes valid",
            )
        if len(self.timesteps) > MAX_CUSTOM_TIMESTEPS:
            raise RequestFieldError(
                ("timesteps",),
                f"timesteps has {len(self.timesteps)} values; give at most {MAX_CUSTOM_TIMESTEPS}",
            )
        if any(not 0.0 <= t <= 1.0 for t in self.timesteps):
            raise RequestFieldError(("timesteps",), "timesteps must lie in [0, 1], from 1 (noise) down")
        if self.cfg_interval_end < self.cfg_interval_start:
            raise RequestFieldError(
                ("cfg_interval_end",),
                f"cfg_interval_end {self.cfg_interval_end} is below "
                f"cfg_interval_start {self.cfg_interval_start}",
            )
        check_seeds("seeds", self.seeds, self.batch_size)
        check_seeds("lm_seeds", self.lm_seeds, self.batch_size)


@dataclass(frozen=True, kw_only=True)
class _Request15:
    """Fields of every 1.5 task: caption, lyrics, the song's metadata, the instruction and settings."""

    caption: str = field(
        default="",
        metadata={
            "max_length": MAX_CAPTION_CHARS,
            "label": "Caption",
            "help": "what the music sounds like, e.g. 'upbeat synth pop with bright piano'",
        },
    )
    lyrics: str = field(
        default="",
        metadata={
            "max_length": MAX_LYRICS_CHARS,
            "label": "Lyrics",
            "help": "lyrics with [verse]/[chorus] tags; empty or [Instrumental] for none",
        },
    )
    bpm: int | None = field(
        default=None, metadata={"ge": BPM_RANGE[0], "le": BPM_RANGE[1], "help": "tempo in beats per minute"}
    )
    key_scale: str | None = field(default=None, metadata={"help": "key, e.g. 'C major', 'F# minor'"})
    time_signature: Literal["2", "3", "4", "6"] | None = field(
        default=None, metadata={"help": "beats per bar"}
    )
    vocal_language: str = field(default="en", metadata={"help": "language of the lyrics (or 'unknown')"})
    instruction: str | None = field(
        default=None, metadata={"max_length": 512, "help": "the DiT instruction (default: the task's)"}
    )
    reference_path: str | None = field(
        default=None, metadata={"help": "an audio file whose timbre the song takes (optional)"}
    )
    params: Params15 = field(default_factory=Params15)
    loras: tuple[LoraRef, ...] = ()  # adapters for this request only (weight 0 = off)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Params15):
            raise RequestFieldError(("params",), "params must be a Params15")
        check_fields(self)
        _check_metas(self)
        for name in ("reference_path",):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise RequestFieldError((name,), f"{name} must name an audio file (or be left out)")


def _check_metas(request: Any) -> None:
    """The key and the vocal language of a request are names the model knows (None: not given)."""
    key_scale = getattr(request, "key_scale", None)
    if key_scale is not None and key_scale not in VALID_KEYSCALES:
        raise RequestFieldError(
            ("key_scale",),
            f"unknown key_scale {key_scale!r}; give a note A-G, an optional # or b, then "
            "'major' or 'minor', e.g. 'F# minor'",
        )
    language = getattr(request, "vocal_language", None)
    if language is not None and language not in VALID_LANGUAGES:
        raise RequestFieldError(
            ("vocal_language",),
            f"unknown vocal_language {language!r}; choose one of {list(VALID_LANGUAGES)}",
        )


def _check_plan_duration(request: Any, why: str) -> None:
    """A planned song lasts 10 to 600 s (what the planner can write); None: the planner decides."""
    duration_s = getattr(request, "duration_s", None)
    low, high = PLAN_DURATION_RANGE_S
    if duration_s is not None and not low <= duration_s <= high:
        raise RequestFieldError(
            ("duration_s",),
            f"duration_s {duration_s} s is outside {low:g}..{high:g} s, the lengths {why}; "
            f"give a duration in that range",
        )


_THINK_HELP = "plan metadata and 5 Hz audio codes with the LM first (needs the LM folder)"


@dataclass(frozen=True, kw_only=True)
class Text2Music15(_Request15):
    """A song of ``duration_s`` seconds from a caption, lyrics and metadata; ``audio_codes`` (5 Hz semantic
    codes, e.g. written by the planner LM) make it follow their structure (the official code turns such a
    request into a cover of the codes)."""

    task: ClassVar[str] = "text2music"
    duration_s: float = field(
        default=30.0,
        metadata={
            "ge": DURATION_RANGE_S[0],
            "le": DURATION_RANGE_S[1],
            "unit": "seconds",
            "label": "Duration (s)",
            "help": "length of the song in seconds (1 to 600; 10 or more recommended)",
        },
    )
    audio_codes: tuple[int, ...] | None = field(
        default=None,
        metadata={"items": {"ge": 0, "lt": 64000}, "help": "5 Hz audio codes 0..63999 (optional)"},
    )
    think: bool = field(default=False, metadata={"label": "Plan with the LM", "help": _THINK_HELP})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.think:
            _check_plan_duration(self, "the planner writes (think)")
        if self.audio_codes is not None:
            if not self.audio_codes:
                raise RequestFieldError(("audio_codes",), "audio_codes is empty; leave it out or give codes")
            if any(not 0 <= c < 64000 for c in self.audio_codes):
                raise RequestFieldError(("audio_codes",), "audio codes must be integers in [0, 64000)")


@dataclass(frozen=True, kw_only=True)
class Retake15(Text2Music15):
    """A variation of a text2music song: its request (same seeds) plus ``retake_seeds``; ``variance_frac``
    mixes the original noise with the retake noise (cos/sin of variance*pi/2): 0 is the same song."""

    task: ClassVar[str] = "retake"
    variance_frac: float = field(
        default=0.2, metadata={**_FRACTION, "help": "how far from the original: 0 same song, 1 a new one"}
    )
    retake_seeds: tuple[int, ...] | None = field(
        default=None, metadata={**_SEEDS, "help": "seeds of the new noise (default: random)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_seeds("retake_seeds", self.retake_seeds, self.params.batch_size)


@dataclass(frozen=True, kw_only=True)
class Repaint15(_Request15):
    """Regenerate [start_s, end_s) of ``source_path`` (end_s None: to the end); the rest is re-injected from
    the source during the first ``injection_frac`` of the steps and crossfaded at the span edges."""

    task: ClassVar[str] = "repaint"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    start_s: float = field(
        default=0.0, metadata={"ge": 0.0, "unit": "seconds", "help": "start of the span (s)"}
    )
    end_s: float | None = field(
        default=None, metadata={"help": "end of the span in seconds (default: the end)"}
    )
    injection_frac: float = field(
        default=0.5, metadata={**_FRACTION, "help": "fraction of the steps that re-inject the source"}
    )
    crossfade_frames: int = field(
        default=12,
        metadata={"ge": 0, "le": 250, "help": "latent frames (40 ms each) crossfaded at the edges"},
    )
    keep_source_samples: bool = field(  # docs/reference_behaviour.md#r27
        default=True, metadata={"help": "the source's own samples outside the span (as the reference)"}
    )
    wav_crossfade_s: float = field(
        default=0.025,
        metadata={"ge": 0.0, "le": 5.0, "unit": "seconds", "help": "waveform crossfade at the span edges"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_path("source_path", self.source_path)
        if self.end_s is not None and not self.end_s > self.start_s:
            raise RequestFieldError(
                ("end_s",), f"the repaint span is empty: end_s {self.end_s} <= start_s {self.start_s}"
            )


@dataclass(frozen=True, kw_only=True)
class Cover15(_Request15):
    """A new rendition of ``source_path`` following its 5 Hz semantic codes, in the caption's style.

    ``cover_strength_frac``: the fraction of the steps conditioned on the source's codes (then the plain
    text condition takes over; lower = freer); ``cover_noise_frac`` > 0 starts from the noised source.
    """

    task: ClassVar[str] = "cover"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    cover_strength_frac: float = field(
        default=1.0, metadata={**_FRACTION, "help": "how closely the cover follows the source (0 to 1)"}
    )
    cover_noise_frac: float = field(
        default=0.0,
        metadata={**_FRACTION, "help": "start from the source noised to this level (0 = pure noise)"},
    )
    legacy_cover_detection: bool = field(  # docs/reference_behaviour.md#r26
        default=False,
        metadata={"help": "cover only when the instruction asks for semantic tokens (reference behaviour)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_path("source_path", self.source_path)


#: the stems the base/sft checkpoints know (official ``TRACK_NAMES``)
Track15 = Literal[
    "woodwinds", "brass", "fx", "synth", "strings", "percussion",
    "keyboard", "guitar", "bass", "drums", "backing_vocals", "vocals",
]  # fmt: skip
TRACK_NAMES_V15: tuple[str, ...] = typing.get_args(Track15)
_TRACK_HELP = "the stem: " + ", ".join(TRACK_NAMES_V15)


@dataclass(frozen=True, kw_only=True)
class Extract15(_Request15):
    """The ``track`` stem of ``source_path`` alone (base/sft checkpoints; None: the model's own pick)."""

    task: ClassVar[str] = "extract"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    track: Track15 | None = field(default=None, metadata={"help": _TRACK_HELP})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_path("source_path", self.source_path)


@dataclass(frozen=True, kw_only=True)
class Complete15(_Request15):
    """``source_path`` (a partial arrangement) completed with the ``classes`` stems (base/sft checkpoints;
    empty: the model's own pick)."""

    task: ClassVar[str] = "complete"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    classes: str = field(
        default="",
        metadata={
            "max_length": 256,
            "help": f"the stems to add, comma-separated, e.g. drums,bass ({', '.join(TRACK_NAMES_V15)})",
        },
    )

    @property
    def class_names(self) -> tuple[str, ...]:
        """``classes`` as stem names, in the given order."""
        return _stem_list(self.classes)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_path("source_path", self.source_path)
        _check_stems("classes", self.class_names, self.classes, empty_ok=True)


def _stem_list(text: str) -> tuple[str, ...]:
    """``"drums, bass"`` (or ``|``-separated) as stem names, in the given order."""
    return tuple(part.strip() for part in text.replace("|", ",").split(",") if part.strip())


def _check_stems(name: str, stems: tuple[str, ...], given: str, *, empty_ok: bool) -> None:
    """Distinct known stems (at least one unless ``empty_ok``), or the field error naming ``name``."""
    if (stems or empty_ok) and all(s in TRACK_NAMES_V15 for s in stems) and len(set(stems)) == len(stems):
        return
    what = "distinct stems" if empty_ok else "'all' or distinct stems"
    raise RequestFieldError(
        (name,), f"{name} must be {what} of {list(TRACK_NAMES_V15)}, comma-separated; got {given!r}"
    )


@dataclass(frozen=True, kw_only=True)
class Lego15(Repaint15):
    """A new ``track`` layer over ``source_path`` in [start_s, end_s) (default: the whole clip), the mix
    kept as context (base/sft checkpoints): a repaint whose span keeps the source in the DiT's context."""

    task: ClassVar[str] = "lego"
    track: Track15 | None = field(default=None, metadata={"help": _TRACK_HELP})


#: how much extend may add on each side (the result is generated in windows past the model's 600 s)
MAX_EXTEND_V15_S = 1200.0


@dataclass(frozen=True, kw_only=True)
class Stems15(_Request15):
    """Several stems of ``source_path`` in one batched run (base/sft checkpoints): one output per stem of
    ``tracks`` (comma-separated, or "all" for the 12), each row the :class:`Extract15` of its stem with the
    request's seed; written side by side."""

    task: ClassVar[str] = "stems"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    tracks: str = field(
        default="all",
        metadata={
            "max_length": 256,
            "help": f"the stems, comma-separated, or all ({', '.join(TRACK_NAMES_V15)})",
        },
    )

    @property
    def track_names(self) -> tuple[str, ...]:
        """The stems to extract, in the given order ("all": the 12 in :data:`TRACK_NAMES_V15` order)."""
        if self.tracks.strip().lower() == "all":
            return TRACK_NAMES_V15
        return _stem_list(self.tracks)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_path("source_path", self.source_path)
        _check_stems("tracks", self.track_names, self.tracks, empty_ok=False)
        if self.params.batch_size != 1:
            raise RequestFieldError(
                ("params", "batch_size"), "stems runs one row per stem: leave batch_size at 1"
            )


@dataclass(frozen=True, kw_only=True)
class Extend15(_Request15):
    """Add ``left_s`` seconds before and ``right_s`` after ``source_path``; the source is kept. Past the
    model's window the new audio is generated window by window; the result has exactly
    ``left_s + source + right_s`` seconds."""

    task: ClassVar[str] = "extend"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    left_s: float = field(
        default=0.0,
        metadata={
            "ge": 0.0, "le": MAX_EXTEND_V15_S, "unit": "seconds", "help": "seconds to add before the source"
        },
    )  # fmt: skip
    right_s: float = field(
        default=30.0,
        metadata={
            "ge": 0.0, "le": MAX_EXTEND_V15_S, "unit": "seconds", "help": "seconds to add after the source"
        },
    )  # fmt: skip
    keep_source_samples: bool = field(
        default=True, metadata={"help": "the source's own samples in the result (False: decoded only)"}
    )
    retake_seeds: tuple[int, ...] | None = field(
        default=None, metadata={**_SEEDS, "help": "seeds of the new frames' noise (default: random)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_path("source_path", self.source_path)
        if self.left_s == 0 and self.right_s == 0:
            raise RequestFieldError(("right_s",), "extend needs left_s > 0 or right_s > 0")
        check_seeds("retake_seeds", self.retake_seeds, self.params.batch_size)


@dataclass(frozen=True, kw_only=True)
class Edit15(_Request15):
    """FlowEdit: change the caption and/or lyrics of ``source_path`` (described by ``caption``/``lyrics``)
    to ``target_caption``/``target_lyrics`` while keeping the rest; identical prompts return the source."""

    task: ClassVar[str] = "edit"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    target_caption: str | None = field(
        default=None, metadata={"max_length": MAX_CAPTION_CHARS, "help": "the caption the edited song has"}
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
        _check_path("source_path", self.source_path)
        if self.target_caption is None and self.target_lyrics is None:
            raise RequestFieldError(("target_caption",), "edit needs target_caption and/or target_lyrics")
        check_edit_fractions(self)


_PLAN_DURATION: dict[str, Any] = {
    "ge": PLAN_DURATION_RANGE_S[0],
    "le": PLAN_DURATION_RANGE_S[1],
    "unit": "seconds",
    "label": "Duration (s)",
    "help": "length of the song in seconds (10 to 600; empty: the planner decides)",
}


@dataclass(frozen=True, kw_only=True)
class Simple15:
    """Simple mode: the 5 Hz LM turns a free ``description`` into a caption, lyrics and metadata, then the
    DiT sings them (with ``think`` the LM also writes the audio codes). ``instrumental`` asks for no
    vocals; ``vocal_language`` "unknown" lets the LM choose; ``duration_s`` None takes the LM's."""

    task: ClassVar[str] = "simple"
    description: str = field(
        default="",
        metadata={
            "max_length": MAX_DESCRIPTION_CHARS,
            "label": "Description",
            "help": "the song in your words, e.g. 'a melancholic piano ballad about the sea'",
        },
    )
    instrumental: bool = field(default=False, metadata={"help": "no vocals"})
    vocal_language: str = field(
        default="unknown", metadata={"help": "language of the lyrics ('unknown': the LM chooses)"}
    )
    duration_s: float | None = field(default=None, metadata=_PLAN_DURATION)
    think: bool = field(default=False, metadata={"label": "Plan with the LM", "help": _THINK_HELP})
    params: Params15 = field(default_factory=Params15)

    def __post_init__(self) -> None:
        _check_planner_request(self)


@dataclass(frozen=True, kw_only=True)
class _PlanFields:
    """Caption, lyrics and the metadata the user fixes (None: the planner fills them in)."""

    caption: str = field(
        default="", metadata={"max_length": MAX_CAPTION_CHARS, "label": "Caption", "help": "the style"}
    )
    lyrics: str = field(
        default="", metadata={"max_length": MAX_LYRICS_CHARS, "label": "Lyrics", "help": "the lyrics"}
    )
    bpm: int | None = field(
        default=None, metadata={"ge": BPM_RANGE[0], "le": BPM_RANGE[1], "help": "tempo in beats per minute"}
    )
    key_scale: str | None = field(default=None, metadata={"help": "key, e.g. 'C major', 'F# minor'"})
    time_signature: Literal["2", "3", "4", "6"] | None = field(
        default=None, metadata={"help": "beats per bar"}
    )
    vocal_language: str | None = field(default=None, metadata={"help": "language of the lyrics"})
    duration_s: float | None = field(default=None, metadata=_PLAN_DURATION)
    params: Params15 = field(default_factory=Params15)

    def __post_init__(self) -> None:
        _check_planner_request(self)


@dataclass(frozen=True, kw_only=True)
class Plan15(_PlanFields):
    """A song's blueprint from the 5 Hz LM, no audio: the metadata it fills in (bpm, key, time signature,
    duration, language, caption) and, with ``with_codes``, its 5 Hz audio codes; one plan per batch item."""

    task: ClassVar[str] = "plan"
    with_codes: bool = field(default=True, metadata={"help": "also write the 5 Hz audio codes"})


@dataclass(frozen=True, kw_only=True)
class Format15(_PlanFields):
    """The 5 Hz LM tidies a caption and lyrics (a richer caption, structured lyrics, metadata); the
    fields given are kept."""

    task: ClassVar[str] = "format"


@dataclass(frozen=True, kw_only=True)
class Understand15:
    """The 5 Hz LM reads ``source_path`` back (VAE -> 5 Hz audio codes -> LM): its caption, lyrics and
    metadata."""

    task: ClassVar[str] = "understand"
    source_path: str = field(metadata={"min_length": 1, "help": _SOURCE_HELP})
    params: Params15 = field(default_factory=Params15)

    def __post_init__(self) -> None:
        _check_params(self)
        check_fields(self)
        _check_path("source_path", self.source_path)


def _check_planner_request(request: Any) -> None:
    """The checks of a request the planner reads: its fields, metadata names, a plannable duration."""
    _check_params(request)
    check_fields(request)
    _check_metas(request)
    _check_plan_duration(request, "the planner writes")


def _check_params(request: Any) -> None:
    if not isinstance(request.params, Params15):
        raise RequestFieldError(("params",), "params must be a Params15")


def _check_path(name: str, path: Any) -> None:
    if not isinstance(path, str) or not path.strip():
        raise RequestFieldError((name,), f"{name} must name an audio file")


Request15 = (
    Text2Music15 | Retake15 | Repaint15 | Cover15 | Extend15 | Edit15
    | Extract15 | Stems15 | Lego15 | Complete15 | Simple15
)  # fmt: skip
TASKS_V15: dict[str, type] = {
    c.task: c
    for c in (
        Text2Music15,
        Retake15,
        Repaint15,
        Cover15,
        Extend15,
        Edit15,
        Extract15,
        Stems15,
        Lego15,
        Complete15,
        Simple15,
    )  # fmt: skip
}
#: the planner's own requests (their answer is a plan or text, not audio)
PlannerRequest15 = Plan15 | Format15 | Understand15
PLANNER_TASKS_V15: dict[str, type] = {c.task: c for c in (Plan15, Format15, Understand15)}


def request15_from_dict(data: dict[str, Any]) -> Request15:
    """A 1.5 request from its JSON form ``{"task": ..., <fields>, "params": {...}}``; unknown keys and bad
    values raise :class:`RequestFieldError` naming the field."""
    if not isinstance(data, dict):
        raise RequestFieldError((), "a request must be a JSON object")
    data = dict(data)
    cls = TASKS_V15.get(data.get("task"))  # type: ignore[arg-type]
    if cls is None or "loras" not in {f.name for f in dataclasses.fields(cls)}:
        return build_request(data, TASKS_V15, Params15)
    return build_request(data, TASKS_V15, Params15, loras=loras_from_list(data.pop("loras", None) or []))


def planner_request15_from_dict(data: dict[str, Any]) -> PlannerRequest15:
    """A planner request (task "plan", "format" or "understand") from its JSON form."""
    return build_request(data, PLANNER_TASKS_V15, Params15)


def request15_to_dict(request: Request15 | PlannerRequest15) -> dict[str, Any]:
    """JSON-ready dict of a 1.5 request (inverse of :func:`request15_from_dict`)."""
    return request_to_dict(request)  # type: ignore[arg-type]


V15_SCHEMA = RequestSchema(
    name="acestep-v15",
    tasks=TASKS_V15,
    params_cls=Params15,
    from_dict=request15_from_dict,
    to_dict=request15_to_dict,
    common=frozenset(f.name for f in dataclasses.fields(_Request15)),
    text_field="caption",
)
#: the planner's requests, the same conventions (the CLI ``songflow plan`` and the server's planner routes)
V15_PLANNER_SCHEMA = RequestSchema(
    name="acestep-v15-planner",
    tasks=PLANNER_TASKS_V15,
    params_cls=Params15,
    from_dict=planner_request15_from_dict,
    to_dict=request15_to_dict,
    common=frozenset(f.name for f in dataclasses.fields(_PlanFields)),
    text_field="caption",
)
