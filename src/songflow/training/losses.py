"""Pure training losses: timestep sampling, flow-matching x̂0 loss, condition dropout, REPA.

Every random draw takes an explicit ``torch.Generator`` (CPU) so a step is reproducible from its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_timesteps(
    batch: int,
    generator: torch.Generator,
    grid: Tensor,
    *,
    mean: float = 0.0,
    std: float = 1.0,
) -> Tensor:
    """Logit-normal draw over the training grid: ``sigma [B]`` (float32, CPU).

    u ~ N(mean, std²), p = sigmoid(u), idx = clamp(floor(n·p), 0, n−1), sigma = grid[idx], where ``grid`` is
    the decreasing shift-3 training grid (:func:`songflow.sampling.schedules.legacy_train_sigmas`).
    """
    n = grid.numel()
    u = torch.randn(batch, generator=generator, dtype=torch.float32) * std + mean
    idx = torch.floor(torch.sigmoid(u) * n).long().clamp_(0, n - 1)
    return grid.to(torch.float32)[idx]


def noisy_latents(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """``x_sigma = sigma·noise + (1 − sigma)·x0`` with ``sigma [B]`` broadcast over the other dims."""
    s = sigma.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return s * noise + (1.0 - s) * x0


def flow_matching_loss(
    model_velocity: Tensor, x0: Tensor, noise: Tensor, sigma: Tensor, mask: Tensor | None = None
) -> Tensor:
    """x̂0 MSE: ``x̂0 = x_sigma − sigma·v``; per-sample mean of ``(x̂0 − x0)²`` over valid frames, batch mean.

    Args:
        model_velocity: ``[B, C, H, L]`` model output at ``x_sigma``.
        x0, noise: ``[B, C, H, L]`` clean latents and the noise used to build ``x_sigma``.
        sigma: ``[B]``.
        mask: ``[B, L]`` frame mask (1 = valid), or None for all frames.
    Equals the sigma²-weighted MSE of ``v`` against ``noise − x0``.
    """
    v = model_velocity.float()
    x0 = x0.float()
    s = sigma.float().reshape(-1, *([1] * (x0.ndim - 1)))
    x_sigma = s * noise.float() + (1.0 - s) * x0
    err = (x_sigma - s * v - x0).square()
    if mask is None:
        return err.flatten(1).mean(1).mean()
    m = mask.float().reshape(mask.shape[0], *([1] * (x0.ndim - 2)), mask.shape[-1]).expand_as(err)
    per_sample = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    return per_sample.mean()


@dataclass
class ConditionInputs:
    """The DiT's condition inputs for one batch (``ACEStepTransformer.encode`` arguments)."""

    text_states: Tensor  # [B, Lt, D]
    text_mask: Tensor  # [B, Lt]
    speaker_embeds: Tensor  # [B, S]
    lyric_ids: Tensor  # [B, Ll]
    lyric_mask: Tensor  # [B, Ll]


def apply_condition_dropout(
    cond: ConditionInputs,
    generator: torch.Generator,
    *,
    p_text: float = 0.15,
    p_lyric: float = 0.15,
    p_speaker: float = 0.5,
) -> tuple[ConditionInputs, dict[str, Tensor]]:
    """Zero conditions per sample, independently (docs/reference_behaviour.md#r7).

    Text states are zeroed with ``p_text`` (the text mask is kept), the speaker embedding with
    ``p_speaker``, lyric ids AND lyric mask with ``p_lyric``. Returns the new inputs and the boolean
    ``[B]`` drop decisions ``{"text", "lyric", "speaker"}``.
    """
    b = cond.text_states.shape[0]
    drops = {
        name: torch.rand(b, generator=generator) < p
        for name, p in (("text", p_text), ("lyric", p_lyric), ("speaker", p_speaker))
    }

    def keep(x: Tensor, dropped: Tensor) -> Tensor:
        k = (~dropped).to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x * k

    out = replace(
        cond,
        text_states=keep(cond.text_states, drops["text"]),
        speaker_embeds=keep(cond.speaker_embeds, drops["speaker"]),
        lyric_ids=keep(cond.lyric_ids, drops["lyric"]),
        lyric_mask=keep(cond.lyric_mask, drops["lyric"]),
    )
    return out, drops


def repa_loss(projected: Tensor, ssl_features: Tensor, ssl_mask: Tensor | None = None) -> Tensor:
    """Representation alignment: ``1 − cos`` between projected DiT tokens and SSL features, averaged.

    ``projected [B, L, D]`` is linearly interpolated along time to the SSL length ``T`` of
    ``ssl_features [B, T, D]``; ``ssl_mask [B, T]`` (1 = valid frame) excludes padding. The official
    trainer minimises ``−cos``; this differs by the constant 1 (same gradient).
    """
    proj = projected.float()
    target = ssl_features.float().to(proj.device)
    if proj.shape[1] != target.shape[1]:
        proj = F.interpolate(proj.transpose(1, 2), size=target.shape[1], mode="linear", align_corners=False)
        proj = proj.transpose(1, 2)
    cos = F.cosine_similarity(proj, target, dim=-1, eps=1e-8)  # [B, T]
    if ssl_mask is None:
        return (1.0 - cos).mean()
    m = ssl_mask.float().to(cos.device)
    per_sample = ((1.0 - cos) * m).sum(1) / m.sum(1).clamp_min(1.0)
    return per_sample.mean()


def velocity_loss(model_velocity: Tensor, x0: Tensor, noise: Tensor, mask: Tensor | None = None) -> Tensor:
    """ACE-Step 1.5's flow-matching loss: MSE of ``v`` against ``noise − x0`` (time-major ``[B, T, C]``).

    ``mask [B, T]`` (1 = valid frame) leaves padded frames out: per-sample mean over valid frames, then the
    batch mean. Without padding this is the official ``F.mse_loss(v, noise − x0)``.
    """
    err = (model_velocity.float() - (noise.float() - x0.float())).square()
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)[..., None].expand_as(err)
    return ((err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)).mean()
