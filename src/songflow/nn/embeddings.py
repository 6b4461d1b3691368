"""Sinusoidal embeddings: the DiT timestep embedding and the lyric encoder's relative positions.

* :func:`timestep_sinusoid` / :class:`TimestepSinusoid` — the DDPM/diffusers ``Timesteps`` feature map used by
  the DiT (256 features, ``flip_sin_to_cos=True``: cosines first), computed in float32.
* :class:`TimestepEmbedding` — Linear → SiLU → Linear on those features (module names ``linear_1`` and
  ``linear_2`` as in the official checkpoint).
* :func:`relative_position_table` — the ESPnet ("rel_pos_espnet") relative positional encoding for a sequence
  of length L: 2L−1 vectors for offsets +(L−1) … 0 … −(L−1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_sinusoid(
    t: Tensor,
    dim: int = 256,
    *,
    max_period: float = 10000.0,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
) -> Tensor:
    """Sinusoidal features of a (diffusion) timestep, in float32.

    With ``half = dim // 2``, ``k = 0 .. half-1``: ``freq_k = exp(-ln(max_period) * k / (half - shift))``,
    ``arg = t * freq_k``; the result is ``[cos(arg), sin(arg)]`` when ``flip_sin_to_cos`` else ``[sin, cos]``
    (an odd ``dim`` gets one zero column at the end). Matches diffusers ``Timesteps`` numerically.

    Args:
        t: ``[B]`` timesteps (the DiT takes ``1000 * sigma``), any float/int dtype.
    Returns:
        ``[B, dim]`` float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepSinusoid(nn.Module):
    """Parameter-free module wrapper of :func:`timestep_sinusoid` (the official ``time_proj``)."""

    def __init__(self, dim: int = 256, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0):
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, t: Tensor) -> Tensor:
        """``[B]`` timesteps → ``[B, dim]`` float32 features."""
        return timestep_sinusoid(
            t, self.dim, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, flip_sin_to_cos={self.flip_sin_to_cos}, freq_shift={self.freq_shift}"


class TimestepEmbedding(nn.Module):
    """MLP on the timestep features: ``linear_2(silu(linear_1(x)))``, ``[B, in_dim] -> [B, dim]``."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def relative_position_table(
    length: int, dim: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """ESPnet relative positional encoding ("rel_pos_espnet") for a sequence of ``length`` tokens.

    Row m (``m = 0 .. 2*length-2``) encodes the relative offset ``r = (length-1) - m``, i.e. the rows run
    from +(length-1) down to −(length-1). For offset r and ``k = 0 .. dim/2-1``, with
    ``w_k = exp(-2k * ln(10000) / dim)``: feature ``2k`` is ``sin(r * w_k)`` and ``2k+1`` is ``cos(r * w_k)``.
    Computed in float32 and cast to ``dtype``.

    Returns:
        ``[1, 2*length-1, dim]``.
    """
    if dim % 2:
        raise ValueError(f"relative_position_table needs an even dim, got {dim}")
    inv = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim)
    )  # (dim/2,)
    offsets = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)  # (2L-1,)
    args = offsets[:, None] * inv[None, :]  # (2L-1, dim/2)
    table = torch.stack([torch.sin(args), torch.cos(args)], dim=-1).flatten(
        -2
    )  # (2L-1, dim), sin/cos interleaved
    return table.to(dtype)[None]
