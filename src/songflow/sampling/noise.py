"""Seeds, per-sample generators and noise (randomness enters only through these).

Every sample of a batch has its own ``torch.Generator``; :func:`randn_per_sample` draws each row from its
own generator, so a batch equals its single-sample runs. On CPU the draws are bit-identical to the
official pipeline's initial noise (diffusers ``randn_tensor`` with a list of generators); on CUDA they
follow PyTorch's CUDA generator, as the official pipeline does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from songflow.errors import ConfigError

__all__ = [
    "SEED_RANGE",
    "make_generators",
    "parse_seeds",
    "randn_per_sample",
    "shared_generator_noise",
    "step_noise_fn",
    "trig_mix",
]

SEED_RANGE = 2**32
"""Random seeds are drawn uniformly from ``0 .. SEED_RANGE - 1`` (as the official pipeline does)."""

_MAX_SEED = 2**64  # torch.Generator.manual_seed accepts 0 .. 2**64 - 1


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"a seed must be an integer, got {seed!r}")
    if not 0 <= seed < _MAX_SEED:
        raise ConfigError(f"a seed must be in [0, 2**64), got {seed}")
    return seed


def _parse_seed_string(text: str) -> list[int] | int | None:
    text = text.strip()
    if not text:
        return None
    if "," in text:
        try:
            return [_check_seed(int(part)) for part in text.split(",")]
        except ValueError as err:  # int() of a non-number; ConfigError is a ValueError too
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"seeds must be comma-separated integers like '1,2,3', got {text!r}") from None
    if text.isdigit():
        return int(text)
    raise ConfigError(f"seeds must be an integer or comma-separated integers like '1,2,3', got {text!r}")


def parse_seeds(seeds: int | str | Sequence[int] | None, batch_size: int) -> list[int]:
    """One seed per batch item, following the official ``set_seeds`` rules.

    * ``"1,2,3"`` (comma list, spaces allowed) or a list/tuple of ints: item ``i`` gets entry ``i``; items
      beyond the list reuse the last entry.
    * a digit string ``"42"`` or an int: every item gets that seed (so their noise is identical).
    * ``None``, ``""`` or ``[]``: an independent random seed in ``0 .. 2**32 - 1`` per item (from the OS
      entropy pool, not the global RNG).

    Unlike the official code, a malformed string or a non-integer / negative entry raises
    :class:`ConfigError` instead of silently falling back to random seeds.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    parsed: list[int] | int | None
    if seeds is None:
        parsed = None
    elif isinstance(seeds, str):
        parsed = _parse_seed_string(seeds)
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        parsed = _check_seed(seeds)
    elif isinstance(seeds, (list, tuple)):
        parsed = [_check_seed(s) for s in seeds] or None
    else:
        raise ConfigError(f"seeds must be an int, a string, a list of ints or None, got {seeds!r}")
    if parsed is None:
        rng = random.SystemRandom()
        return [rng.randrange(SEED_RANGE) for _ in range(batch_size)]
    if isinstance(parsed, int):
        return [parsed] * batch_size
    return [parsed[i] if i < len(parsed) else parsed[-1] for i in range(batch_size)]


def make_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One freshly seeded ``torch.Generator`` on ``device`` per seed."""
    return [torch.Generator(device=device).manual_seed(_check_seed(s)) for s in seeds]


def randn_per_sample(
    shape_per_item: tuple[int, ...],
    generators: Sequence[torch.Generator],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """N(0, 1) noise ``[B, *shape_per_item]``, row ``b`` drawn from ``generators[b]`` (B = len(generators)).

    Each row is one ``torch.randn((1, *shape_per_item))`` call with its own generator, as diffusers'
    ``randn_tensor`` does for a list of generators, so a batch equals the concatenation of its singles.
    """
    if not generators:
        raise ValueError("randn_per_sample needs at least one generator")
    rows = [torch.randn((1, *shape_per_item), generator=g, dtype=dtype, device=device) for g in generators]
    return torch.cat(rows, dim=0)


def shared_generator_noise(
    shape: tuple[int, ...],
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """N(0, 1) noise of the full ``shape`` from ONE generator (official ping-pong: batch item 0's).

    Reproduces ``torch.empty_like(sample).normal_(generator=generator)`` of the official ping-pong
    scheduler. Samples of a batch then depend on each other (docs/reference_behaviour.md#r11); use it
    only for parity.
    """
    return torch.empty(shape, dtype=dtype, device=device).normal_(generator=generator)


def step_noise_fn(
    shape_per_item: tuple[int, ...],
    generators: Sequence[torch.Generator],
    *,
    per_sample: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Callable[[int], Tensor]:
    """A ``noise(i)`` callable for :func:`~songflow.sampling.loop.sample` (fresh noise at every call).

    ``per_sample=True``: every row from its own generator (:func:`randn_per_sample`). ``False``: the whole
    batch from ``generators[0]`` (:func:`shared_generator_noise`, official ping-pong behaviour). The
    generators advance with every call, so draw order matters (the step index is not used).
    """
    gens = list(generators)
    full_shape = (len(gens), *shape_per_item)

    def noise(step_index: int) -> Tensor:
        if per_sample:
            return randn_per_sample(shape_per_item, gens, dtype=dtype, device=device)
        return shared_generator_noise(full_shape, gens[0], dtype=dtype, device=device)

    return noise


def trig_mix(noise: Tensor, retake_noise: Tensor, variance_frac: float) -> Tensor:
    """Trig-flow noise mixing for retake / repaint: ``cos(theta) * noise + sin(theta) * retake_noise``.

    ``theta = variance_frac * pi / 2`` held as a 0-dim tensor in ``noise``'s dtype (as officially), so
    unit variance is kept; variance 0 gives exactly ``noise``, 1 gives ``retake_noise`` (up to
    cos(pi/2) rounding, ~4e-8).
    """
    if not 0.0 <= variance_frac <= 1.0:
        raise ConfigError(f"variance_frac must be in [0, 1], got {variance_frac!r}")
    theta = torch.tensor(variance_frac * math.pi / 2, device=noise.device).to(noise.dtype)
    return torch.cos(theta) * noise + torch.sin(theta) * retake_noise
