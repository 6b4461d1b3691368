"""Classifier-free guidance rules as pure combinators over velocity predictions (docs/architecture.md#layers).

No ``nn.Module``, no global RNG, no hidden state: the APG momentum is an explicit :class:`ApgState` that
the caller threads through one sampling run. All tensors are ``[B, ...]`` velocities (latents
``[B, 8, 16, L]`` in ACE-Step). The formulas and numerics match the official ``acestep.apg_guidance``;
the guidance interval / decay rule matches ``text2music_diffusion_process``
(docs/reference_behaviour.md#r13).

ACE-Step 1.5 (base/sft) reuses :func:`apg` over the time axis of its ``[B, T, C]`` velocities
(:data:`APG_V15_DIMS`) and adds :func:`adg`; :func:`guide_v15` is its per-step rule (CFG interval in
timestep units, APG or ADG).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from songflow.errors import ConfigError

__all__ = [
    "GUIDANCE",
    "GUIDANCE_TYPES",
    "APG_V15_DIMS",
    "ApgState",
    "Combine",
    "Guidance15Kind",
    "GuidanceKind",
    "GuidanceRule",
    "adg",
    "apg",
    "cfg",
    "cfg_interval_active",
    "cfg_zero_star",
    "double_condition",
    "guidance_interval_bounds",
    "guidance_rule",
    "guidance_scale_at",
    "guide_v15",
    "validate_guidance_name",
    "weighted_terms",
]

GuidanceKind = Literal["cfg", "apg", "cfg_star"]
"""The guidance names, as a type; the same names as :data:`GUIDANCE_TYPES` (the :data:`GUIDANCE` registry)."""


def cfg(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def weighted_terms(terms: Sequence[tuple[float, Tensor]]) -> Tensor:
    """``sum_i w_i * v_i``, accumulated left to right (``((w0 v0 + w1 v1) + w2 v2) ...``)."""
    if not terms:
        raise ValueError("weighted_terms needs at least one (weight, tensor) pair")
    (w0, v0), *rest = terms
    out = w0 * v0
    for w, v in rest:
        out = out + w * v
    return out


def double_condition(
    cond: Tensor, text_only: Tensor, uncond: Tensor, scale_text: float, scale_lyric: float
) -> Tensor:
    """ACE-Step double-condition guidance over three passes.

    ``(1 - s_t) * uncond + (s_t - s_l) * text_only + s_l * cond`` with ``s_t = scale_text`` and
    ``s_l = scale_lyric``; ``text_only`` is the pass conditioned on the tags with a weakened / null lyric.
    With ``s_t == s_l`` it reduces to ``cfg(cond, uncond, s_t)``.
    """
    return weighted_terms(
        [(1 - scale_text, uncond), (scale_text - scale_lyric, text_only), (scale_lyric, cond)]
    )


@dataclass(frozen=True)
class ApgState:
    """APG momentum state of one sampling run: the running average of ``cond - uncond`` (None = empty).

    Create ``ApgState()`` at the start of a run and pass the returned state to the next :func:`apg` call.
    """

    running_average: Tensor | None = None


def _project(v: Tensor, onto: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(parallel, orthogonal) parts of ``v`` w.r.t. ``onto``, per slice over ``dims``, computed in float64."""
    v64, o64 = v.double(), onto.double()
    unit = o64 / o64.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
    parallel = (v64 * unit).sum(dim=dims, keepdim=True) * unit
    orthogonal = v64 - parallel
    return parallel.to(v.dtype), orthogonal.to(v.dtype)


def apg(
    cond: Tensor,
    uncond: Tensor,
    scale: float,
    state: ApgState | None,
    *,
    momentum: float = -0.75,
    norm_threshold: float = 2.5,
    eta: float = 0.0,
    dims: Sequence[int] = (-1, -2),
) -> tuple[Tensor, ApgState | None]:
    """Adaptive Projected Guidance (Sadat et al. 2024), as in ACE-Step. Returns ``(guided, new_state)``.

    1. ``d = cond - uncond``; with a ``state``: ``avg = d + momentum * avg`` (an empty state starts at 0)
       and ``d = avg``. ``state=None`` disables momentum and returns ``None`` as the state.
    2. If ``norm_threshold > 0``: ``d *= min(1, norm_threshold / ||d||)`` with the L2 norm per slice over
       ``dims`` (per (batch, channel) for ``[B, C, H, W]`` and the default dims).
    3. Split ``d`` into parts parallel and orthogonal to ``cond`` (per slice, in float64).
    4. ``guided = cond + (scale - 1) * (d_orth + eta * d_par)``.

    The input state is not modified.
    """
    dims = tuple(dims)
    diff = cond - uncond
    new_state: ApgState | None = None
    if state is not None:
        if state.running_average is not None:
            diff = diff + momentum * state.running_average
        new_state = ApgState(running_average=diff)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    parallel, orthogonal = _project(diff, cond, dims)
    update = orthogonal + eta * parallel
    return cond + (scale - 1) * update, new_state


