"""Guidance combinators and the guidance interval: golden parity (guidance/, pipeline/) and properties."""

from __future__ import annotations

import json
import typing

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, load_tensors
from songflow.errors import ConfigError
from songflow.sampling.guidance import (
    GUIDANCE,
    GUIDANCE_TYPES,
    ApgState,
    GuidanceKind,
    apg,
    cfg,
    cfg_zero_star,
    double_condition,
    guidance_interval_bounds,
    guidance_rule,
    guidance_scale_at,
    validate_guidance_name,
    weighted_terms,
)
from songflow.sampling.schedules import audio2audio_sigmas, oss_sigmas
from songflow.sampling.steppers import count_evals


@pytest.fixture(scope="module")
def guid(golden_dir):
    folder = golden_dir / "guidance"
    return load_tensors(folder / "guidance.safetensors"), json.loads((folder / "guidance.json").read_text())


# ---------------------------------------------------------------------------------------------------
# golden parity: guidance functions on 4 consecutive steps (all bit-exact)


def test_guidance_functions_exact(guid):
    t, meta = guid
    fns = meta["functions"]
    s_t, s_l = fns["double_condition"]["guidance_scale_text"], fns["double_condition"]["guidance_scale_lyric"]
    state = ApgState()
    for k in range(fns["steps"]):
        cond, uncond, text_only = t[f"step{k}/cond"], t[f"step{k}/uncond"], t[f"step{k}/text_only"]
        out = {
            "cfg": cfg(cond, uncond, fns["cfg_strength"]),
            "apg_no_momentum": apg(cond, uncond, fns["apg_guidance_scale"], None)[0],
            "cfg_star": cfg_zero_star(cond, uncond, fns["cfg_star_guidance_scale"], k),
            "cfg_star_no_zero_init": cfg_zero_star(
                cond, uncond, fns["cfg_star_guidance_scale"], k, use_zero_init=False
            ),
            "double_condition": double_condition(cond, text_only, uncond, s_t, s_l),
        }
        out["apg"], state = apg(cond, uncond, fns["apg_guidance_scale"], state)  # one state over 4 steps
        out["apg_running_average"] = state.running_average
        for name, value in out.items():
            assert_close(value, t[f"step{k}/{name}"], rtol=0.0, name=f"step{k}/{name}")


def test_apg_without_state_returns_none(guid):
    t, _ = guid
    out, state = apg(t["step0/cond"], t["step0/uncond"], 15.0, None)
    assert state is None
    # with an empty state the first step equals the momentum-free result
    out2, state2 = apg(t["step0/cond"], t["step0/uncond"], 15.0, ApgState())
    assert torch.equal(out, out2) and torch.equal(state2.running_average, t["step0/cond"] - t["step0/uncond"])


def test_apg_does_not_mutate_state(guid):
    t, _ = guid
    _, s1 = apg(t["step0/cond"], t["step0/uncond"], 15.0, ApgState())
    before = s1.running_average.clone()
    _, s2 = apg(t["step1/cond"], t["step1/uncond"], 15.0, s1)
    assert torch.equal(s1.running_average, before) and s2 is not s1


def test_cfg_star_zero_init_steps(guid):
    t, _ = guid
    for k in (0, 1):
        assert not cfg_zero_star(t[f"step{k}/cond"], t[f"step{k}/uncond"], 5.0, k).any()
    assert cfg_zero_star(t["step2/cond"], t["step2/uncond"], 5.0, 2).abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# golden parity: every guidance-interval case


def _n_for_case(args) -> int:
    """The N the official interval logic uses: user's N (Heun too), len(oss) for oss, int((1-s)N) for a2a."""
    if "oss_steps" in args:
        return len(oss_sigmas(args["oss_steps"])) - 1
    if "audio2audio_strength" in args:
        return len(audio2audio_sigmas(args["infer_steps"], args["audio2audio_strength"])[0]) - 1
    return args["infer_steps"]


