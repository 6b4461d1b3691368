"""Attention building blocks against independent float64 references (no fixtures needed).

RoPE (with the official pairing quirk) against a complex-multiply form, ReLU linear self-attention against the
naive O(L^2) kernel, masked softmax cross-attention, ESPnet relative positions, Transformer-XL relative
attention and the timestep sinusoid against direct formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from songflow.nn.attention import (
    CrossAttention,
    LinearSelfAttention,
    RotaryEmbedding,
    apply_rope,
    check_query_scale,
    rope_table,
)
from songflow.nn.conformer import RelPositionSelfAttention, relative_shift
from songflow.nn.embeddings import relative_position_table, timestep_sinusoid


def _rng_tensor(rng: np.random.RandomState, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape) * scale)


def _rope_reference(x: np.ndarray, theta: float) -> np.ndarray:
    """Complex-multiply form of the official pairing: pair (2k, 2k+1) is z = x[2k] + i x[2k+1]; the even
    output is Re(z e^{i p f_a}), the odd output Im(z e^{i p f_b}), f_a/f_b = inv_freq[(2k)/(2k+1) mod d/2]."""
    seq, d = x.shape[-2], x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    pos = np.arange(seq, dtype=np.float64)[:, None]
    f_a = inv[(2 * np.arange(d // 2)) % (d // 2)]
    f_b = inv[(2 * np.arange(d // 2) + 1) % (d // 2)]
    z = x[..., 0::2] + 1j * x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = (z * np.exp(1j * pos * f_a)).real
    out[..., 1::2] = (z * np.exp(1j * pos * f_b)).imag
    return out


@pytest.mark.parametrize("head_dim", [8, 32, 128])
def test_rope_matches_complex_reference(head_dim: int) -> None:
    rng = np.random.RandomState(0)
    x = rng.standard_normal((2, 3, 50, head_dim))  # (B, H, S, d)
    cos, sin = rope_table(50, head_dim, 1e6, dtype=torch.float64)
    ours = apply_rope(torch.from_numpy(x), cos, sin)
    # apply_rope computes in float32 by design; compare at float32 precision
    np.testing.assert_allclose(ours.numpy(), _rope_reference(x, 1e6), atol=2e-5, rtol=0)


def test_rope_table_layout_and_pairing_quirk() -> None:
    cos, sin = rope_table(7, 16, 10000.0, dtype=torch.float64)
    inv = 10000.0 ** (-np.arange(0, 16, 2) / 16)
    expected = np.outer(np.arange(7), np.concatenate([inv, inv]))  # half-split layout
    np.testing.assert_allclose(cos.numpy(), np.cos(expected), atol=1e-6)
    np.testing.assert_allclose(sin.numpy(), np.sin(expected), atol=1e-6)
    # the quirk: the two members of a pair use different frequencies, so the pair norm is NOT preserved
    x = torch.ones(1, 7, 16, dtype=torch.float64)
    y = apply_rope(x, cos, sin)
    pair_norm = y.unflatten(-1, (8, 2)).pow(2).sum(-1)
    assert not torch.allclose(pair_norm, torch.full_like(pair_norm, 2.0), atol=1e-3)
    # position 0 is the identity
    torch.testing.assert_close(y[:, 0], x[:, 0])


def test_rotary_embedding_cache_and_dtype() -> None:
    rot = RotaryEmbedding(16, 1e6)
    a = rot(5, torch.device("cpu"), torch.float32)
    b = rot(5, torch.device("cpu"), torch.float32)
    assert a[0] is b[0]
    c = rot(5, torch.device("cpu"), torch.bfloat16)
    assert c[0].dtype == torch.bfloat16 and c[0].shape == (5, 16)
    assert not list(rot.buffers()) and not rot.state_dict()


def _naive_linear_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, eps: float) -> np.ndarray:
    """out_s = sum_j v_j w_sj / (sum_j w_sj + eps), w_sj = relu(q_s) . relu(k_j); explicit L x L weights."""
    w = np.maximum(q, 0) @ np.maximum(k, 0).swapaxes(-1, -2)  # (B, H, S, S)
    return (w @ v) / (w.sum(-1, keepdims=True) + eps)


def _project(lin: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    return x @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()


def _split(x: np.ndarray, heads: int) -> np.ndarray:
    b, s, _ = x.shape
    return x.reshape(b, s, heads, -1).transpose(0, 2, 1, 3)  # (B, H, S, d)


def _merge(x: np.ndarray) -> np.ndarray:
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


@pytest.mark.parametrize("use_mask", [False, True])
def test_linear_self_attention_matches_naive(use_mask: bool) -> None:
    torch.manual_seed(0)
    heads, head_dim, dim, seq = 2, 8, 16, 11
    attn = LinearSelfAttention(dim, heads, head_dim).double()
    rng = np.random.RandomState(1)
    x = rng.standard_normal((2, seq, dim))
    mask = np.ones((2, seq))
    if use_mask:
        mask[1, 7:] = 0
    rope = rope_table(seq, head_dim, 1e6, dtype=torch.float64)
    ours = attn(torch.from_numpy(x), rope=rope, mask=torch.from_numpy(mask) if use_mask else None)

    q = _rope_reference(_split(_project(attn.to_q, x), heads), 1e6) * mask[:, None, :, None]
    k = _rope_reference(_split(_project(attn.to_k, x), heads), 1e6) * mask[:, None, :, None]
    v = _split(_project(attn.to_v, x), heads) * mask[:, None, :, None]
    ref = _project(attn.to_out[0], _merge(_naive_linear_attention(q, k, v, 1e-15)))
    np.testing.assert_allclose(ours.detach().numpy(), ref, atol=1e-5, rtol=1e-5)


def test_linear_self_attention_query_scale_cancels() -> None:
    torch.manual_seed(0)
    attn = LinearSelfAttention(16, 2, 8).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    rope = rope_table(9, 8, 1e6, dtype=torch.float64)
    base = attn(x, rope=rope)
    assert torch.equal(attn(x, rope=rope, query_scale=1.0), base)
    # ReLU is positively homogeneous: numerator and denominator scale together (up to the 1e-15 eps);
    # the kernel runs in float32, hence the tolerance
    torch.testing.assert_close(attn(x, rope=rope, query_scale=0.01), base, atol=1e-6, rtol=1e-5)


def test_cross_attention_matches_naive_softmax() -> None:
    torch.manual_seed(0)
    heads, head_dim, dim, seq, seq_c = 2, 8, 16, 6, 9
    attn = CrossAttention(dim, heads, head_dim).double()
    rng = np.random.RandomState(2)
    x, ctx = rng.standard_normal((2, seq, dim)), rng.standard_normal((2, seq_c, dim))
    ctx_mask = np.ones((2, seq_c))
    ctx_mask[1, 4:] = 0
    lat_mask = np.ones((2, seq))
    lat_mask[0, -1] = 0
    tau = 0.3
    ours = (
        attn(
            torch.from_numpy(x),
            torch.from_numpy(ctx),
            rope=rope_table(seq, head_dim, 1e6, dtype=torch.float64),
            context_rope=rope_table(seq_c, head_dim, 1e6, dtype=torch.float64),
            context_mask=torch.from_numpy(ctx_mask),
            mask=torch.from_numpy(lat_mask),
            query_scale=tau,
        )
        .detach()
        .numpy()
    )

    q = _rope_reference(_split(_project(attn.to_q, x) * tau, heads), 1e6)
    k = _rope_reference(_split(_project(attn.to_k, ctx), heads), 1e6)  # keys rotated with context positions
    v = _split(_project(attn.to_v, ctx), heads)
    scores = (
        q @ k.swapaxes(-1, -2) / math.sqrt(head_dim) + np.where(ctx_mask > 0, 0.0, -np.inf)[:, None, None, :]
    )
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    merged = _merge(weights @ v) * lat_mask[:, :, None]
    ref = _project(attn.to_out[0], merged)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)  # RoPE is applied in float32 by design
    # a masked latent row attends to nothing: only the output bias remains
    np.testing.assert_allclose(ours[0, -1], attn.to_out[0].bias.detach().numpy(), atol=1e-12)


def test_query_scale_validation() -> None:
    assert check_query_scale(None, 4) == {}
    assert check_query_scale({-1: 0.5, 0: 1}, 4) == {3: 0.5, 0: 1.0}
    with pytest.raises(ValueError, match="out of range"):
        check_query_scale({4: 0.5}, 4)


def test_relative_position_table_formula() -> None:
    length, dim = 5, 8
    table = relative_position_table(length, dim, dtype=torch.float64)[0].numpy()
    assert table.shape == (2 * length - 1, dim)
    for m in range(2 * length - 1):
        r = (length - 1) - m
        for k in range(dim // 2):
            w = math.exp(-2 * k * math.log(10000.0) / dim)
            assert table[m, 2 * k] == pytest.approx(math.sin(r * w), abs=1e-6)
            assert table[m, 2 * k + 1] == pytest.approx(math.cos(r * w), abs=1e-6)


@pytest.mark.parametrize("length", [1, 2, 6])
def test_relative_shift_selects_offset_i_minus_j(length: int) -> None:
    raw = torch.randn(2, 3, length, 2 * length - 1)
    shifted = relative_shift(raw)
    for i in range(length):
        for j in range(length):
            assert torch.equal(shifted[..., i, j], raw[..., i, (length - 1) - (i - j)])


def test_rel_position_attention_matches_naive_and_handles_empty_rows() -> None:
    torch.manual_seed(0)
    dim, heads, length = 16, 4, 6
    d_k = dim // heads
    attn = RelPositionSelfAttention(dim, heads).double()
    torch.nn.init.normal_(attn.pos_bias_u)
    torch.nn.init.normal_(attn.pos_bias_v)
    x = torch.randn(3, length, dim, dtype=torch.float64)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, :] = False  # fully masked: attention contributes zeros
    pos = relative_position_table(length, dim, dtype=torch.float64)
    tau = 0.5
    ours = attn(x, pos, mask, query_scale=tau)

    with torch.no_grad():
        q = (attn.linear_q(x) * tau).view(3, length, heads, d_k)
        k = attn.linear_k(x).view(3, length, heads, d_k)
        v = attn.linear_v(x).view(3, length, heads, d_k)
        p = attn.linear_pos(pos)[0].view(2 * length - 1, heads, d_k)
        ref = torch.zeros(3, length, heads, d_k, dtype=torch.float64)
        for b in range(3):
            for h in range(heads):
                for i in range(length):
                    keys = [j for j in range(length) if mask[b, j]]
                    if not keys:
                        continue
                    s = torch.stack(
                        [
                            (
                                (q[b, i, h] + attn.pos_bias_u[h]) @ k[b, j, h]
                                + (q[b, i, h] + attn.pos_bias_v[h]) @ p[(length - 1) - (i - j), h]
                            )
                            / math.sqrt(d_k)
                            for j in keys
                        ]
                    )
                    w = torch.softmax(s, 0)
                    ref[b, i, h] = sum(w[n] * v[b, j, h] for n, j in enumerate(keys))
        ref = attn.linear_out(ref.flatten(2))
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours[2], attn.linear_out.bias.expand(length, dim))

    # gradients stay finite for the fully masked row (training drops whole lyric masks)
    x.requires_grad_(True)
    attn(x, pos, mask).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_timestep_sinusoid_formula() -> None:
    t = torch.tensor([0.0, 12.25, 873.5, 1000.0])
    emb = timestep_sinusoid(t, 256)
    assert emb.dtype == torch.float32 and emb.shape == (4, 256)
    freqs = np.exp(-math.log(10000.0) * np.arange(128) / 128)
    args = t.double().numpy()[:, None] * freqs[None]
    np.testing.assert_allclose(emb.numpy(), np.concatenate([np.cos(args), np.sin(args)], -1), atol=2e-4)
    np.testing.assert_allclose(emb[0].numpy(), np.r_[np.ones(128), np.zeros(128)])
