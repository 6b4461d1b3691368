"""Retake, repaint, extend and audio2audio invariants with a fake velocity model (no weights).

Invariants (docs/architecture.md#testing): repaint keeps the unmasked frames exactly; extend has exactly
``left + L + right`` frames, also past the window limit, and keeps the source; audio2audio with strength 1
returns the reference; retake with variance 0 is the original run; a batch equals its singles; bad inputs
raise ConfigError.
"""

from __future__ import annotations

import pytest
import torch

from songflow.errors import ConfigError
from songflow.models.acestep_v1.transformer import Conditions
from songflow.requests import GenerationParams
from songflow.sampling.guidance import guidance_interval_bounds
from songflow.sampling.noise import make_generators
from songflow.tasks.audio2audio import build_audio2audio_plan
from songflow.tasks.extend import ExtendWindow, plan_extend_windows, run_extend
from songflow.tasks.plan import ConditionSet, run_plan
from songflow.tasks.repaint import build_repaint_plan
from songflow.tasks.retake import build_retake_plan
from songflow.tasks.setup import TaskContext
from songflow.tasks.text2music import build_text2music_plan

SAMPLERS = ["euler", "heun", "pingpong"]
SHAPE = (8, 16)


class FakeModel:
    """A velocity that mixes neighbouring frames (so context matters) and depends on the condition.

    Records the length and batch of every call. Rows of a batch are independent.
    """

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, x, sigma, cond, *, query_scale=None):
        self.calls.append((x.shape[0], x.shape[-1]))
        c = cond.states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        s = sigma.view(-1, 1, 1, 1)
        return 0.6 * x - 0.3 * torch.roll(x, 1, dims=-1) + 0.2 * c + 0.1 * s * x.mean(dim=2, keepdim=True)


def _conds(batch: int) -> ConditionSet:
    def cond(v: float) -> Conditions:
        return Conditions(states=torch.full((batch, 3, 4), v), mask=torch.ones(batch, 3))

    return ConditionSet(cond=cond(0.5), uncond=cond(-0.25))


def _ctx(batch=1, seeds=None, retake_seeds=None, **params) -> TaskContext:
    params = {"steps": 6, "guidance_interval": 1.0, "guidance_scale": 5.0, **params}
    seeds = seeds or list(range(1, batch + 1))
    retake = make_generators(retake_seeds) if retake_seeds else None
    gens = make_generators(seeds)
    return TaskContext(FakeModel(), _conds(len(seeds)), GenerationParams(**params), gens, retake)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# repaint


def _repaint(ctx, src, start, end, variance, noise, retake):
    plan = build_repaint_plan(
        ctx,
        src_latents=src,
        start_frame=start,
        end_frame=end,
        variance_frac=variance,
        noise=noise,
        retake_noise=retake,
    )
    return run_plan(plan)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("variance", [0.3, 1.0])
def test_repaint_keeps_the_unmasked_frames_exactly(sampler, variance):
    src, noise, retake = _randn(1, *SHAPE, 20), _randn(2, *SHAPE, 20, seed=1), _randn(2, *SHAPE, 20, seed=2)
    out = _repaint(_ctx(batch=2, sampler=sampler), src, 5, 12, variance, noise, retake)
    assert out.shape == (2, *SHAPE, 20)
    outside = torch.ones(20, dtype=torch.bool)
    outside[5:12] = False
    assert torch.equal(out[..., outside], src.expand(2, -1, -1, -1)[..., outside])
    assert (out[..., 5:12] - src[..., 5:12]).abs().min() > 0  # the window was regenerated


def test_repaint_steps_start_at_n_min_and_guidance_uses_the_official_index():
    n, variance, interval = 8, 0.6, 0.5
    ctx = _ctx(steps=n, guidance_interval=interval)
    plan = build_repaint_plan(
        ctx,
        src_latents=_randn(1, *SHAPE, 10),
        start_frame=2,
        end_frame=6,
        variance_frac=variance,
        noise=_randn(1, *SHAPE, 10, seed=1),
        retake_noise=_randn(1, *SHAPE, 10, seed=2),
    )
    n_min = int(n * (1 - variance))
    assert len(plan.sigmas) - 1 == n - n_min
    run_plan(plan)
    start, end = guidance_interval_bounds(n, interval)
    guided = [k for k, (b, _) in enumerate(ctx.model.calls) if b == 2]
    assert guided == [i - n_min for i in range(n_min, n) if start <= i < end]