def test_every_interval_case(guid):
    _, meta = guid
    cases = meta["intervals"]["cases"]
    assert len(cases) == 14
    for case in cases:
        args = case["args"]
        n = _n_for_case(args)
        assert n == case["logged"]["num_inference_steps"]
        assert guidance_interval_bounds(n, args["guidance_interval"]) == (
            case["logged"]["start_idx"],
            case["logged"]["end_idx"],
        )
        assert count_evals(args["scheduler_type"], n) == case["num_loop_iterations"]
        kwargs = dict(
            interval=args["guidance_interval"],
            decay=args["guidance_interval_decay"],
            min_scale=args["min_guidance_scale"],
        )
        if case["error"]:
            assert case["error"].startswith("ZeroDivisionError")
            with pytest.raises(ConfigError, match="decay"):
                guidance_scale_at(0, n, args["guidance_scale"], **kwargs)
            continue
        scales = [
            guidance_scale_at(i, n, args["guidance_scale"], **kwargs)
            for i in range(case["num_loop_iterations"])
        ]
        guided = [i for i, s in enumerate(scales) if s is not None]
        assert guided == case["guided_loop_indices"], args
        assert [s for s in scales if s is not None] == case["scales"], args  # exact float equality


def test_heun_interval_counts_user_steps():
    # 5 Heun steps = 9 evaluations, but the interval is computed on N = 5: only evaluations 1, 2 guided
    guided = [i for i in range(count_evals("heun", 5)) if guidance_scale_at(i, 5, 15.0) is not None]
    assert guided == [1, 2]


# ---------------------------------------------------------------------------------------------------
# golden parity: re-derive every guided velocity of the official pipeline runs from their passes


PIPELINE_RUNS = [
    "t2m_euler_apg",
    "t2m_heun_apg",
    "t2m_pingpong_apg",
    "t2m_double_condition",
    "t2m_erg_all_off",
    "t2m_euler_cfg_star",
    "repaint",
]


@pytest.mark.parametrize("run", PIPELINE_RUNS)
def test_pipeline_guided_velocities(golden_dir, run):
    folder = golden_dir / "pipeline" / run
    kw = json.loads((folder / "params.json").read_text())["diffusion_kwargs"]
    t = load_tensors(folder / "tensors.safetensors")
    n = kw["infer_steps"]
    indices = sorted({int(k.split("/")[1]) for k in t if k.startswith("steps/")})
    state = ApgState()
    n_guided = 0
    for i in indices:
        scale = guidance_scale_at(
            i,
            n,
            kw["guidance_scale"],
            interval=kw["guidance_interval"],
            decay=kw["guidance_interval_decay"],
            min_scale=kw["min_guidance_scale"],
        )
        assert (scale is not None) == (f"steps/{i:02d}/guided" in t), (run, i)
        if scale is None:
            continue
        cond, uncond = t[f"steps/{i:02d}/v_cond"], t[f"steps/{i:02d}/v_uncond"]
        if kw["guidance_scale_text"] > 1 and kw["guidance_scale_lyric"] > 1:
            v = double_condition(
                cond,
                t[f"steps/{i:02d}/v_text_only"],
                uncond,
                kw["guidance_scale_text"],
                kw["guidance_scale_lyric"],
            )
        elif kw["cfg_type"] == "apg":
            v, state = apg(cond, uncond, scale, state)
        elif kw["cfg_type"] == "cfg":
            v = cfg(cond, uncond, scale)
        else:
            v = cfg_zero_star(cond, uncond, scale, i)
        assert_close(v, t[f"steps/{i:02d}/guided"], rtol=0.0, name=f"{run}/steps/{i}")
        if f"steps/{i:02d}/apg_running_average" in t:
            assert_close(state.running_average, t[f"steps/{i:02d}/apg_running_average"], rtol=0.0)
        n_guided += 1
    assert n_guided > 0


# ---------------------------------------------------------------------------------------------------
# properties


