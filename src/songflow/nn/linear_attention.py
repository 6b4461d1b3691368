"""ReLU linear attention (the Sana "LiteLA" kernel), used by the DiT self-attention and the DCAE.

out_s = sum_j v_j (phi(k_j) . phi(q_s)) / (sum_j phi(k_j) . phi(q_s) + eps), with phi = ReLU, computed in
float32 in O(S * d^2): the d x d summary K^T V is built once and applied to every query.
"""

from __future__ import annotations

from torch import Tensor


def relu_linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = 1e-15) -> Tensor:
    """Non-causal ReLU linear attention.

    Args:
        q, k: ``[B, H, S, d]`` queries and keys (ReLU is applied here).
        v: ``[B, H, S, e]`` values.
    Returns:
        ``[B, H, S, e]`` in float32 (the caller casts back to its activation dtype).
    """
    q = q.float().relu()
    k = k.float().relu()
    v = v.float()
    kv = k.transpose(-1, -2) @ v  # (B, H, d, e)
    k_sum = k.sum(dim=-2, keepdim=True)  # (B, H, 1, d)
    num = q @ kv  # (B, H, S, e)
    den = q @ k_sum.transpose(-1, -2)  # (B, H, S, 1)
    return num / (den + eps)
