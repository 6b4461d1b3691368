"""edit: FlowEdit (Kulikov et al. 2024) — change the tags and/or lyrics of a source song, keep the rest.

FlowEdit integrates the *difference* of two velocity fields, inversion-free. With ``x_src`` the source
latents and ``N`` steps on the schedule ``sigma_0 > ... > sigma_N = 0``:

1. Edit phase, steps ``n_min' <= i < n_max'`` (``n_min' = int(N * n_min_frac)``, likewise ``n_max'``;
   earlier steps are skipped). The state is ``z_edit`` (starts at ``x_src``); its velocity is

       dV(z_edit, sigma) = mean_k [ V_tar(z_src_k + (z_edit - x_src)) - V_src(z_src_k) ],
       z_src_k = (1 - sigma) * x_src + sigma * eps_k,   k = 1 .. n_avg fresh noise draws,

   with ``V_src``/``V_tar`` the guided model velocities under the source/target conditions.
2. Sampling phase, steps ``i >= n_max'``: ``x_tar = (sigma * eps + (1 - sigma) * x_src) + (z_edit - x_src)``
   at ``sigma = sigma_{n_max'}``, then ordinary sampling under the target condition.
   The result is ``x_tar`` if that phase ran, else ``z_edit``.

Both phases are calls of the one loop (:func:`~songflow.tasks.plan.run_plan` ->
``songflow.sampling.loop.sample``): phase 1 samples ``z_edit`` with ``dV`` as its velocity and the plain
Euler stepper. ``dV`` is an average over fresh noise, i.e. a stochastic field, and ``z_edit`` is not a
noisy sample, so a predict-and-renoise (ping-pong) or a second-order (Heun) update of it has no meaning:
phase 1 always integrates ``dV`` with Euler, as the FlowEdit paper does, and the chosen sampler applies
to phase 2. So the edit really happens with every sampler.

Guidance uses CFG by batch doubling ``[x; x]`` under ``[condition; null]``, where the FlowEdit null
condition has zero text states, zero speaker, zero lyric ids *and a zero lyric mask*, and every row keeps
its own cross-attention mask (unlike text2music's null, see ``tasks/plan.py``). No ERG.

``reference_behaviour=True`` reproduces ``flowedit_diffusion_process`` (docs/reference_behaviour.md#r17):
APG always (the guidance kind is not forwarded) with the same scale for source and target, no
guidance interval, Euler without omega for every sampler except ping-pong; the source branch shares one
APG momentum buffer over the whole edit phase (all steps and draws) while the target branch has none, so
``target == source`` does *not* give ``dV == 0``; phase 2 has its own buffer; and with the
ping-pong sampler the edit-phase update is computed but discarded, so with
``n_max_frac = 1`` the output is the source. The default (corrected) behaviour: guidance as the params
ask (cfg / apg / cfg_star, interval, decay), symmetric guidance state (each branch its own APG momentum,
so identical conditions give ``dV == 0`` exactly), the edit applied with every sampler, and phase 2 with
the chosen stepper and omega settings. With ``n_avg > 1`` every draw of a step starts from the branch's
momentum at the step start and the step leaves the mean of the draws' running averages (the momentum of
the step's mean guidance difference), so one step updates the momentum once, as in sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from songflow.errors import ConfigError
from songflow.models.acestep_v1.transformer import Conditions
from songflow.requests import EDIT_PRESETS, Edit, GenerationParams
from songflow.sampling.guidance import ApgState, GuidanceRule
from songflow.sampling.loop import GuidedVelocityFn
from songflow.sampling.steppers import BoundStepper, Stepper, StepperSpec, make_stepper
from songflow.tasks.output import finish_source_length
from songflow.tasks.plan import ConditionSet, DiffusionModel, GuidanceSpec, Plan, TextInputs, run_plan
from songflow.tasks.setup import TaskContext, guidance_for, sigmas_for
from songflow.tasks.spec import ProgressFn, TaskHost, TaskSpec, full_run_steps

__all__ = [
    "EDIT_PRESETS",
    "check_edit_range",
    "edit_step_range",
    "encode_edit_conditions",
    "mean_step_state",
    "run_edit",
]

"""UI presets ``name -> (n_min_frac, n_max_frac)`` (official UI, ``n_avg`` 1)."""

EvalHook = Callable[[str, Tensor], None]
"""``on_eval(branch, guided_velocity)`` with branch ``"source"`` or ``"target"``, in model-call order."""


# ----------------------------------------------------------------------------------------------------
# conditions


def _null_condition(model: DiffusionModel, inputs: TextInputs) -> Conditions:
    """FlowEdit null: zero text states (mask kept), zero speaker, zero lyric ids AND zero lyric mask."""
    zero_ids = torch.zeros_like(inputs.lyric_ids)
    return model.encode(
        torch.zeros_like(inputs.text_states),
        inputs.text_mask,
        torch.zeros_like(inputs.speaker_embeds),
        zero_ids,
        torch.zeros_like(inputs.lyric_mask),
    )


def encode_edit_conditions(
    model: DiffusionModel, source: TextInputs, target: TextInputs
) -> tuple[ConditionSet, ConditionSet]:
    """Encode the source and target conditions of a FlowEdit run, each with the FlowEdit null condition.

    Returns ``(source_conds, target_conds)``; ``cond`` is ``encode(text, mask, speaker, ids, lyric_mask)``
    and ``uncond`` the null of :func:`_null_condition` (every tensor ``[B, S, D]``, ``S`` may differ
    between source and target). No ERG (``uncond_query_scale`` None); ``text_states_erg`` is unused.
    Matches the official ``[condition; null]`` batch-doubled encodings of ``flowedit_diffusion_process``.
    """
    out = []
    for inputs in (source, target):
        cond = model.encode(
            inputs.text_states, inputs.text_mask, inputs.speaker_embeds, inputs.lyric_ids, inputs.lyric_mask
        )
        out.append(ConditionSet(cond=cond, uncond=_null_condition(model, inputs)))
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------------
# guided velocity of one branch


@dataclass(frozen=True)
class _Guidance:
    """Guidance of one edit run: ``spec`` (kind, scale, interval on ``spec.n_steps``), its registry
    ``rule`` (the same combinator ``build_velocity`` uses) and the model dtype."""

    spec: GuidanceSpec
    rule: GuidanceRule
    model_dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, spec: GuidanceSpec, model_dtype: torch.dtype) -> _Guidance:
        """Look the kind up once; an unknown kind raises :class:`ConfigError` before anything runs."""
        return cls(spec, spec.rule, model_dtype)


def _guided(
    model: DiffusionModel,
    conds: ConditionSet,
    x: Tensor,
    sigma: Tensor,
    step: int,
    guidance: _Guidance,
    state: ApgState | None,
) -> tuple[Tensor, ApgState | None]:
    """Guided velocity (float32, like ``x`` [B,8,16,L]) at schedule step ``step``, and the new APG state.

    Unguided steps run the conditional pass only. Guided steps run ``[cond; null]`` in one batch-doubled
    call, each half with its own cross-attention mask. ``state=None`` means APG without momentum.
    """
    scale = guidance.spec.scale_at(step)
    xm = x.to(guidance.model_dtype)
    if scale is None or conds.uncond is None:
        return model(xm, sigma, conds.cond).float(), state
    both = Conditions(
        states=torch.cat([conds.cond.states, conds.uncond.states]),
        mask=torch.cat([conds.cond.mask, conds.uncond.mask]),
    )
    v_cond, v_uncond = model(xm.repeat(2, 1, 1, 1), sigma.repeat(2), both).float().split(x.shape[0])
    return guidance.rule.combine(v_cond, v_uncond, scale, step, state)


def mean_step_state(states: list[ApgState | None], before: ApgState | None) -> ApgState | None:
    """Momentum after a step of ``n_avg`` draws that all started from ``before``: the mean running average
    (the momentum of the step's mean guidance difference); ``before`` if the step updated nothing."""
    avgs = [s.running_average for s in states if s is not None and s.running_average is not None]
    if len(avgs) != len(states) or not avgs:
        return before
    total = avgs[0]
    for a in avgs[1:]:
        total = total + a
    return ApgState(total / len(avgs))


# ----------------------------------------------------------------------------------------------------
# phase 1: the dV field


@dataclass
class _EditField:
    """The FlowEdit velocity of ``z_edit`` (phase 1), as a velocity function for the sampling loop."""

    model: DiffusionModel
    source: ConditionSet
    target: ConditionSet
    guidance: _Guidance
    x_src: Tensor
    n_avg: int
    first_step: int
    noise_fn: Callable[[], Tensor]
    reference: bool
    on_eval: EvalHook | None = None

    def __post_init__(self) -> None:
        self.src_state: ApgState | None = self.guidance.rule.initial_state()
        # reference: the target branch gets no momentum buffer in this phase (asymmetric, official)
        self.tar_state: ApgState | None = None if self.reference else self.guidance.rule.initial_state()

    def _branch(
        self, name: str, conds: ConditionSet, x: Tensor, sigma: Tensor, step: int, state: ApgState | None
    ) -> tuple[Tensor, ApgState | None]:
        v, state = _guided(self.model, conds, x, sigma, step, self.guidance, state)
        if self.on_eval is not None:
            self.on_eval(name, v)
        return v, state

    def __call__(self, z_edit: Tensor, sigma: Tensor, eval_index: int) -> Tensor:
        step = self.first_step + eval_index  # Euler: one evaluation per step
        s = sigma.view(-1, *([1] * (z_edit.ndim - 1)))
        offset = z_edit - self.x_src  # exactly 0 while nothing was edited
        delta = torch.zeros_like(z_edit)
        src_states: list[ApgState | None] = []
        tar_states: list[ApgState | None] = []
        for _ in range(self.n_avg):
            eps = self.noise_fn().to(z_edit.device, torch.float32)
            z_src = (1 - s) * self.x_src + s * eps
            z_tar = z_src + offset
            v_src, st_src = self._branch("source", self.source, z_src, sigma, step, self.src_state)
            v_tar, st_tar = self._branch("target", self.target, z_tar, sigma, step, self.tar_state)
            if self.reference:  # one source momentum buffer threaded through every call
                self.src_state = st_src
            else:  # every draw of this step starts from the branch's state at the step start
                src_states.append(st_src)
                tar_states.append(st_tar)
            delta = delta + (1 / self.n_avg) * (v_tar - v_src)
        if not self.reference:
            self.src_state = mean_step_state(src_states, self.src_state)
            self.tar_state = mean_step_state(tar_states, self.tar_state)
        return delta


def _discarded_pingpong(step_noise: Callable[[int], Tensor]) -> Stepper:
    """Official ping-pong edit phase: evaluate the velocity and draw the step noise (so
    the random streams advance as officially), then return ``x`` unchanged — the update is never assigned.
    It draws that noise itself, so it declares ``uses_noise=False`` (the loop supplies none)."""

    def step(f, x, sigma, sigma_next, noise=None):
        f(x, torch.as_tensor(sigma, dtype=torch.float32).reshape(()).expand(x.shape[0]))
        step_noise(0)
        return x

    spec = StepperSpec("discarded_pingpong", step, uses_noise=False, evals_per_step=1, takes_omega=False)
    return BoundStepper(spec)


def _plain_euler() -> BoundStepper:
    """Euler without the omega rescale: ``x + (sigma_next - sigma) * v`` (float32 add, cast back)."""
    return make_stepper("euler", omega_scale=None)


# ----------------------------------------------------------------------------------------------------
# the task


def check_edit_range(n_min_frac: float, n_max_frac: float, n_avg: int) -> None:
    """Raise :class:`ConfigError` unless ``0 <= n_min_frac < n_max_frac <= 1`` and ``n_avg >= 1``."""
    for name, value in (("n_min_frac", n_min_frac), ("n_max_frac", n_max_frac)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"edit {name} must be a number in [0, 1], got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"edit {name} must be in [0, 1], got {value!r}")
    if n_min_frac >= n_max_frac:
        raise ConfigError(
            f"edit n_min_frac ({n_min_frac}) must be smaller than n_max_frac ({n_max_frac}): the edit acts "
            "on the steps between them"
        )
    if isinstance(n_avg, bool) or not isinstance(n_avg, int) or n_avg < 1:
        raise ConfigError(f"edit n_avg must be an integer >= 1 (noise draws per step), got {n_avg!r}")


def edit_step_range(n_steps: int, n_min_frac: float, n_max_frac: float) -> tuple[int, int]:
    """``(n_min', n_max') = (int(N * n_min_frac), int(N * n_max_frac))``: the edit-phase steps.

    Raises :class:`ConfigError` if the range holds no step (too few steps for the fractions).
    """
    lo, hi = int(n_steps * n_min_frac), int(n_steps * n_max_frac)
    if lo >= hi:
        raise ConfigError(
            f"the edit range [{n_min_frac}, {n_max_frac}) holds no step of a {n_steps}-step schedule "
            f"(steps {lo}..{hi}); use more steps or a wider range"
        )
    return lo, hi


def _schedule_and_guidance(ctx: TaskContext, reference: bool) -> tuple[Tensor, GuidanceSpec]:
    """Sigmas ``[N + 1]`` and guidance of an edit run (the reference ignores oss steps and every guidance
    setting but the scale: APG on every step)."""
    params = ctx.params
    if reference:
        sigmas = sigmas_for(replace(params, step_indices=()))
        return sigmas, GuidanceSpec(
            kind="apg", scale=params.guidance_scale, interval=1.0, n_steps=len(sigmas) - 1
        )
    sigmas = sigmas_for(params, oss_dtype=ctx.oss_dtype)
    spec = guidance_for(params, len(sigmas) - 1)
    if spec.uses_double_condition:
        raise ConfigError(
            "edit does not support double-condition guidance (guidance_scale_text and "
            "guidance_scale_lyric > 1); set them to 0"
        )
    return sigmas, spec


def _target_velocity(
    model: DiffusionModel,
    conds: ConditionSet,
    guidance: _Guidance,
    step_of_eval: Callable[[int], int],
    on_eval: EvalHook | None,
) -> GuidedVelocityFn:
    """Phase-2 guided velocity under the target condition, with its own APG momentum."""
    state = guidance.rule.initial_state()

    def velocity(x: Tensor, sigma: Tensor, eval_index: int) -> Tensor:
        nonlocal state
        v, state = _guided(model, conds, x, sigma, step_of_eval(eval_index), guidance, state)
        if on_eval is not None:
            on_eval("target", v)
        return v

    return velocity


def _phase2_stepper(params: GenerationParams, reference: bool) -> BoundStepper:
    """The stepper of the sampling phase: the chosen sampler with its omega settings; the reference uses
    plain Euler (no omega) unless ping-pong."""
    if reference:
        return make_stepper("pingpong") if params.sampler == "pingpong" else _plain_euler()
    return make_stepper(
        params.sampler, omega_scale=params.omega_scale, omega_mean_over=params.omega_mean_over
    )


def run_edit(
    ctx_source: TaskContext,
    target_conds: ConditionSet,
    *,
    src_latents: Tensor,
    n_min_frac: float,
    n_max_frac: float,
    n_avg: int,
    noise_fn: Callable[[], Tensor],
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    step_noise: Callable[[int], Tensor] | None = None,
    reference_behaviour: bool = False,
    on_eval: EvalHook | None = None,
) -> Tensor:
    """FlowEdit the source latents towards the target conditions; returns latents ``[B, 8, 16, L]`` float32.

    Args:
        ctx_source: model, source conditions (:func:`encode_edit_conditions`), params (steps, shift,
            sampler, guidance, omega), model dtype.
        target_conds: the target conditions (:func:`encode_edit_conditions`).
        src_latents: ``[1 | B, 8, 16, L]`` source latents (broadcast to the batch of the conditions).
        n_min_frac, n_max_frac: the edit acts on steps ``int(N*n_min_frac) <= i < int(N*n_max_frac)``
            (:data:`EDIT_PRESETS`); steps after it sample normally under the target condition.
        n_avg: noise draws averaged per edit step.
        noise_fn: draws one N(0, 1) tensor ``[B, 8, 16, L]`` (per-item generators); called ``n_avg`` times
            per edit step, then once at the start of phase 2.
        callback: ``callback(i, sigma_i, x)`` after every executed step, ``i`` indexing the full N-step
            schedule (``x`` is ``z_edit`` in phase 1, ``x_tar`` in phase 2).
        step_noise: per-step noise of the ping-pong stepper (phase 2, and the reference's discarded
            edit-phase draw); default ``noise_fn``.
        reference_behaviour: reproduce the official numerics and bugs (module docstring).
        on_eval: receives every guided velocity in model-call order (tests, inspection).
    """
    check_edit_range(n_min_frac, n_max_frac, n_avg)
    sigmas, spec = _schedule_and_guidance(ctx_source, reference_behaviour)
    n = len(sigmas) - 1
    lo, hi = edit_step_range(n, n_min_frac, n_max_frac)
    guidance = _Guidance.of(spec, ctx_source.model_dtype)
    step_noise = step_noise or (lambda i: noise_fn())
    x_src = src_latents.float()

    def shifted(offset: int) -> Callable[[int, Tensor, Tensor], None] | None:
        return None if callback is None else (lambda i, sigma, x: callback(offset + i, sigma, x))

    # 1. edit phase: integrate dV over steps [lo, hi) with Euler (reference ping-pong: discarded)
    field = _EditField(
        ctx_source.model,
        ctx_source.conds,
        target_conds,
        guidance,
        x_src,
        n_avg,
        lo,
        noise_fn,
        reference_behaviour,
        on_eval,
    )
    discard = reference_behaviour and ctx_source.params.sampler == "pingpong"
    phase1_step = _discarded_pingpong(step_noise) if discard else _plain_euler()
    batch = ctx_source.conds.cond.states.shape[0]
    z_init = x_src.expand(batch, *x_src.shape[1:]).clone()
    z_edit = run_plan(Plan(z_init, sigmas[lo : hi + 1], field, phase1_step), callback=shifted(lo))
    if hi == n:
        return z_edit

    # 2. sampling phase from sigma_hi under the target condition
    sigma = sigmas[hi]
    x_tar = (sigma * noise_fn().to(x_src.device, torch.float32) + (1 - sigma) * x_src) + (z_edit - x_src)
    stepper = _phase2_stepper(ctx_source.params, reference_behaviour)
    per_step = stepper.evals_per_step
    velocity = _target_velocity(
        ctx_source.model, target_conds, guidance, lambda k: hi + k // per_step, on_eval
    )
    noise = step_noise if stepper.uses_noise else None
    return run_plan(Plan(x_tar, sigmas[hi:], velocity, stepper, noise=noise), callback=shifted(hi))


# ----------------------------------------------------------------------------------------------------
# the request runner


def run_edit_request(host: TaskHost, request: Edit, ctx: TaskContext, progress: ProgressFn | None) -> Tensor:
    """Latents of an edit request: the source file moved from its tags/lyrics to the target ones."""
    src = host.load_source(request.source_path, what="source audio")
    batch = request.params.batch_size
    tags = request.target_tags if request.target_tags is not None else request.tags
    lyrics = request.target_lyrics if request.target_lyrics is not None else request.lyrics
    source_inputs = host.text_inputs(request.tags, request.lyrics, batch, with_erg_text=False)
    target_inputs = host.text_inputs(tags, lyrics, batch, with_erg_text=False)
    source_conds, target_conds = encode_edit_conditions(ctx.model, source_inputs, target_inputs)
    callback = None
    if progress is not None:
        n_steps = full_run_steps(ctx)
        callback = lambda i, sigma, x: progress(i + 1, n_steps)  # noqa: E731
    return run_edit(
        replace(ctx, conds=source_conds),
        target_conds,
        src_latents=src,
        n_min_frac=request.n_min_frac,
        n_max_frac=request.n_max_frac,
        n_avg=request.n_avg,
        noise_fn=lambda: host.noise(ctx.generators, src.shape[-1]),
        callback=callback,
    )


SPEC = TaskSpec("edit", Edit, run_edit_request, finish=finish_source_length("source_path"))