def _tensors(seed: int, shape=(2, 3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g)


seed_st = st.integers(min_value=0, max_value=2**31 - 1)
scale_st = st.floats(min_value=-5.0, max_value=20.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(seed=seed_st, scale=scale_st)
def test_cfg_identities(seed, scale):
    c, u, _ = _tensors(seed)
    assert torch.equal(cfg(c, c, scale), c)
    assert torch.allclose(cfg(c, u, 1.0), c, atol=1e-6)
    assert torch.allclose(cfg(c, u, 0.0), u)


@settings(max_examples=40, deadline=None)
@given(seed=seed_st, scale=scale_st, momentum=st.sampled_from([None, -0.75, 0.5]))
def test_apg_scale_one_is_cond(seed, scale, momentum):
    c, u, _ = _tensors(seed)
    state = None if momentum is None else ApgState(running_average=u - c)
    out, _ = apg(c, u, 1.0, state, momentum=momentum or 0.0)
    assert torch.equal(out, c)


@settings(max_examples=40, deadline=None)
@given(
    seed=seed_st, scale=st.floats(min_value=1.5, max_value=20.0), threshold=st.sampled_from([0.0, 0.5, 2.5])
)
def test_apg_update_orthogonal_to_cond_and_clipped(seed, scale, threshold):
    c, u, _ = _tensors(seed)
    u = u * 3.0  # some slices above the threshold
    out, _ = apg(c, u, scale, None, norm_threshold=threshold)
    update = ((out - c) / (scale - 1)).double()
    dims = (-1, -2)
    dot = (update * c.double()).sum(dim=dims)
    assert dot.abs().max() <= 1e-5 * (update.norm(dim=dims) * c.double().norm(dim=dims)).max()
    if threshold > 0:
        assert update.norm(dim=dims).max() <= threshold * (1 + 1e-5)


def test_apg_eta_one_keeps_the_clipped_difference():
    c, u, _ = _tensors(3)
    out, _ = apg(c, u, 5.0, None, eta=1.0, norm_threshold=0.0)
    assert torch.allclose(out, c + 4.0 * (c - u), atol=1e-5)  # = cfg(c, u, 5)


@settings(max_examples=40, deadline=None)
@given(seed=seed_st, s=scale_st)
def test_double_condition_with_equal_scales_is_cfg(seed, s):
    c, u, t = _tensors(seed)
    assert torch.allclose(double_condition(c, t, u, s, s), cfg(c, u, s), atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=seed_st, scale=scale_st, zero_steps=st.integers(0, 3), i=st.integers(0, 6))
def test_cfg_star_zero_init(seed, scale, zero_steps, i):
    c, u, _ = _tensors(seed)
    out = cfg_zero_star(c, u, scale, i, zero_steps=zero_steps)
    if i <= zero_steps:
        assert not out.any()
    else:
        assert torch.allclose(out, cfg_zero_star(c, u, scale, i, zero_steps=zero_steps, use_zero_init=False))


def test_cfg_star_alpha_one_is_cfg():
    c, _, _ = _tensors(5)
    # uncond parallel to cond with alpha = 1: <c, c> / ||c||^2
    assert torch.allclose(cfg_zero_star(c, c, 7.0, 5), c, atol=1e-5)


def test_weighted_terms():
    c, u, t = _tensors(7)
    assert torch.equal(weighted_terms([(2.0, c)]), 2.0 * c)
    assert torch.allclose(weighted_terms([(0.5, c), (0.25, u), (0.25, t)]), 0.5 * c + 0.25 * u + 0.25 * t)
    with pytest.raises(ValueError):
        weighted_terms([])


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_scale_zero_or_one_is_never_guided(scale):
    assert all(guidance_scale_at(i, 10, scale, interval=1.0) is None for i in range(10))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), g=st.floats(0.0, 1.0), decay=st.floats(0.0, 1.0), gs=st.floats(1.5, 20.0))