def test_repaint_with_variance_zero_returns_the_source():
    src = _randn(1, *SHAPE, 10)
    out = _repaint(_ctx(), src, 2, 6, 0.0, _randn(1, *SHAPE, 10, seed=1), _randn(1, *SHAPE, 10, seed=2))
    assert torch.equal(out, src)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_repaint_batch_equals_singles(sampler):
    src, noise, retake = _randn(1, *SHAPE, 12), _randn(3, *SHAPE, 12, seed=1), _randn(3, *SHAPE, 12, seed=2)
    batch = _repaint(_ctx(seeds=[7, 8, 9], sampler=sampler), src, 3, 9, 0.7, noise, retake)
    for i, seed in enumerate([7, 8, 9]):
        single = _repaint(
            _ctx(seeds=[seed], sampler=sampler), src, 3, 9, 0.7, noise[i : i + 1], retake[i : i + 1]
        )
        torch.testing.assert_close(batch[i : i + 1], single, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("start", "end", "variance", "message"),
    [
        (4, 4, 0.5, "is empty"),
        (6, 2, 0.5, "is empty"),
        (-1, 5, 0.5, "outside"),
        (3, 11, 0.5, "outside"),
        (2, 5, 1.5, "variance_frac"),
        (2, 5, -0.1, "variance_frac"),
    ],
)
def test_repaint_rejects_bad_windows_and_variance(start, end, variance, message):
    noise = _randn(1, *SHAPE, 10)
    with pytest.raises(ConfigError, match=message):
        _repaint(_ctx(), _randn(1, *SHAPE, 10), start, end, variance, noise, noise)


def test_repaint_rejects_mismatched_shapes():
    with pytest.raises(ConfigError, match="retake_noise"):
        _repaint(_ctx(), _randn(1, *SHAPE, 10), 2, 5, 0.5, _randn(1, *SHAPE, 10), _randn(1, *SHAPE, 9))
    with pytest.raises(ConfigError, match="src_latents"):
        _repaint(_ctx(), _randn(1, *SHAPE, 11), 2, 5, 0.5, _randn(1, *SHAPE, 10), _randn(1, *SHAPE, 10))


# ----------------------------------------------------------------------------------------------------
# retake


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_retake_with_variance_zero_is_the_original_run(sampler):
    noise, retake = _randn(2, *SHAPE, 9, seed=1), _randn(2, *SHAPE, 9, seed=2)
    original = run_plan(build_text2music_plan(_ctx(batch=2, sampler=sampler), noise))
    again = run_plan(
        build_retake_plan(_ctx(batch=2, sampler=sampler), noise=noise, retake_noise=retake, variance_frac=0.0)
    )
    assert torch.equal(again, original)
    other = run_plan(
        build_retake_plan(_ctx(batch=2, sampler=sampler), noise=noise, retake_noise=retake, variance_frac=0.5)
    )
    assert (other - original).abs().max() > 1e-3


def test_retake_rejects_bad_input():
    noise = _randn(1, *SHAPE, 9)
    with pytest.raises(ConfigError, match="variance_frac"):
        build_retake_plan(_ctx(), noise=noise, retake_noise=noise, variance_frac=2.0)
    with pytest.raises(ConfigError, match="retake_noise"):
        build_retake_plan(_ctx(), noise=noise, retake_noise=noise[..., :5], variance_frac=0.5)


# ----------------------------------------------------------------------------------------------------
# audio2audio


def _a2a(ctx, ref, strength, noise):
    return build_audio2audio_plan(ctx, ref_latents=ref, strength_frac=strength, noise=noise)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("legacy", [True, False])