def cfg_zero_star(
    cond: Tensor,
    uncond: Tensor,
    scale: float,
    eval_index: int,
    *,
    zero_steps: int = 1,
    use_zero_init: bool = True,
) -> Tensor:
    """CFG-Zero* (Fan et al. 2025): CFG on an optimally scaled unconditional prediction, with zero init.

    ``alpha = <cond, uncond> / (||uncond||^2 + 1e-8)`` per sample over all its elements;
    ``out = alpha * uncond + scale * (cond - alpha * uncond)``. If ``use_zero_init`` and
    ``eval_index <= zero_steps`` the output is all zeros (the sampler then leaves ``x`` unchanged).
    ``eval_index`` is the run's evaluation index (the official loop index ``i``), not the index within
    the guidance interval.
    """
    if use_zero_init and eval_index <= zero_steps:
        return torch.zeros_like(cond)
    bsz = cond.shape[0]
    c, u = cond.reshape(bsz, -1), uncond.reshape(bsz, -1)
    alpha = (c * u).sum(dim=1, keepdim=True) / ((u**2).sum(dim=1, keepdim=True) + 1e-8)
    alpha = alpha.reshape((bsz,) + (1,) * (cond.ndim - 1))
    return uncond * alpha + scale * (cond - uncond * alpha)


# ----------------------------------------------------------------------------------------------------
# the registry: one combinator signature for every guidance kind

Combine = Callable[[Tensor, Tensor, float, int, ApgState | None], tuple[Tensor, ApgState | None]]
"""``combine(cond, uncond, scale, eval_index, state) -> (guided, new_state)``; ``state`` is the run's
:class:`ApgState` (None: no momentum), passed through unchanged by the kinds that keep none."""


@dataclass(frozen=True)
class GuidanceRule:
    """A guidance kind: its name, its :data:`Combine` combinator and whether it keeps APG momentum."""

    name: str
    combine: Combine
    uses_momentum: bool = False

    def initial_state(self) -> ApgState | None:
        """The state a run starts with: an empty :class:`ApgState` with momentum, else None."""
        return ApgState() if self.uses_momentum else None


def _combine_cfg(
    cond: Tensor, uncond: Tensor, scale: float, eval_index: int, state: ApgState | None
) -> tuple[Tensor, ApgState | None]:
    return cfg(cond, uncond, scale), state


def _combine_apg(
    cond: Tensor, uncond: Tensor, scale: float, eval_index: int, state: ApgState | None
) -> tuple[Tensor, ApgState | None]:
    return apg(cond, uncond, scale, state)


def _combine_cfg_zero_star(
    cond: Tensor, uncond: Tensor, scale: float, eval_index: int, state: ApgState | None
) -> tuple[Tensor, ApgState | None]:
    return cfg_zero_star(cond, uncond, scale, eval_index), state


GUIDANCE: dict[str, GuidanceRule] = {
    rule.name: rule
    for rule in (
        GuidanceRule("cfg", _combine_cfg),
        GuidanceRule("apg", _combine_apg, uses_momentum=True),
        GuidanceRule("cfg_star", _combine_cfg_zero_star),
    )
}
"""Every guidance kind by name (``cfg_star`` is CFG-Zero*)."""

GUIDANCE_TYPES: tuple[str, ...] = tuple(GUIDANCE)


def guidance_rule(name: str) -> GuidanceRule:
    """The guidance kind called ``name``; unknown names raise :class:`ConfigError` listing the valid ones."""
    rule = GUIDANCE.get(name)
    if rule is None:
        raise ConfigError(f"unknown guidance type {name!r}; valid: {', '.join(GUIDANCE_TYPES)}")
    return rule


def validate_guidance_name(name: str) -> str:
    """Return ``name`` if it is one of :data:`GUIDANCE_TYPES`, else raise :class:`ConfigError`."""
    return guidance_rule(name).name


# ----------------------------------------------------------------------------------------------------
# the guidance interval


