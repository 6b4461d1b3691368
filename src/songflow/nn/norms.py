"""Normalisation layers shared by the DiT and the DCAE."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """Normalise the last dim by its root mean square, computed in float32 and cast back to x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """RMS norm over the last dim, with optional affine ``weight`` (and ``bias``), as diffusers' RMSNorm.

    With ``elementwise_affine=False`` it has no parameters (the DiT's norm1/norm2/norm_final).
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = rms_norm(x, self.eps)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y