def test_audio2audio_strength_one_returns_the_reference(sampler, legacy):
    ref, noise = _randn(1, *SHAPE, 9), _randn(2, *SHAPE, 9, seed=1)
    ctx = _ctx(batch=2, sampler=sampler, legacy_double_shift=legacy)
    plan = _a2a(ctx, ref, 1.0, noise)
    assert len(plan.sigmas) == 1
    assert torch.equal(run_plan(plan), ref.expand(2, -1, -1, -1))
    assert ctx.model.calls == []


def test_audio2audio_steps_noise_level_and_guidance_interval():
    n, strength = 8, 0.5
    ref, noise = _randn(1, *SHAPE, 9), _randn(1, *SHAPE, 9, seed=1)
    ctx = _ctx(steps=n, guidance_interval=0.5)
    plan = _a2a(ctx, ref, strength, noise)
    n_short = int((1 - strength) * n)
    assert len(plan.sigmas) - 1 == n_short
    # official: noise level s(0.5) = 0.75 while the schedule starts at s(s(0.5)) = 0.9
    torch.testing.assert_close(plan.x_init, 0.25 * ref + 0.75 * noise)
    assert float(plan.sigmas[0]) == pytest.approx(0.9)
    run_plan(plan)
    start, end = guidance_interval_bounds(n_short, 0.5)
    assert [k for k, (b, _) in enumerate(ctx.model.calls) if b == 2] == list(range(start, end))


def test_audio2audio_strength_zero_is_text2music():
    ref, noise = _randn(1, *SHAPE, 9), _randn(1, *SHAPE, 9, seed=1)
    a2a = run_plan(_a2a(_ctx(), ref, 0.0, noise))
    t2m = run_plan(build_text2music_plan(_ctx(), noise))
    torch.testing.assert_close(a2a, t2m, rtol=0, atol=1e-6)


@pytest.mark.parametrize("strength", [-0.1, 1.2, float("nan")])
def test_audio2audio_rejects_strength_outside_0_1(strength):
    with pytest.raises(ConfigError, match="strength_frac"):
        _a2a(_ctx(), _randn(1, *SHAPE, 9), strength, _randn(1, *SHAPE, 9))


# ----------------------------------------------------------------------------------------------------
# extend


def _extend(ctx, src, left, right, max_frames=16, **kw):
    return run_extend(ctx, src_latents=src, left_frames=left, right_frames=right, max_frames=max_frames, **kw)


@pytest.mark.parametrize(
    ("n_src", "left", "right"),
    [(10, 4, 0), (10, 0, 5), (10, 3, 3), (10, 40, 0), (10, 0, 40), (10, 40, 40), (25, 40, 7), (30, 1, 1)],
)
def test_extend_length_and_source_are_exact(n_src, left, right):
    ctx = _ctx(batch=2, retake_seeds=[11, 12])
    src = _randn(1, *SHAPE, n_src)
    out = _extend(ctx, src, left, right)
    assert out.shape == (2, *SHAPE, left + n_src + right)
    assert torch.equal(out[..., left : left + n_src], src.expand(2, -1, -1, -1))
    new = torch.cat([out[..., :left], out[..., left + n_src :]], dim=-1)
    assert new.abs().amin(dim=(0, 1, 2)).min() > 0  # every new frame was generated
    assert max(length for _, length in ctx.model.calls) <= 16  # no run past max_frames


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_extend_every_sampler_keeps_the_source(sampler):
    src = _randn(1, *SHAPE, 10)
    out = _extend(_ctx(sampler=sampler, retake_seeds=[5]), src, 20, 20)
    assert out.shape[-1] == 50 and torch.equal(out[..., 20:30], src)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("left", "right"), [(3, 4), (40, 40)])
def test_extend_batch_equals_singles_and_seeds_reproduce(sampler, left, right):
    src = _randn(1, *SHAPE, 10)
    batch = _extend(_ctx(seeds=[1, 2, 3], retake_seeds=[4, 5, 6], sampler=sampler), src, left, right)
    for i in range(3):
        single = _extend(_ctx(seeds=[1 + i], retake_seeds=[4 + i], sampler=sampler), src, left, right)
        torch.testing.assert_close(batch[i : i + 1], single, rtol=0, atol=1e-6)
    again = _extend(_ctx(seeds=[1, 2, 3], retake_seeds=[4, 5, 6], sampler=sampler), src, left, right)
    assert torch.equal(again, batch)