def guidance_interval_bounds(n_steps: int, interval: float = 0.5) -> tuple[int, int]:
    """``(start, end)`` of the guided range: evaluations ``start <= i < end`` are guided.

    ``start = int(n_steps * (1 - interval) / 2)``, ``end = int(n_steps * (interval / 2 + 0.5))`` with the
    official float arithmetic (60 steps, interval 0.5 -> 15, 45). ``n_steps`` is the number of sampling
    steps N (for Heun the user's N although a run makes 2N - 1 evaluations, as officially).
    """
    if not 0.0 <= interval <= 1.0:
        raise ConfigError(f"guidance interval must be in [0, 1], got {interval!r}")
    if n_steps < 0:
        raise ConfigError(f"n_steps must be >= 0, got {n_steps!r}")
    return int(n_steps * ((1 - interval) / 2)), int(n_steps * (interval / 2 + 0.5))


def guidance_scale_at(
    eval_index: int,
    n_steps: int,
    scale: float,
    *,
    interval: float = 0.5,
    decay: float = 0.0,
    min_scale: float = 3.0,
) -> float | None:
    """Guidance scale for model evaluation ``eval_index`` of an ``n_steps``-step run, or None (unguided).

    None means a single conditional pass. Guidance is off entirely for ``scale`` 0 or 1. Inside the
    interval (:func:`guidance_interval_bounds`) the scale is ``scale``, or with ``decay > 0`` linearly
    decayed: ``scale - (scale - min_scale) * (i - start) / (end - start - 1) * decay``.
    With ``decay > 0`` and an interval of exactly one step the official code divides by zero; this raises
    :class:`ConfigError` instead (for every ``eval_index``, so the error comes before sampling starts).
    """
    if scale == 0.0 or scale == 1.0:
        return None
    if decay < 0:
        raise ConfigError(f"guidance interval decay must be >= 0, got {decay!r}")
    start, end = guidance_interval_bounds(n_steps, interval)
    if decay > 0 and end - start == 1:
        raise ConfigError(
            f"guidance interval decay {decay} needs at least 2 guided steps, but interval {interval} of "
            f"{n_steps} steps guides only step {start}; set decay to 0 or widen the interval"
        )
    if not start <= eval_index < end:
        return None
    if decay > 0:
        progress = (eval_index - start) / (end - start - 1)
        return scale - (scale - min_scale) * progress * decay
    return float(scale)


# ----------------------------------------------------------------------------------------------------
# ACE-Step 1.5 (base / sft): APG over time, ADG, the timestep interval

APG_V15_DIMS: tuple[int, ...] = (1,)
"""ACE-Step 1.5 applies :func:`apg` per (sample, channel) over the time axis of ``[B, T, C]``."""

Guidance15Kind = Literal["apg", "adg"]
GUIDANCE_15_TYPES: tuple[str, ...] = ("apg", "adg")


