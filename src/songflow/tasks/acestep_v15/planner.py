"""The ACE-Step 1.5 5 Hz LM planner flows: plan a song (metadata + audio codes), describe one from a free
text (simple mode), tidy a caption and lyrics (format), and read metadata and lyrics back from audio codes
(understand).

Facts: ``../shared/acestep_v15/SPEC.md`` §7, §9.9-9.13; the official ``LLMHandler`` in
``acestep/llm_inference.py`` (``generate_with_stop_condition``, ``_run_pt``, ``create_sample_from_query``,
``format_sample_from_input``, ``understand_audio_from_codes``). Prompts:
``songflow.text.acestep_v15_lm_prompts``; CoT text: ``songflow.text.acestep_v15_plan_text``; grammar:
``songflow.sampling.planner_grammar``; decode loop: ``songflow.sampling.lm_decode``; the LM:
``songflow.models.acestep_v15.lm.PlannerLM``.

**Planning** (:func:`plan_song`) has two phases:

1. *CoT*: the LM writes ``<think>\\nbpm: ..\\ncaption: ..\\nduration: ..\\nkeyscale: ..\\nlanguage: ..\\n
   timesignature: ..`` under the grammar (user values injected, the rest constrained to valid values), never
   with CFG, and stops with EOS where ``</think>`` would come. Skipped when bpm, keyscale, timesignature and
   duration are all given, or with ``use_cot_metas=False``: the metadata are then the user's.
2. *codes*: the metadata as a CoT block (``format_cot``) closes the assistant turn; the LM writes exactly
   ``int(5 * duration)`` audio codes then EOS, with CFG when ``cfg_scale > 1`` (twin: empty CoT).

``legacy_planner=True`` is the official behaviour, bugs included (the fixtures replay it): user metadata
are injected in phase 1 but phase 2 uses only what phase 1's output parses to, so a phase 1 that ends
inside the caption loses the later user fields (SPEC §9.9); the caption may leave its grammar (§9.13);
``target_duration_s`` sets the code count but not the CoT duration; in a batch, phase 1 runs once (generator
``cot_seed``, default ``seeds[0]``) and phase 2 runs row by row, each with a fresh generator of its seed; a
single request's phase 2 continues phase 1's generator (one ``torch.manual_seed`` upstream).

The default (fixed) flow: the grammar's fixed mode (no special token in the caption, the caption cannot
leave its grammar); the user's fields always win (injected in phase 1, re-applied over what it parses,
written into phase 2's CoT); a missing duration is taken from ``target_duration_s``; the code count is
``int(5 * target_duration_s)``, else ``int(5 * duration)`` of the plan; every row runs both phases with its
own generator (``seeds[i]``), batched, so a batch equals its singles.

**What the pipeline does with a plan** (official ``acestep/inference.py`` ``generate_music`` with
``thinking=True``): the user's bpm/keyscale/timesignature/duration are ``user_metadata`` and the duration
is also ``target_duration_s``; the DiT's metas are the user's, the plan's filling the missing ones
(bpm, keyscale, timesignature, duration); the DiT caption is ``plan.caption`` when ``use_cot_caption``
and the plan has one, else the request's; the lyrics stay the request's; the language: see
:meth:`SongPlan.dit_language`. With audio codes the DiT task becomes ``cover`` with the cover instruction
(``TASK_INSTRUCTIONS["cover"]``; ``is_covers = 1``) and its 25 Hz hints are decoded from the codes
(FSQ lookup -> detokenizer), one code list per batch item. Seeds: upstream's LM draws from torch's
global generator as seeded before the call (fixture ``pipeline/turbo_text2music_lm_thinking``: ``lm_seed``
9001, not the DiT seed 77), so a replay passes ``seeds=[lm_seed]``; songflow's pipeline may use the DiT
seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import torch

from songflow.errors import ConfigError
from songflow.requests_v15 import (
    BPM_RANGE,
    MAX_BATCH_V15,
    MAX_CAPTION_CHARS,
    PLAN_DURATION_RANGE_S,
    VALID_KEYSCALES,
    VALID_LANGUAGES,
    VALID_TIME_SIGNATURES,
)
from songflow.sampling.lm_decode import DecodeSettings, DecodeTrace, decode, max_new_tokens_for
from songflow.sampling.planner_grammar import MAX_AUDIO_CODE, PlanGrammar, PlannerVocab
from songflow.text import acestep_v15_lm_prompts as prompts
from songflow.text.acestep_v15_plan_text import codes_from_text, codes_to_text, format_cot, parse_plan_output
from songflow.text.lyric_tokenizer import MAX_LYRICS_CHARS

__all__ = [
    "PLAN_METAS",
    "USER_METADATA_KEYS",
    "PlannerCall",
    "PlannerOptions",
    "PlannerTrace",
    "SongPlan",
    "check_user_metadata",
    "describe_song",
    "format_song",
    "has_all_metas",
    "plan_song",
    "understand_codes",
]

PLAN_METAS = ("bpm", "keyscale", "timesignature", "duration")
"""When the user gives all four, phase 1 is skipped (official ``has_all_metas``)."""
USER_METADATA_KEYS = ("bpm", "duration", "keyscale", "language", "timesignature")
"""The fields a user may fix."""
Phase = Literal["cot", "codes", "understand"]


# ---------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class PlannerOptions:
    """Sampling and flow settings of the planner (the official REST names: ``lm_temperature`` ...).

    ``temperature`` <= 0 is greedy; ``top_k`` None/0 and ``top_p`` None/>= 1 are off; ``cfg_scale`` > 1
    turns CFG on in the codes phase only; ``negative_prompt`` replaces the caption of the CFG twin unless
    it is ``"NO USER INPUT"``; ``use_cot_metas`` False skips phase 1; ``use_cot_caption`` /
    ``use_cot_language`` False skip those CoT fields; ``constrained`` False is refused (the grammar is what
    keeps the metadata valid); ``legacy_planner``: the official behaviour (module docstring);
    ``max_duration_s``: the longest duration the grammar allows (the official GPU tier's; 240 on CPU).
    """

    temperature: float = 0.85
    cfg_scale: float = 2.0
    top_k: int | None = None
    top_p: float | None = 0.9
    repetition_penalty: float = 1.0
    negative_prompt: str = prompts.NO_USER_INPUT
    use_cot_metas: bool = True
    use_cot_caption: bool = True
    use_cot_language: bool = True
    constrained: bool = True
    legacy_planner: bool = False
    max_duration_s: int = PLAN_DURATION_RANGE_S[1]

    def __post_init__(self) -> None:
        if not self.constrained:
            raise ConfigError("the planner needs constrained decoding (constrained_decoding=True)")
        low, high = PLAN_DURATION_RANGE_S
        if not low <= self.max_duration_s <= high:
            raise ConfigError(f"max_duration_s {self.max_duration_s}: give {low}..{high} s")
        _check_text("negative_prompt", self.negative_prompt, MAX_CAPTION_CHARS)
        self.settings(phase="codes", max_new_tokens=1)  # validates the sampling values

    def settings(self, *, phase: Phase, max_new_tokens: int) -> DecodeSettings:
        """The decode settings of one call (CFG only in the codes phase)."""
        top_p = self.top_p if self.top_p is not None and self.top_p < 1.0 else None
        return DecodeSettings(
            temperature=self.temperature,
            top_k=self.top_k or None,
            top_p=top_p,
            repetition_penalty=self.repetition_penalty,
            cfg_scale=self.cfg_scale if phase == "codes" else 1.0,
            max_new_tokens=max_new_tokens,
        )


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SongPlan:
    """What the planner decided for one song (JSON-safe through :meth:`to_dict` / :meth:`from_dict`).

    ``bpm``, ``keyscale`` (e.g. ``"E minor"``), ``timesignature`` (``"2"``/``"3"``/``"4"``/``"6"``: beats per
    bar), ``duration_s`` (seconds), ``language`` (code, e.g. ``"en"``), ``caption``: the metadata of the
    plan (None = not planned; the user's where given, except with ``legacy_planner``); ``caption`` is the
    LM's caption (None when it wrote none). ``lyrics``: the song's lyrics (plan_song: the request's;
    describe/format/understand: the LM's). ``audio_codes``: the 5 Hz codes (``int(5 * duration_s)`` of them;
    None when not generated). ``seed``: the row's seed. ``raw_text``: the LM's CoT output (phase 1 or the
    free-text answer; ``""`` when phase 1 was skipped). ``cot_text``: the CoT block phase 2 read.
    """

    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    duration_s: float | None = None
    language: str | None = None
    caption: str | None = None
    lyrics: str | None = None
    audio_codes: tuple[int, ...] | None = None
    seed: int | None = None
    raw_text: str = ""
    cot_text: str = ""

    def metadata(self) -> dict[str, Any]:
        """The non-None metadata as the official planner returns them (``duration`` an int when whole)."""
        duration: float | int | None = self.duration_s
        if duration is not None and float(duration).is_integer():
            duration = int(duration)
        values = {
            "bpm": self.bpm, "caption": self.caption, "duration": duration, "keyscale": self.keyscale,
            "language": self.language, "timesignature": self.timesignature,
        }  # fmt: skip
        return {k: v for k, v in values.items() if v is not None}

    def dit_language(
        self, requested: str | None, *, use_cot_language: bool, legacy: bool = False
    ) -> str | None:
        """The DiT's vocal language: the request's unless it is unset/``"unknown"`` and ``use_cot_language``
        (then the plan's). Official: never the plan's (``generate_music`` reads a ``vocal_language`` key
        the planner does not write), kept with ``legacy``."""
        if legacy or not use_cot_language or (requested and requested != "unknown"):
            return requested
        return self.language or requested

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (codes as a list)."""
        out = asdict(self)
        out["audio_codes"] = list(self.audio_codes) if self.audio_codes is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SongPlan:
        """Inverse of :meth:`to_dict`; unknown keys or wrong types raise ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown song plan fields {unknown}; known: {sorted(known)}")
        values = dict(data)
        codes = values.get("audio_codes")
        if codes is not None:
            if not isinstance(codes, list | tuple) or not all(_is_int(c) and c >= 0 for c in codes):
                raise ConfigError("song plan audio_codes must be a list of integers >= 0")
            values["audio_codes"] = tuple(int(c) for c in codes)
        plan = cls(**values)
        _check_plan_types(plan)
        return plan


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_plan_types(plan: SongPlan) -> None:
    for name, kinds in (("bpm", (int,)), ("seed", (int,)), ("duration_s", (int, float))):
        value = getattr(plan, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise ConfigError(f"song plan {name} must be a number or null (got {value!r})")
    for name in ("keyscale", "timesignature", "language", "caption", "lyrics", "raw_text", "cot_text"):
        value = getattr(plan, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"song plan {name} must be text or null (got {value!r})")


# ---------------------------------------------------------------------------------------------- tracing


@dataclass
class PlannerCall:
    """One decode call of a flow: its phase, prompt ids per row (and CFG twins), settings, the new tokens
    per row (stop token included), their text, and the per-step record when asked for."""

    phase: Phase
    prompts: list[list[int]]
    uncond_prompts: list[list[int]] | None
    settings: DecodeSettings
    outputs: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    steps: DecodeTrace | None = None


@dataclass
class PlannerTrace:
    """Records every decode call of a flow (tests, ``--verbose``). ``record_steps``: keep a
    :class:`DecodeTrace` per call (``steps_top`` values per row, None = whole vectors; full LM head).
    ``force``: per call index, tokens per row to take instead of sampling (teacher forcing)."""

    record_steps: bool = False
    steps_top: int | None = None
    force: Sequence[Sequence[Sequence[int]] | None] = ()
    calls: list[PlannerCall] = field(default_factory=list)

    def forced(self) -> Sequence[Sequence[int]] | None:
        index = len(self.calls)
        return self.force[index] if index < len(self.force) else None


# ---------------------------------------------------------------------------------------------- inputs


def _check_text(name: str, text: Any, limit: int) -> str:
    if not isinstance(text, str):
        raise ConfigError(f"{name} must be text (got {type(text).__name__})")
    if len(text) > limit:
        raise ConfigError(f"{name} has {len(text)} characters; shorten it to at most {limit}")
    return text


def _whole_number(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number (got {value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number (got {value!r})") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number (got {value!r})")
    return int(number)


def _check_range(name: str, value: int | float, low: float, high: float, unit: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(
            f"{name} {value}{unit} is outside {low:g}..{high:g}{unit}; give a value in that range"
        )


def _time_signature(value: Any) -> str:
    text = str(value).strip()
    beats = {"2/4": "2", "3/4": "3", "4/4": "4", "6/8": "6"}.get(text, text)
    if beats not in VALID_TIME_SIGNATURES:
        raise ConfigError(
            f"timesignature {value!r} is not known; use one of {list(VALID_TIME_SIGNATURES)} "
            "(or 2/4, 3/4, 4/4, 6/8)"
        )
    return beats


def _check_field(key: str, value: Any, max_duration_s: int) -> Any:
    """One user field checked; returns its normalised value (bpm/duration int, time signature "N")."""
    if key == "bpm":
        bpm = _whole_number("bpm", value)
        _check_range("bpm", bpm, *BPM_RANGE)
        return bpm
    if key == "duration":
        duration = _whole_number("duration", value)
        _check_range("duration", duration, PLAN_DURATION_RANGE_S[0], max_duration_s, " s")
        return duration
    if key == "keyscale":
        if not isinstance(value, str) or value.strip() not in VALID_KEYSCALES:
            raise ConfigError(f"keyscale {value!r} is not known; use e.g. 'C major', 'F# minor', 'B♭ major'")
        return value.strip()
    if key == "timesignature":
        return _time_signature(value)
    if not isinstance(value, str) or value.strip() not in VALID_LANGUAGES:
        raise ConfigError(f"language {value!r} is not known; use one of {list(VALID_LANGUAGES)}")
    return value.strip()


def check_user_metadata(
    user_metadata: Mapping[str, Any] | None, *, max_duration_s: int = 600
) -> dict[str, Any]:
    """The user's fixed fields checked and normalised (None values dropped): bpm 30..300 (int), duration
    10..``max_duration_s`` s (int), keyscale one of the 70 names, timesignature 2/3/4/6 (``"N"``; ``"4/4"``
    accepted), language a known code. Raises ConfigError saying what to change."""
    if user_metadata is None:
        return {}
    if not isinstance(user_metadata, Mapping):
        raise ConfigError("user_metadata must be a mapping of field -> value")
    unknown = sorted(set(user_metadata) - set(USER_METADATA_KEYS))
    if unknown:
        raise ConfigError(f"unknown metadata fields {unknown}; the planner takes {list(USER_METADATA_KEYS)}")
    return {
        key: _check_field(key, value, max_duration_s)
        for key, value in user_metadata.items()
        if value is not None and not (isinstance(value, str) and value.strip() in ("", "N/A", "n/a"))
    }


def has_all_metas(metadata: Mapping[str, Any]) -> bool:
    """True when bpm, keyscale, timesignature and duration are all given (phase 1 is then skipped)."""
    return all(metadata.get(key) is not None for key in PLAN_METAS)


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("the planner needs at least one seed (one per song)")
    if len(seeds) > MAX_BATCH_V15:
        raise ConfigError(f"{len(seeds)} seeds: plan at most {MAX_BATCH_V15} songs at once")
    for seed in seeds:
        if not _is_int(seed) or not 0 <= seed < 2**64:  # what torch generators accept
            raise ConfigError(f"seed {seed!r}: give an integer in 0..2**64-1")
    return seeds


def _check_target(target_duration_s: float | None, max_duration_s: int) -> float | None:
    if target_duration_s is None:
        return None
    if isinstance(target_duration_s, bool) or not isinstance(target_duration_s, int | float):
        raise ConfigError(f"target duration must be a number of seconds (got {target_duration_s!r})")
    _check_range("target duration", float(target_duration_s), PLAN_DURATION_RANGE_S[0], max_duration_s, " s")
    return float(target_duration_s)


# ---------------------------------------------------------------------------------------------- LM plumbing


class _FreeTextAfterCot:
    """The grammar of the understand/simple/format answers (official ``generation_phase="understand"``):
    the CoT block under ``PlanGrammar``, then, after ``</think>``, free text in which only the audio codes
    are forbidden."""

    def __init__(self, inner: PlanGrammar, vocab: PlannerVocab):
        self.inner = inner
        self.code_ids = vocab.audio_code_ids
        self.free = False

    def codes_only(self) -> torch.Tensor | None:
        return None

    def constrain(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.free:
            return self.inner.constrain(scores)
        scores[self.code_ids.to(scores.device)] = float("-inf")
        return scores

    def advance(self, token_id: int) -> None:
        if self.free:
            return
        self.inner.advance(token_id)
        self.free = self.inner.codes_only() is not None

    @property
    def finished(self) -> bool:
        return self.inner.finished and not self.free


def _vocab(lm: Any) -> PlannerVocab:
    return PlannerVocab.from_tokenizer(lm.tokenizer)  # cached per tokenizer


def _render(lm: Any) -> prompts.Render:
    return prompts.chat_renderer(lm.tokenizer)


def _encode(lm: Any, text: str) -> list[int]:
    """Prompt text -> ids, tokenized as upstream (no padding; the chat template wrote the special tokens)."""
    return [int(i) for i in lm.tokenizer(text, padding=False)["input_ids"]]


def _budget(lm: Any, target_duration_s: float | None, phase: Phase, max_duration_s: int) -> int:
    """Official token budget of one call (phase 1 / free text: the model's fallback, 4096 - 64)."""
    fallback = getattr(lm.config, "max_new_tokens", None) or 4096
    budget_phase: Literal["cot", "codes"] = "codes" if phase == "codes" else "cot"
    return max_new_tokens_for(
        target_duration_s, budget_phase, max_duration_s=max_duration_s, fallback=fallback
    )


def _check_context(lm: Any, rows: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    limit = getattr(lm.config, "max_position_embeddings", None)
    longest = max(len(r) for r in rows)
    if limit is not None and longest + max_new_tokens > int(limit):
        raise ConfigError(
            f"the LM prompt has {longest} tokens and may write {max_new_tokens} more, over the LM's "
            f"{limit}-token context; shorten the caption/lyrics (or the audio for understand)"
        )


def _generator(lm: Any, seed: int) -> torch.Generator:
    generator = torch.Generator(device=lm.device)
    generator.manual_seed(seed)
    return generator


def _run(
    lm: Any,
    phase: Phase,
    texts: Sequence[str],
    uncond_texts: Sequence[str] | None,
    grammars: Sequence[Any],
    settings: DecodeSettings,
    generators: Sequence[torch.Generator | None],
    trace: PlannerTrace | None,
) -> list[str]:
    """One decode call over the rows ``texts``; returns each row's output text (special tokens kept)."""
    ids = [_encode(lm, t) for t in texts]
    uncond = (
        [_encode(lm, t) for t in uncond_texts] if uncond_texts is not None and settings.uses_cfg else None
    )
    _check_context(lm, ids + (uncond or []), settings.max_new_tokens)
    steps = DecodeTrace(top=trace.steps_top) if trace is not None and trace.record_steps else None
    outputs = decode(
        lm,
        ids,
        uncond_prompts=uncond,
        grammars=grammars,
        settings=settings,
        generators=generators,
        force_tokens=trace.forced() if trace is not None else None,
        trace=steps,
    )
    out_texts = [str(lm.tokenizer.decode(o, skip_special_tokens=False)) for o in outputs]
    if trace is not None:
        trace.calls.append(PlannerCall(phase, ids, uncond, settings, outputs, out_texts, steps))
    return out_texts


def _grammar(
    lm: Any,
    phase: Phase,
    *,
    user: Mapping[str, Any] | None = None,
    skip_caption: bool = True,
    skip_language: bool = True,
    target_codes: int | None = None,
    options: PlannerOptions,
) -> Any:
    vocab = _vocab(lm)
    inner = PlanGrammar(
        vocab,
        lm.tokenizer,
        phase="codes" if phase == "codes" else "cot",
        user_metadata=user or None,
        skip_caption=skip_caption,
        skip_language=skip_language,
        skip_genres=True,
        stop_at_reasoning=phase == "cot",
        target_codes=target_codes,
        max_duration_s=options.max_duration_s,
        legacy=options.legacy_planner,
    )
    return _FreeTextAfterCot(inner, vocab) if phase == "understand" else inner


def _plan_from(
    metadata: Mapping[str, Any], *, lyrics: str | None, seed: int | None, raw_text: str, cot_text: str = ""
) -> SongPlan:
    """A SongPlan from parsed/official-style metadata (values that are not of the field's type dropped)."""

    def number(key: str) -> Any:
        value = metadata.get(key)
        return value if _is_int(value) or (key == "duration" and isinstance(value, float)) else None

    def text(key: str) -> str | None:
        value = metadata.get(key)
        return str(value) if value is not None and not isinstance(value, dict | list) else None

    duration = number("duration")
    return SongPlan(
        bpm=number("bpm"),
        keyscale=text("keyscale"),
        timesignature=text("timesignature"),
        duration_s=float(duration) if duration is not None else None,
        language=text("language"),
        caption=text("caption"),
        lyrics=lyrics,
        seed=seed,
        raw_text=raw_text,
        cot_text=cot_text,
    )


def _valid_parsed(parsed: Mapping[str, Any], max_duration_s: int) -> dict[str, Any]:
    """The parsed CoT fields that are valid (normalised like user fields) plus a non-empty caption."""
    kept: dict[str, Any] = {}
    for key in USER_METADATA_KEYS:
        if parsed.get(key) is None:
            continue
        try:
            kept[key] = _check_field(key, parsed[key], max_duration_s)
        except ConfigError:
            continue
    caption = parsed.get("caption")
    if isinstance(caption, str) and caption.strip():
        kept["caption"] = caption
    return kept


def _n_codes(duration_s: float | None) -> int | None:
    return int(duration_s * 5) if duration_s is not None and duration_s > 0 else None


# ---------------------------------------------------------------------------------------------- planning


def plan_song(
    lm: Any,
    *,
    caption: str,
    lyrics: str,
    user_metadata: Mapping[str, Any] | None,
    target_duration_s: float | None,
    options: PlannerOptions,
    seeds: Sequence[int],
    with_codes: bool = True,
    trace: PlannerTrace | None = None,
    cot_seed: int | None = None,
) -> list[SongPlan]:
    """Plan ``len(seeds)`` songs for one caption and lyrics (official ``generate_with_stop_condition``,
    ``infer_type="llm_dit"``, or ``"dit"`` with ``with_codes=False``): one :class:`SongPlan` per seed.

    Args:
        lm: the 5 Hz LM (``PlannerLM``: ``tokenizer``, ``config``, ``device`` + the decode methods).
        caption, lyrics: the request's text (at most 4096 / ``MAX_LYRICS_CHARS`` characters).
        user_metadata: the fields the user fixed (:data:`USER_METADATA_KEYS`, see
            :func:`check_user_metadata`).
        target_duration_s: the song length, seconds (10..``options.max_duration_s``): the code count is
            ``int(5 * target_duration_s)``; None: the plan's duration decides (legacy: only the budget).
        options: sampling and flow settings (``legacy_planner``: the official behaviour).
        seeds: one per song (0..2**64-1, at most 16).
        with_codes: False stops after phase 1 (metadata only).
        trace: records every decode call (tests, ``--verbose``).
        cot_seed: legacy batches only: the seed of the shared phase 1 (default ``seeds[0]``).
    """
    caption = _check_text("caption", caption, MAX_CAPTION_CHARS)
    lyrics = _check_text("lyrics", lyrics, MAX_LYRICS_CHARS)
    seeds = _check_seeds(seeds)
    user = check_user_metadata(user_metadata, max_duration_s=options.max_duration_s)
    target = _check_target(target_duration_s, options.max_duration_s)
    if cot_seed is not None:
        _check_seeds([cot_seed])
    request = _PlanRequest(caption, lyrics, target, options, seeds, with_codes, trace)
    if options.legacy_planner:
        as_given = {k: v for k, v in (user_metadata or {}).items() if k in user}
        return _plan_legacy(lm, request, as_given, seeds[0] if cot_seed is None else cot_seed)
    return _plan_fixed(lm, request, user)


@dataclass(frozen=True)
class _PlanRequest:
    caption: str
    lyrics: str
    target_s: float | None
    options: PlannerOptions
    seeds: list[int]
    with_codes: bool
    trace: PlannerTrace | None

    def run_cot(self, lm: Any, user: Mapping[str, Any], generators: Sequence[torch.Generator]) -> list[str]:
        """Phase 1 for ``len(generators)`` rows (same prompt); their output texts."""
        opts = self.options
        grammars = [
            _grammar(lm, "cot", user=user, skip_caption=not opts.use_cot_caption,
                     skip_language=not opts.use_cot_language, options=opts)
            for _ in generators
        ]  # fmt: skip
        settings = opts.settings(phase="cot", max_new_tokens=_budget(lm, None, "cot", opts.max_duration_s))
        text = prompts.cot_prompt(_render(lm), self.caption, self.lyrics)
        return _run(lm, "cot", [text] * len(generators), None, grammars, settings, generators, self.trace)

    def run_codes(
        self, lm: Any, cot_texts: Sequence[str], targets_s: Sequence[float | None], generators: Sequence[Any]
    ) -> list[tuple[int, ...]]:
        """Phase 2 for one row per CoT text; the codes of each row."""
        opts, render = self.options, _render(lm)
        budget = max(_budget(lm, t, "codes", opts.max_duration_s) for t in targets_s)
        settings = opts.settings(phase="codes", max_new_tokens=budget)
        grammars = [_grammar(lm, "codes", target_codes=_n_codes(t), options=opts) for t in targets_s]
        conds = [prompts.codes_prompt(render, self.caption, self.lyrics, cot) for cot in cot_texts]
        uncond = prompts.codes_uncond_prompt(render, self.caption, self.lyrics, opts.negative_prompt)
        texts = _run(lm, "codes", conds, [uncond] * len(conds), grammars, settings, generators, self.trace)
        return [tuple(codes_from_text(t)) for t in texts]


def _plan_legacy(lm: Any, request: _PlanRequest, user: Mapping[str, Any], cot_seed: int) -> list[SongPlan]:
    """The official flow, bugs included (module docstring)."""
    opts, seeds = request.options, request.seeds
    cot_generator = _generator(lm, cot_seed)
    raw_text = ""
    if opts.use_cot_metas and not has_all_metas(user):
        raw_text = request.run_cot(lm, user, [cot_generator])[0]
        metadata = parse_plan_output(raw_text)[0]
    else:
        metadata = dict(user)
    plans = [_plan_from(metadata, lyrics=request.lyrics, seed=s, raw_text=raw_text) for s in seeds]
    if not request.with_codes:
        return plans
    cot_text = format_cot(metadata)
    out = []
    for plan, seed in zip(plans, seeds, strict=True):
        generator = _generator(lm, seed) if len(seeds) > 1 else cot_generator
        codes = request.run_codes(lm, [cot_text], [request.target_s], [generator])[0]
        out.append(replace(plan, audio_codes=codes, cot_text=cot_text))
    return out


def _plan_fixed(lm: Any, request: _PlanRequest, user: Mapping[str, Any]) -> list[SongPlan]:
    """The fixed flow: user fields win, every row runs both phases with its own generator, batched."""
    opts, seeds = request.options, request.seeds
    user = dict(user)
    if request.target_s is not None and "duration" not in user:
        user["duration"] = int(request.target_s)
    generators = [_generator(lm, s) for s in seeds]
    raw_texts = [""] * len(seeds)
    metadatas = [dict(user) for _ in seeds]
    if opts.use_cot_metas and not has_all_metas(user):
        raw_texts = request.run_cot(lm, user, generators)
        metadatas = [
            {**_valid_parsed(parse_plan_output(t)[0], opts.max_duration_s), **user} for t in raw_texts
        ]
    plans = [
        _plan_from(m, lyrics=request.lyrics, seed=s, raw_text=t)
        for m, s, t in zip(metadatas, seeds, raw_texts, strict=True)
    ]
    if not request.with_codes:
        return plans
    targets = [request.target_s if request.target_s is not None else m.get("duration") for m in metadatas]
    if any(t is None for t in targets):
        raise ConfigError(
            "the audio codes need a song duration: give one (duration / target duration) or let the LM "
            "plan it (use_cot_metas=True)"
        )
    cot_texts = [format_cot(m) for m in metadatas]
    codes = request.run_codes(lm, cot_texts, targets, generators)
    return [
        replace(p, audio_codes=c, cot_text=cot) for p, c, cot in zip(plans, codes, cot_texts, strict=True)
    ]


# ---------------------------------------------------------------------------------------------- other uses


def _answer(
    lm: Any,
    prompt_text: str,
    *,
    user: Mapping[str, Any],
    skip_language: bool,
    options: PlannerOptions,
    seed: int,
    trace: PlannerTrace | None,
) -> tuple[dict[str, Any], str, str]:
    """One free-text answer (CoT then lyrics; official ``generation_phase="understand"``, no CFG; genres
    skipped, unlike upstream, which constrains them to its ``genres_vocab.txt``): (metadata, lyrics, raw
    text). Fixed mode: parsed fields validated, the user's win, a trailing pad token leaves the lyrics."""
    _check_seeds([seed])
    grammar = _grammar(
        lm, "understand", user=user, skip_caption=False, skip_language=skip_language, options=options
    )
    settings = options.settings(phase="understand", max_new_tokens=_budget(lm, None, "understand", 600))
    text = _run(lm, "understand", [prompt_text], None, [grammar], settings, [_generator(lm, seed)], trace)[0]
    metadata = parse_plan_output(text)[0]
    if options.legacy_planner:
        return metadata, prompts.extract_lyrics(text), text
    metadata = {**_valid_parsed(metadata, options.max_duration_s), **user}
    stops = [str(lm.tokenizer.decode([i], skip_special_tokens=False)) for i in (lm.eos_id, lm.pad_id)]
    return metadata, prompts.extract_lyrics(text, stops), text


def describe_song(
    lm: Any,
    description: str,
    *,
    instrumental: bool,
    vocal_language: str | None,
    options: PlannerOptions,
    seed: int,
    trace: PlannerTrace | None = None,
) -> SongPlan:
    """Simple mode (official ``create_sample_from_query``): a free description (at most
    ``MAX_DESCRIPTION_CHARS``; blank = ``"NO USER INPUT"``) -> caption, metadata and lyrics (no codes).
    ``vocal_language`` (a known code; None/``"unknown"``: the LM chooses) is injected. Lyrics: the LM's,
    else ``"[Instrumental]"`` when ``instrumental``."""
    description = _check_text("description", description, prompts.MAX_DESCRIPTION_CHARS)
    if not description.strip():
        description = prompts.NO_USER_INPUT
    user: dict[str, Any] = {}
    if vocal_language is not None and vocal_language.strip() and vocal_language.strip().lower() != "unknown":
        user = check_user_metadata({"language": vocal_language}, max_duration_s=options.max_duration_s)
    text = prompts.inspiration_prompt(_render(lm), description, bool(instrumental))
    metadata, lyrics, raw = _answer(
        lm, text, user=user, skip_language=False, options=options, seed=seed, trace=trace
    )
    if not lyrics and instrumental:
        lyrics = "[Instrumental]"
    return _plan_from(metadata, lyrics=lyrics or None, seed=seed, raw_text=raw)


def format_song(
    lm: Any,
    *,
    caption: str,
    lyrics: str,
    user_metadata: Mapping[str, Any] | None,
    options: PlannerOptions,
    seed: int,
    trace: PlannerTrace | None = None,
) -> SongPlan:
    """Format (official ``format_sample_from_input``): the user's caption (blank = ``"NO USER INPUT"``)
    and lyrics (blank = ``"[Instrumental]"``) -> a richer caption, metadata and tidied lyrics (the
    given ones when the LM writes none); ``user_metadata`` fields are injected (a given language is not
    generated)."""
    caption = _check_text("caption", caption, MAX_CAPTION_CHARS)
    lyrics = _check_text("lyrics", lyrics, MAX_LYRICS_CHARS)
    caption = caption if caption.strip() else prompts.NO_USER_INPUT
    lyrics = lyrics if lyrics.strip() else "[Instrumental]"
    user = check_user_metadata(user_metadata, max_duration_s=options.max_duration_s)
    text = prompts.format_prompt(_render(lm), caption, lyrics)
    skip_language = "language" in user
    metadata, new_lyrics, raw = _answer(
        lm, text, user=user, skip_language=skip_language, options=options, seed=seed, trace=trace
    )
    return _plan_from(metadata, lyrics=new_lyrics or lyrics, seed=seed, raw_text=raw)


def understand_codes(
    lm: Any, codes: Sequence[int], *, options: PlannerOptions, seed: int, trace: PlannerTrace | None = None
) -> SongPlan:
    """Understand (official ``understand_audio_from_codes``; its default temperature is 0.3): 5 Hz audio
    codes (0..63999, at most 5 per second of ``PLAN_DURATION_RANGE_S[1]``) -> caption, metadata and lyrics.
    The returned plan carries the given codes."""
    codes = [int(c) for c in codes]
    if not codes:
        raise ConfigError("understand needs audio codes; encode some audio first (it gave none)")
    if len(codes) > 5 * PLAN_DURATION_RANGE_S[1]:
        raise ConfigError(
            f"{len(codes)} audio codes: understand reads at most {5 * PLAN_DURATION_RANGE_S[1]} (600 s)"
        )
    if min(codes) < 0 or max(codes) > MAX_AUDIO_CODE:
        raise ConfigError(f"audio codes must be within 0..{MAX_AUDIO_CODE}")
    text = prompts.understand_prompt(_render(lm), codes_to_text(codes))
    metadata, lyrics, raw = _answer(
        lm, text, user={}, skip_language=False, options=options, seed=seed, trace=trace
    )
    return replace(
        _plan_from(metadata, lyrics=lyrics or None, seed=seed, raw_text=raw), audio_codes=tuple(codes)
    )
