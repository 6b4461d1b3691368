"""What every task shares: conditions, the guided velocity, and the ``Plan`` run by the one sampling loop.

A task builds a :class:`Plan` — initial latents, a sigma schedule, a guided velocity function, a stepper,
optional per-step noise, projection and finalisation — and :func:`run_plan` runs it through
``songflow.sampling.loop.sample``. Conditions are encoded once per request (:func:`encode_conditions`);
the null ("unconditional") condition and ERG live here, not in the model or the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from songflow.models.acestep_v1.transformer import Conditions
from songflow.sampling.guidance import (
    GuidanceKind,
    GuidanceRule,
    double_condition,
    guidance_rule,
    guidance_scale_at,
)
from songflow.sampling.loop import GuidedVelocityFn, sample
from songflow.sampling.steppers import Stepper


class DiffusionModel(Protocol):
    """What a task needs from the DiT (``songflow.models.acestep_v1.transformer.ACEStepTransformer``)."""

    def encode(
        self,
        text_states: Tensor,
        text_mask: Tensor,
        speaker_embeds: Tensor,
        lyric_ids: Tensor,
        lyric_mask: Tensor,
        *,
        lyric_query_scale: dict[int, float] | None = None,
    ) -> Conditions: ...

    def __call__(
        self, x: Tensor, sigma: Tensor, cond: Conditions, *, query_scale: dict | None = None
    ) -> Tensor: ...


@dataclass(frozen=True)
class ErgLayers:
    """Where "energy-based" ERG weakens attention for the null condition (docs/reference_behaviour.md#r6).

    Indices are absolute, as in the reference (UMT5 blocks 8,9; lyric Conformer blocks 4,5; DiT blocks
    15..19); indices a smaller model lacks are skipped. ``tau`` scales the query projections.
    """

    text_blocks: tuple[int, ...] = (8, 9)
    lyric_blocks: tuple[int, ...] = (4, 5)
    dit_blocks: tuple[int, ...] = (15, 16, 17, 18, 19)
    tau: float = 0.01

    def scale_for(self, blocks: tuple[int, ...], n_blocks: int) -> dict[int, float]:
        return {i: self.tau for i in blocks if i < n_blocks}


@dataclass(frozen=True)
class ErgFlags:
    use_erg_tag: bool = True
    use_erg_lyric: bool = True
    use_erg_diffusion: bool = True


@dataclass
class ConditionSet:
    """Encoded conditions for one request (each [B, S, D] with the conditional mask).

    ``uncond`` is the null condition, ``text_only`` the tags-without-lyrics condition of double-condition
    guidance; ``uncond_query_scale`` is the ERG-diffusion query scale of the unconditional DiT pass.
    """

    cond: Conditions
    uncond: Conditions | None = None
    text_only: Conditions | None = None
    uncond_query_scale: dict[int, float] | None = None


@dataclass(frozen=True)
class TextInputs:
    """Encoder inputs of one request, already repeated to the batch.

    text_states [B, Lt, Dt], text_mask [B, Lt]; text_states_erg the ERG-tag text states (or None);
    speaker_embeds [B, Ds]; lyric_ids / lyric_mask [B, Ll] long.
    """

    text_states: Tensor
    text_mask: Tensor
    speaker_embeds: Tensor
    lyric_ids: Tensor
    lyric_mask: Tensor
    text_states_erg: Tensor | None = None


def encode_conditions(
    model: DiffusionModel,
    inputs: TextInputs,
    *,
    erg: ErgFlags,
    need_uncond: bool,
    need_text_only: bool,
    layers: ErgLayers = ErgLayers(),
    n_lyric_blocks: int,
    n_dit_blocks: int,
) -> ConditionSet:
    """Encode the conditional, null and text-only conditions as officially (docs/reference_behaviour.md#r6).

    Null condition: with ERG-lyric, the real lyrics under the weakened lyric encoder and the ERG-tag text
    states (zeros without ERG-tag); without ERG-lyric, zero text states and all-zero lyric ids with the
    lyric mask kept at 1 (docs/reference_behaviour.md#r7).
    """
    i = inputs
    cond = model.encode(i.text_states, i.text_mask, i.speaker_embeds, i.lyric_ids, i.lyric_mask)
    out = ConditionSet(cond=cond)
    lyric_scale = layers.scale_for(layers.lyric_blocks, n_lyric_blocks)
    zero_ids = torch.zeros_like(i.lyric_ids)
    if need_uncond:
        if erg.use_erg_lyric:
            text_null = i.text_states_erg if erg.use_erg_tag and i.text_states_erg is not None else None
            if text_null is None:
                text_null = torch.zeros_like(i.text_states)
            out.uncond = model.encode(
                text_null,
                i.text_mask,
                i.speaker_embeds,
                i.lyric_ids,
                i.lyric_mask,
                lyric_query_scale=lyric_scale,
            )
        else:
            out.uncond = model.encode(
                torch.zeros_like(i.text_states), i.text_mask, i.speaker_embeds, zero_ids, i.lyric_mask
            )
        if erg.use_erg_diffusion:
            out.uncond_query_scale = layers.scale_for(layers.dit_blocks, n_dit_blocks)
    if need_text_only:
        if erg.use_erg_lyric:
            out.text_only = model.encode(
                i.text_states,
                i.text_mask,
                i.speaker_embeds,
                i.lyric_ids,
                i.lyric_mask,
                lyric_query_scale=lyric_scale,
            )
        else:
            out.text_only = model.encode(i.text_states, i.text_mask, i.speaker_embeds, zero_ids, i.lyric_mask)
    return out


@dataclass(frozen=True)
class GuidanceSpec:
    """Guidance settings of one run (docs/reference_behaviour.md#r13).

    ``n_steps`` is the N the guidance interval is computed on; ``step_of_eval`` maps a model-evaluation
    index to the index the interval and CFG-Zero* use (identity for the reference behaviour).
    """

    kind: GuidanceKind = "apg"
    scale: float = 15.0
    interval: float = 0.5
    decay: float = 0.0
    min_scale: float = 3.0
    scale_text: float = 0.0
    scale_lyric: float = 0.0
    n_steps: int = 60
    step_of_eval: Callable[[int], int] = field(default=lambda k: k)

    @property
    def uses_guidance(self) -> bool:
        return self.scale not in (0.0, 1.0)

    @property
    def uses_double_condition(self) -> bool:
        return self.uses_guidance and self.scale_text > 1.0 and self.scale_lyric > 1.0

    @property
    def rule(self) -> GuidanceRule:
        """The registry entry of ``kind``; an unknown kind raises :class:`~songflow.errors.ConfigError`."""
        return guidance_rule(self.kind)

    def scale_at(self, index: int) -> float | None:
        """Guidance scale at interval index ``index`` (already mapped by ``step_of_eval``), None: unguided."""
        if not self.uses_guidance:
            return None
        return guidance_scale_at(
            index,
            self.n_steps,
            self.scale,
            interval=self.interval,
            decay=self.decay,
            min_scale=self.min_scale,
        )


def stack_conditions(conds: list[Conditions], mask: Tensor) -> Conditions:
    """Stack conditions along the batch; every pass uses the conditional mask (reference behaviour)."""
    return Conditions(states=torch.cat([c.states for c in conds]), mask=mask.repeat(len(conds), 1))


def _query_scale_rows(scales: list[dict[int, float] | None], batch: int, like: Tensor) -> dict | None:
    """Per-row ERG query scales for a batched call: {block: Tensor[len(scales)*batch, 1, 1]}."""
    blocks = sorted({b for s in scales if s for b in s})
    if not blocks:
        return None
    out = {}
    for b in blocks:
        col = [(s or {}).get(b, 1.0) for s in scales]
        out[b] = (
            torch.tensor(col, dtype=like.dtype, device=like.device).repeat_interleave(batch).view(-1, 1, 1)
        )
    return out


PassFn = Callable[[Tensor, Tensor, list[str]], dict[str, Tensor]]
"""``passes(x, sigma, names) -> {name: v float32}`` for names among ``cond``, ``uncond``, ``text_only``."""


def _model_passes(
    model: DiffusionModel, conds: ConditionSet, model_dtype: torch.dtype, batch_passes: bool
) -> PassFn:
    """The model passes of one evaluation, batched into one call when ``batch_passes``; every pass uses the
    conditional mask (reference behaviour)."""
    table = {
        "cond": (conds.cond, None),
        "uncond": (conds.uncond, conds.uncond_query_scale),
        "text_only": (conds.text_only, None),
    }

    def condition(name: str) -> Conditions:
        c = table[name][0]
        if c is None:
            raise ValueError(f"the {name!r} condition of this run was not encoded")
        return c

    def passes(x: Tensor, sigma: Tensor, names: list[str]) -> dict[str, Tensor]:
        xm = x.to(model_dtype)
        if batch_passes and len(names) > 1:
            b = x.shape[0]
            cond = stack_conditions([condition(n) for n in names], conds.cond.mask)
            qs = _query_scale_rows([table[n][1] for n in names], b, xm)
            v = model(xm.repeat(len(names), 1, 1, 1), sigma.repeat(len(names)), cond, query_scale=qs)
            return {n: part.float() for n, part in zip(names, v.split(b), strict=True)}
        out = {}
        for n in names:
            c = condition(n)
            if c is not conds.cond:
                c = Conditions(states=c.states, mask=conds.cond.mask)
            out[n] = model(xm, sigma, c, query_scale=table[n][1]).float()
        return out

    return passes


def build_velocity(
    model: DiffusionModel,
    conds: ConditionSet,
    spec: GuidanceSpec,
    *,
    model_dtype: torch.dtype = torch.float32,
    batch_passes: bool = True,
    on_eval: Callable[[int, dict[str, Tensor]], None] | None = None,
) -> GuidedVelocityFn:
    """The guided velocity ``(x [B,8,16,L] float32, sigma [B], eval_index) -> v`` for one sampling run.

    Inside the guidance interval it runs the conditional pass plus the null (and text-only) passes —
    batched into one model call when ``batch_passes`` — and combines them with the combinator of
    ``spec.kind`` from the guidance registry (CFG, APG, CFG-Zero*) or with double-condition guidance;
    outside it runs the conditional pass only. An unknown kind raises
    :class:`~songflow.errors.ConfigError` here, before sampling. The guidance state (APG momentum) is
    created here, so it lives exactly one run. ``on_eval`` receives the raw passes (for tests/inspection).
    """
    rule = spec.rule
    state = rule.initial_state()
    passes = _model_passes(model, conds, model_dtype, batch_passes)

    def velocity(x: Tensor, sigma: Tensor, eval_index: int) -> Tensor:
        nonlocal state
        index = spec.step_of_eval(eval_index)
        scale = spec.scale_at(index) if conds.uncond is not None else None
        if scale is None:
            v = passes(x, sigma, ["cond"])
            if on_eval is not None:
                on_eval(eval_index, v)
            return v["cond"]
        if spec.uses_double_condition:
            v = passes(x, sigma, ["cond", "text_only", "uncond"])
            out = double_condition(v["cond"], v["text_only"], v["uncond"], spec.scale_text, spec.scale_lyric)
        else:
            v = passes(x, sigma, ["cond", "uncond"])
            out, state = rule.combine(v["cond"], v["uncond"], scale, index, state)
        if on_eval is not None:
            on_eval(eval_index, {**v, "guided": out})
        return out

    return velocity


@dataclass
class Plan:
    """Everything one sampling run needs; ``run_plan`` executes it with the one loop."""

    x_init: Tensor
    sigmas: Tensor
    velocity: GuidedVelocityFn
    step: Stepper
    noise: Callable[[int], Tensor] | None = None
    project: Callable[[Tensor, int], Tensor] | None = None
    finalize: Callable[[Tensor], Tensor] | None = None


def run_plan(plan: Plan, callback: Callable[[int, Tensor, Tensor], None] | None = None) -> Tensor:
    """Run ``plan`` through ``songflow.sampling.loop.sample`` and apply its finalisation."""
    x = sample(
        plan.velocity,
        plan.x_init,
        plan.sigmas,
        step=plan.step,
        noise=plan.noise,
        project=plan.project,
        callback=callback,
    )
    return plan.finalize(x) if plan.finalize is not None else x