def test_extend_single_window_is_a_repaint_of_the_padded_source():
    """Within max_frames extend = repaint (variance 1) of [zeros | src | zeros] with mask on the padding."""
    src = _randn(1, *SHAPE, 10)
    noise, retake = _randn(1, *SHAPE, 10, seed=1), _randn(1, *SHAPE, 10, seed=2)
    out = _extend(_ctx(), src, 3, 4, max_frames=17, reference_noise=(noise, retake))
    from songflow.tasks.repaint import build_masked_plan

    padded = torch.nn.functional.pad(src, (3, 4))
    mask = torch.zeros(17, dtype=torch.bool)
    mask[:3] = mask[-4:] = True
    z0 = torch.cat([retake[..., :3], noise, retake[..., -4:]], dim=-1)
    plan = build_masked_plan(_ctx(), src_latents=padded, mask=mask, z0=z0, variance_frac=1.0)
    assert torch.equal(out, run_plan(plan))


def test_extend_noise_fn_is_called_once_per_window_with_its_length():
    calls = []

    def noise_fn(window, n_frames):
        calls.append((window, n_frames))
        return _randn(1, *SHAPE, n_frames, seed=window), _randn(1, *SHAPE, n_frames, seed=100 + window)

    out = _extend(_ctx(), _randn(1, *SHAPE, 10), 0, 40, noise_fn=noise_fn)
    windows = plan_extend_windows(10, 0, 40, 16)
    assert calls == [(w, win.n_frames) for w, win in enumerate(windows)]
    assert out.shape[-1] == 50


def test_extend_windows_cover_each_new_frame_once_with_context():
    max_frames = 16
    grid = [
        (n, lf, r, c)
        for n in (1, 5, 16, 40)
        for lf in (0, 1, 9, 40)
        for r in (0, 3, 40)
        for c in (None, 1, 12)
    ]
    for n_src, left, right, context in grid:
        if left == right == 0:
            continue
        windows = plan_extend_windows(n_src, left, right, max_frames, context)
        known = set(range(left, left + n_src))
        wanted_context = max_frames // 2 if context is None else context
        for win in windows:
            assert 0 <= win.start < win.stop <= left + n_src + right and win.n_frames <= max_frames
            frames = list(range(win.start, win.stop))
            new = frames[: win.new_left] + frames[win.n_frames - win.new_right :]
            ctx_frames = frames[win.new_left : win.n_frames - win.new_right]
            assert new and ctx_frames and set(ctx_frames) <= known and not set(new) & known
            if len(windows) > 1:  # one-sided windows keep at least min(known, min_context) context frames
                assert len(ctx_frames) >= min(len(known), wanted_context)
            known |= set(new)
        assert known == set(range(left + n_src + right)), (n_src, left, right, context)
    # within max_frames: one window over everything (the official single-run extend)
    assert plan_extend_windows(10, 3, 3, 16) == [ExtendWindow(0, 16, 3, 3)]


@pytest.mark.parametrize(
    ("left", "right", "kw", "message"),
    [
        (-1, 3, {}, "left_frames"),
        (2, -3, {}, "right_frames"),
        (0, 0, {}, "nothing to add"),
        (2, 2, {"max_frames": 1}, "max_frames"),
        (2, 2, {"min_context_frames": 16}, "min_context_frames"),
        (2, 2, {"min_context_frames": 0}, "min_context_frames"),
        (20, 0, {"reference_noise": (torch.zeros(1, 8, 16, 10),) * 2}, "single window"),
        (2, 0, {"reference_noise": (torch.zeros(1, 8, 16, 9),) * 2}, "source length"),
    ],
)
def test_extend_rejects_bad_input(left, right, kw, message):
    kw = {"max_frames": 16, **kw}
    with pytest.raises(ConfigError, match=message):
        run_extend(_ctx(), src_latents=_randn(1, *SHAPE, 10), left_frames=left, right_frames=right, **kw)
