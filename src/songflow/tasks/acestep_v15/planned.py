"""From a request to the 5 Hz LM planner and back: the planner settings and user metadata of a request, and
each planned song as the plain request the DiT runs (official ``acestep/inference.py`` ``generate_music``
with ``thinking``; the planner itself: :mod:`songflow.tasks.acestep_v15.planner`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from songflow.requests_v15 import (
    BPM_RANGE,
    VALID_KEYSCALES,
    VALID_LANGUAGES,
    VALID_TIME_SIGNATURES,
    Format15,
    Params15,
    Plan15,
    Simple15,
    Text2Music15,
    Understand15,
)
from songflow.sampling.noise import parse_seeds
from songflow.tasks.acestep_v15.planner import PlannerOptions, SongPlan

__all__ = [
    "lm_seeds",
    "needs_plan",
    "planned_request",
    "planner_options",
    "resolve_planner_seeds",
    "user_metadata",
]


def planner_options(params: Params15) -> PlannerOptions:
    """The planner settings of a request's ``lm_*`` / ``use_cot_*`` fields."""
    return PlannerOptions(
        temperature=params.lm_temperature,
        cfg_scale=params.lm_cfg_scale,
        top_k=params.lm_top_k or None,
        top_p=params.lm_top_p,
        repetition_penalty=params.lm_repetition_penalty,
        negative_prompt=params.lm_negative_prompt,
        use_cot_metas=params.use_cot_metas,
        use_cot_caption=params.use_cot_caption,
        use_cot_language=params.use_cot_language,
        constrained=params.constrained_decoding,
        legacy_planner=params.legacy_planner,
    )


def user_metadata(request: Any) -> dict[str, Any]:
    """The metadata the user fixed, in the planner's keys (bpm, keyscale, timesignature, duration as the
    official ``int(duration)``, language). A song request's vocal language is not passed with
    ``legacy_planner`` (the official ``generate_music`` does not) nor when it is ``"unknown"``."""
    duration_s = getattr(request, "duration_s", None)
    values: dict[str, Any] = {
        "bpm": getattr(request, "bpm", None),
        "keyscale": getattr(request, "key_scale", None),
        "timesignature": getattr(request, "time_signature", None),
        "duration": int(duration_s) if duration_s is not None else None,
    }
    language = getattr(request, "vocal_language", None)
    song = isinstance(request, Text2Music15)
    if language not in (None, "unknown") and not (song and request.params.legacy_planner):
        values["language"] = language
    return {k: v for k, v in values.items() if v is not None}


def lm_seeds(request: Any) -> tuple[int, ...]:
    """The planner's seed of each item: ``lm_seeds``, else the request's (resolved) seeds."""
    p = request.params
    given = p.lm_seeds or p.seeds
    return tuple(parse_seeds(list(given) if given else None, p.batch_size))


def _known(value: Any, allowed: Any) -> Any:
    return value if value in allowed else None


def planned_request(request: Any, plan: SongPlan, index: int) -> Text2Music15:
    """Item ``index`` of a planned ``request`` (``think`` text2music/retake, or simple mode) as the plain
    single-song request the DiT runs (official ``generate_music``): the user's bpm/key/time signature/
    duration, the plan's filling the missing ones; the plan's caption with ``use_cot_caption`` (simple
    mode: always); the language per :meth:`SongPlan.dit_language`; the plan's audio codes; ``think`` off,
    so it replays without the LM. Plan values the DiT does not know are dropped (legacy plans)."""
    p = request.params
    seeds, planner_seeds = p.seeds or (), lm_seeds(request)
    params = replace(p, batch_size=1, seeds=(seeds[index],), lm_seeds=(planner_seeds[index],))
    bpm = plan.bpm if plan.bpm is not None and BPM_RANGE[0] <= plan.bpm <= BPM_RANGE[1] else None
    metas = {
        "bpm": getattr(request, "bpm", None) or bpm,
        "key_scale": getattr(request, "key_scale", None) or _known(plan.keyscale, VALID_KEYSCALES),
        "time_signature": getattr(request, "time_signature", None)
        or _known(plan.timesignature, VALID_TIME_SIGNATURES),
    }
    language = plan.dit_language(
        request.vocal_language, use_cot_language=p.use_cot_language, legacy=p.legacy_planner
    )
    language = _known(language, VALID_LANGUAGES) or request.vocal_language
    if isinstance(request, Simple15):
        duration_s = request.duration_s or plan.duration_s or 30.0
        return Text2Music15(
            caption=plan.caption or "", lyrics=plan.lyrics or "", vocal_language=language,
            duration_s=float(duration_s), audio_codes=plan.audio_codes, params=params, **metas,
        )  # fmt: skip
    caption = plan.caption if p.use_cot_caption and plan.caption else request.caption
    extra = {"retake_seeds": (request.retake_seeds[index],)} if hasattr(request, "retake_seeds") else {}
    return replace(
        request, caption=caption, vocal_language=language, think=False, params=params,
        audio_codes=plan.audio_codes or request.audio_codes, **metas, **extra,
    )  # fmt: skip


def needs_plan(request: Any) -> bool:
    return isinstance(request, Simple15) or bool(getattr(request, "think", False))


def resolve_planner_seeds(request: Any) -> Any:
    """``request`` (seeds resolved) with its planner seeds filled in where it uses the planner."""
    if needs_plan(request) or isinstance(request, Plan15 | Format15 | Understand15):
        request = replace(request, params=replace(request.params, lm_seeds=lm_seeds(request)))
    return request