def adg(
    x: Tensor,
    cond: Tensor,
    uncond: Tensor,
    sigma: Tensor | float,
    scale: float,
    *,
    angle_clip: float = 3.14 / 6,
    apply_norm: bool = False,
    apply_clip: bool = True,
) -> Tensor:
    """Angle-based dynamic guidance (ACE-Step 1.5 ``use_adg``) on ``[B, T, C]`` velocities.

    With ``w = max(scale - 1, 0) + 1e-3`` and the predicted clean latents ``h_c = x - sigma * cond``,
    ``h_u = x - sigma * uncond`` (float32): per frame, the angle ``theta`` between ``h_c`` and ``h_u``
    over the channels (float64, cosine clamped to ``±(1 - 1e-6)``) becomes ``theta' = w * theta``,
    clipped to ``angle_clip`` (radians; default ``3.14 / 6`` as officially) when ``apply_clip``;
    ``h = cos(theta') * h_c + sin(theta') / sin(theta) * perp`` where ``perp`` is the part of
    ``h_c - h_u`` orthogonal to ``h_u`` per frame (float32, ``+1e-8`` in the denominator; frames with
    ``sin(theta) <= 1e-3`` use ``w * perp``); ``apply_norm`` rescales ``h`` to the L2 norm of ``h_c``
    over dim 1 (time, as officially). Returns ``(x - h) / sigma`` in ``x``'s dtype.

    ``sigma``: the current timestep ``t`` (a number, a 0-dim tensor, or one value per sample); it must
    be > 0. ``x`` is the current latents (not the CFG-doubled batch).
    """
    if not (x.shape == cond.shape == uncond.shape) or x.ndim != 3:
        raise ValueError(
            f"adg needs [B, T, C] x, cond, uncond of one shape, got {tuple(x.shape)}, "
            f"{tuple(cond.shape)}, {tuple(uncond.shape)}"
        )
    n, t, c = cond.shape
    if isinstance(sigma, Tensor):
        sig = sigma.reshape(-1, 1, 1) if sigma.numel() == n else sigma.reshape(1, 1, 1)
        sig = sig.expand(n, 1, 1)
    else:
        sig = torch.tensor(sigma, device=x.device, dtype=x.dtype).view(1, 1, 1).expand(n, 1, 1)
    w = scale - 1
    w = w * (w > 0) + 1e-3
    hat_c = x - sig * cond
    hat_u = x - sig * uncond
    diff = hat_c - hat_u
    a, b = hat_c.reshape(-1, c).double(), hat_u.reshape(-1, c).double()
    a = a / torch.linalg.norm(a, dim=1, keepdim=True)
    b = b / torch.linalg.norm(b, dim=1, keepdim=True)
    cos = (a * b).sum(dim=1, keepdim=True).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    theta = torch.acos(cos).view(n, t, 1)
    theta_new = torch.clip(w * theta, -angle_clip, angle_clip) if apply_clip else w * theta
    d32, u32 = diff.reshape(n * t, c).float(), hat_u.reshape(n * t, c).float()
    dot = (d32 * u32).sum(dim=1, keepdim=True)
    perp = (d32 - (dot / ((u32 * u32).sum(dim=1, keepdim=True) + 1e-8)) * u32).reshape(n, t, c)
    sin = torch.sin(theta)
    rotated = perp * torch.sin(theta_new) / sin * (sin > 1e-3) + perp * w * (sin <= 1e-3)
    new = torch.cos(theta_new) * hat_c + rotated
    if apply_norm:
        new = (
            new * torch.linalg.norm(hat_c, dim=1, keepdim=True) / torch.linalg.norm(new, dim=1, keepdim=True)
        )
    return ((x - new) / sig).reshape(n, t, c).to(x.dtype)


def cfg_interval_active(t: Tensor | float, start: float = 0.0, end: float = 1.0) -> bool:
    """Whether ACE-Step 1.5 guides at timestep ``t``: ``start <= t <= end``.

    A tensor ``t`` (the schedule's value) is compared in its own dtype, as the official comparison of
    a float32 tensor with Python floats is (so ``t = float32(0.2)`` lies inside ``[0.2, ...]``).
    """
    if isinstance(t, Tensor):
        return bool((t >= start) & (t <= end))
    return start <= t <= end


def guide_v15(
    cond: Tensor,
    uncond: Tensor,
    x: Tensor,
    t: Tensor | float,
    scale: float,
    state: ApgState | None,
    *,
    kind: Guidance15Kind = "apg",
    interval: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, ApgState | None]:
    """One ACE-Step 1.5 base/sft guidance step. Returns ``(v, new_state)``.

    Outside the timestep ``interval`` (:func:`cfg_interval_active`) ``v = cond`` and the APG momentum
    is left untouched; inside, ``kind="apg"``: :func:`apg` over :data:`APG_V15_DIMS` (momentum -0.75,
    norm threshold 2.5, eta 0, ``state`` threaded through the run, start with ``ApgState()``; computed
    on time-contiguous memory like the official, see :func:`_time_inner`);
    ``kind="adg"``: :func:`adg` at ``sigma = t`` on the current latents ``x``. The official sampler only
    runs the unconditional pass when ``scale > 1``; without it, use ``cond`` directly.
    ``cond``, ``uncond``, ``x``: ``[B, T, C]``.
    """
    if kind not in GUIDANCE_15_TYPES:
        raise ConfigError(f"unknown ACE-Step 1.5 guidance {kind!r}; valid: {', '.join(GUIDANCE_15_TYPES)}")
    if not cfg_interval_active(t, *interval):
        return cond, state
    if kind == "adg":
        return adg(x, cond, uncond, t, scale), state
    return apg(_time_inner(cond), _time_inner(uncond), scale, state, dims=APG_V15_DIMS)


def _time_inner(v: Tensor) -> Tensor:
    """``v [B, T, C]`` with time as the innermost memory axis (strides ``(T*C, 1, T)``), values unchanged.

    The official DiT's velocity has this layout (its output projection works on ``[B, C, T]``), and
    torch's reductions over dim 1 round differently for other layouts; APG on this layout reproduces
    the official guided velocity bit for bit, whatever layout the caller's model returns.
    """
    return v.transpose(1, 2).contiguous().transpose(1, 2)
