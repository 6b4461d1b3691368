"""Loudness: ITU-R BS.1770-4 integrated loudness (LUFS), the one implementation songflow uses."""

from __future__ import annotations

import math

import numpy as np


def k_weighting_filters(sr: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two BS.1770 K-weighting stages (high shelf, then high pass) designed for ``sr``."""
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / sr)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf_b = np.array(
        [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]
    )
    shelf_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0])
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / sr)
    a0 = 1.0 + k / q + k * k
    hp_b = np.array([1.0, -2.0, 1.0])
    hp_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0])
    return [(shelf_b, shelf_a), (hp_b, hp_a)]


def integrated_loudness(x: np.ndarray, sr: int) -> float:
    """BS.1770-4 integrated loudness (LUFS) of ``x`` [C, T]: K-weighting, 400 ms blocks with 75 % overlap,
    absolute gate -70 LUFS and relative gate -10 LU. Returns -inf for silence."""
    from scipy.signal import lfilter

    y = np.asarray(x, dtype=np.float64)
    for b, a in k_weighting_filters(sr):
        y = lfilter(b, a, y, axis=-1)
    block, hop = int(round(0.4 * sr)), int(round(0.1 * sr))
    if y.shape[-1] < block:
        y = np.pad(y, ((0, 0), (0, block - y.shape[-1])))
    n_blocks = 1 + (y.shape[-1] - block) // hop
    csum = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(y * y, axis=-1)], axis=-1)
    starts = np.arange(n_blocks) * hop
    z = (csum[:, starts + block] - csum[:, starts]) / block  # [C, blocks] mean square
    power = z.sum(axis=0)
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10.0 * np.log10(power)
    gated = power[lk > -70.0]
    if gated.size == 0:
        return float("-inf")
    rel = -0.691 + 10.0 * math.log10(gated.mean()) - 10.0
    gated = power[(lk > -70.0) & (lk > rel)]
    return float(-0.691 + 10.0 * math.log10(gated.mean()))