def test_interval_properties(n, g, decay, gs):
    start, end = guidance_interval_bounds(n, g)
    assert 0 <= start <= end <= n
    if decay > 0 and end - start == 1:
        with pytest.raises(ConfigError):
            guidance_scale_at(start, n, gs, interval=g, decay=decay)
        return
    scales = [guidance_scale_at(i, n, gs, interval=g, decay=decay, min_scale=3.0) for i in range(n)]
    assert [i for i, s in enumerate(scales) if s is not None] == list(range(start, end))
    guided = [s for s in scales if s is not None]
    if guided:
        assert guided[0] == gs
        assert all(b <= a + 1e-12 for a, b in zip(guided[:-1], guided[1:], strict=True)) or gs < 3.0
        if decay == 1.0 and len(guided) > 1:
            assert guided[-1] == pytest.approx(3.0)


def test_interval_rejects_bad_values():
    with pytest.raises(ConfigError):
        guidance_scale_at(0, 10, 15.0, interval=1.5)
    with pytest.raises(ConfigError):
        guidance_scale_at(0, 10, 15.0, decay=-1.0)


def test_validate_guidance_name():
    assert GUIDANCE_TYPES == ("cfg", "apg", "cfg_star")
    for name in GUIDANCE_TYPES:
        assert validate_guidance_name(name) == name
    with pytest.raises(ConfigError, match="cfg, apg, cfg_star"):
        validate_guidance_name("cfg-star")


# ---------------------------------------------------------------------------------------------------
# the guidance registry


def test_registry_names_are_defined_once():
    from songflow import requests

    assert tuple(GUIDANCE) == GUIDANCE_TYPES == typing.get_args(GuidanceKind)
    assert requests.GUIDANCE_NAMES is GUIDANCE_TYPES
    assert typing.get_type_hints(requests.GenerationParams)["guidance"] == GuidanceKind
    assert [name for name, rule in GUIDANCE.items() if rule.uses_momentum] == ["apg"]
    assert GUIDANCE["apg"].initial_state() == ApgState() and GUIDANCE["cfg"].initial_state() is None


def test_registry_combinators_are_the_guidance_functions():
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(2, 8, 16, 5, generator=g), torch.randn(2, 8, 16, 5, generator=g)
    state = ApgState(torch.randn(2, 8, 16, 5, generator=g))
    out, new = guidance_rule("cfg").combine(cond, uncond, 4.0, 3, state)
    assert torch.equal(out, cfg(cond, uncond, 4.0)) and new is state
    out, new = guidance_rule("cfg_star").combine(cond, uncond, 4.0, 3, state)
    assert torch.equal(out, cfg_zero_star(cond, uncond, 4.0, 3)) and new is state
    assert not guidance_rule("cfg_star").combine(cond, uncond, 4.0, 1, None)[0].any()  # zero init
    out, new = guidance_rule("apg").combine(cond, uncond, 4.0, 3, state)
    ref, ref_state = apg(cond, uncond, 4.0, state)
    assert torch.equal(out, ref) and new is not None and ref_state is not None
    assert torch.equal(new.running_average, ref_state.running_average)


class _CountingModel:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, cond, *, query_scale=None):
        self.calls += 1
        return torch.zeros_like(x)


def test_unknown_kind_raises_in_build_velocity_before_any_model_call():
    from songflow.models.acestep_v1.transformer import Conditions
    from songflow.tasks.plan import ConditionSet, GuidanceSpec, build_velocity

    c = Conditions(states=torch.zeros(1, 2, 4), mask=torch.ones(1, 2))
    model = _CountingModel()
    spec = GuidanceSpec(kind="cfg-zero", scale=7.0, interval=1.0, n_steps=4)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'cfg-zero'; valid: cfg, apg, cfg_star"):
        build_velocity(model, ConditionSet(cond=c, uncond=c), spec)
    assert model.calls == 0
    with pytest.raises(ValueError, match="cfg, apg, cfg_star"):  # ConfigError is a ValueError
        guidance_rule("CFG")
