"""Schedules: bit-exact parity with every entry of golden schedules/, plus invariants of both modes."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import load_tensors
from songflow.errors import ConfigError
from songflow.sampling.schedules import (
    audio2audio_sigmas,
    flow_sigmas,
    legacy_train_sigmas,
    oss_sigmas,
    shift_sigma,
    sigmas_to_timesteps,
    truncate,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def sched(golden_dir):
    folder = golden_dir / "schedules"
    return load_tensors(folder / "schedules.safetensors"), json.loads((folder / "schedules.json").read_text())


def _heun_layout(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official Heun scheduler's lists: every inner sigma / timestep duplicated."""
    timesteps = sigmas_to_timesteps(sigmas)
    heun_sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    heun_timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
    return heun_sigmas, heun_timesteps


def _f32_hex(t: torch.Tensor) -> list[str]:
    return [f"{v:08x}" for v in t.to(torch.float32).view(torch.int32).tolist()]


# ---------------------------------------------------------------------------------------------------
# golden parity (all exact)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_init_grid_exact(sched, shift):
    tensors, meta = sched
    grid = legacy_train_sigmas(shift)
    assert torch.equal(grid, tensors[f"init/shift{shift}/sigmas"])
    assert torch.equal(grid * 1000, tensors[f"init/shift{shift}/timesteps"])
    info = meta["init_grid"][f"shift{shift}"]
    assert _f32_hex(grid[[0, -1]]) == [info["sigma_max_f32_hex"], info["sigma_min_f32_hex"]]


def test_every_scheduler_schedule_exact(sched):
    tensors, meta = sched
    stored = {k.rsplit("/", 1)[0] for k in tensors if k.split("/")[0] in ("euler", "heun", "pingpong")}
    assert stored and set(meta["schedules"]) == stored  # every stored schedule is checked
    for key, info in meta["schedules"].items():
        name, shift_s, n_s = key.split("/")
        shift, n = float(shift_s.removeprefix("shift")), int(n_s.removeprefix("N"))
        sigmas = flow_sigmas(n, shift)
        timesteps = sigmas_to_timesteps(sigmas)
        if name == "heun":
            # Heun runs over the same sigmas; the official list only duplicates the inner values.
            sigmas, timesteps = _heun_layout(sigmas)
        assert torch.equal(sigmas, tensors[f"{key}/sigmas"]), key
        assert torch.equal(timesteps, tensors[f"{key}/timesteps"]), key
        assert _f32_hex(sigmas) == info["sigmas_f32_hex"], key
        assert info["num_inference_steps_returned"] == n


def test_double_shift_landmarks():
    s60 = flow_sigmas(60)
    assert s60[0] == 1.0 and s60[-1] == 0.0
    assert abs(float(s60[-2]) - shift_sigma(shift_sigma(0.001, 3.0), 3.0)) < 1e-6  # 0.0089286
    assert abs(float(s60[-2]) - 0.0089286) < 1e-6
    assert torch.equal(flow_sigmas(1), torch.tensor([1.0, 0.0]))


def test_oss_steps_exact(sched):
    tensors, meta = sched
    for case in meta["oss_steps"]:
        dtype, steps, sampler = DTYPES[case["pipeline_dtype"]], case["oss_steps"], case["scheduler"]
        if case["error"]:
            with pytest.raises(ConfigError, match="heun"):
                oss_sigmas(steps, 3.0, dtype=dtype, sampler=sampler)
            continue
        sigmas = oss_sigmas(steps, 3.0, dtype=dtype, sampler=sampler)
        key = f"oss/{case['pipeline_dtype']}/{sampler}/{'_'.join(map(str, steps))}"
        assert torch.equal(sigmas, tensors[f"{key}/sigmas"]), key
        assert torch.equal(sigmas_to_timesteps(sigmas), tensors[f"{key}/timesteps"]), key
        final_call = case["retrieve_timesteps_calls"][-1]
        assert _f32_hex(sigmas_to_timesteps(sigmas)) == final_call["timesteps_f32_hex"], key
        # the full schedule the official code picked from is the legacy schedule for max(steps)
        first_call = case["retrieve_timesteps_calls"][0]
        full = flow_sigmas(max(steps))
        assert _f32_hex(sigmas_to_timesteps(full)) == first_call["timesteps_f32_hex"]


def test_oss_bf16_rounds_before_third_shift():
    f32 = oss_sigmas([2, 5, 9, 14, 20], dtype=torch.float32)
    bf16 = oss_sigmas([2, 5, 9, 14, 20], dtype=torch.bfloat16)
    assert not torch.equal(f32, bf16)
    assert (f32 - bf16).abs().max() < 2e-3


def test_audio2audio_exact(sched):
    tensors, meta = sched
    gt, noise = tensors["a2a/gt_latents"], tensors["a2a/noise"]
    assert meta["audio2audio"]
    for case in meta["audio2audio"]:
        sigmas, level = audio2audio_sigmas(case["infer_steps"], case["ref_audio_strength"], 3.0)
        name = case["call"].split("'")[1]
        key = case["tensors"].removesuffix("/*")
        assert name in key
        assert len(sigmas) - 1 == case["steps_run"]
        assert level == case["scheduler_sigma_max"]  # once-shifted: 0.75 for strength 0.5
        timesteps = sigmas_to_timesteps(sigmas)
        if name == "heun":
            sigmas, timesteps = _heun_layout(sigmas)
        assert torch.equal(sigmas, tensors[f"{key}/sigmas"]), key
        assert torch.equal(timesteps, tensors[f"{key}/timesteps"]), key
        noisy = gt * (1 - level) + noise * level
        assert torch.equal(noisy, tensors[f"{key}/noisy"]), key
        assert float(timesteps[0]) == case["timesteps"][0]
        # the first model timestep is shifted twice: the schedule starts at s(level), level = s(1 - strength)
        assert abs(float(timesteps[0]) / 1000 - shift_sigma(level, 3.0)) < 1e-6


# ---------------------------------------------------------------------------------------------------
# invariants

steps_st = st.integers(min_value=1, max_value=120)
shift_st = st.floats(min_value=0.25, max_value=8.0, allow_nan=False)
sigma_max_st = st.floats(min_value=0.05, max_value=1.0)


@settings(max_examples=60, deadline=None)
@given(n=steps_st, shift=shift_st, legacy=st.booleans())
def test_schedule_shape_and_monotone(n, shift, legacy):
    sigmas = flow_sigmas(n, shift, legacy_double_shift=legacy)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (n + 1,)
    # sigma_max = 1 is a fixed point of every shift (exactly 1.0 for shifts 1 and 3)
    assert abs(float(sigmas[0]) - 1.0) < 1e-6
    assert sigmas[-1] == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


@settings(max_examples=60, deadline=None)
@given(n=steps_st, shift=shift_st, sigma_max=sigma_max_st)
def test_clean_mode_shifts_once(n, shift, sigma_max):
    sigmas = flow_sigmas(n, shift, legacy_double_shift=False, sigma_max=sigma_max)
    u = torch.linspace(sigma_max, 0.001, n, dtype=torch.float64) if n > 1 else torch.tensor([sigma_max])
    expected = shift_sigma(u.double(), shift).float()
    assert torch.allclose(sigmas[:-1], expected, rtol=1e-6, atol=1e-7)
    assert abs(float(sigmas[0]) - shift_sigma(sigma_max, shift)) < 1e-6  # first = s(sigma_max)
    assert bool((sigmas[1:] < sigmas[:-1]).all()) and sigmas[-1] == 0.0


@settings(max_examples=40, deadline=None)
@given(n=steps_st, sigma_max=sigma_max_st)
def test_clean_shift_one_is_identity(n, sigma_max):
    sigmas = flow_sigmas(n, 1.0, legacy_double_shift=False, sigma_max=sigma_max)
    u = torch.linspace(sigma_max, 0.001, n, dtype=torch.float64) if n > 1 else torch.tensor([sigma_max])
    assert torch.allclose(sigmas[:-1].double(), u.double(), rtol=0, atol=1e-7)
    assert abs(float(sigmas[0]) - sigma_max) < 1e-7


@settings(max_examples=40, deadline=None)
@given(n=steps_st, legacy=st.booleans())
def test_larger_shift_means_noisier(n, legacy):
    lo = flow_sigmas(n, 2.0, legacy_double_shift=legacy)
    hi = flow_sigmas(n, 4.0, legacy_double_shift=legacy)
    assert bool((hi >= lo).all())


def test_legacy_vs_clean_differ_only_by_the_extra_shift():
    legacy, clean = flow_sigmas(10), flow_sigmas(10, legacy_double_shift=False)
    assert legacy[-2] > clean[-2]  # 0.0089 vs 0.0030
    assert abs(float(clean[-2]) - shift_sigma(0.001, 3.0)) < 1e-7


@pytest.mark.parametrize("legacy", [True, False])
def test_audio2audio_levels(legacy):
    sigmas, level = audio2audio_sigmas(10, 0.5, 3.0, legacy_double_shift=legacy)
    assert len(sigmas) == 6 and sigmas[-1] == 0.0
    assert abs(level - 0.75) < 1e-7
    if legacy:
        assert abs(float(sigmas[0]) - 0.9) < 1e-6  # starts at s(s(0.5)), above the noise level
    else:
        assert float(sigmas[0]) == pytest.approx(level, abs=1e-7)  # starts where the reference was noised


@pytest.mark.parametrize("legacy", [True, False])
def test_audio2audio_edges(legacy):
    sigmas, level = audio2audio_sigmas(10, 1.0, legacy_double_shift=legacy)
    assert torch.equal(sigmas, torch.zeros(1)) and level == 0.0  # nothing to do: x_init = reference
    sigmas, level = audio2audio_sigmas(10, 0.0, legacy_double_shift=legacy)
    assert level == 1.0 and torch.equal(sigmas, flow_sigmas(10, legacy_double_shift=legacy))
    with pytest.raises(ConfigError):
        audio2audio_sigmas(10, 1.5)


def test_oss_clean_picks_without_rounding():
    full = flow_sigmas(20, legacy_double_shift=False)
    picked = oss_sigmas([2, 5, 20], legacy_double_shift=False)
    assert torch.equal(picked, torch.cat([full[[1, 4, 19]], torch.zeros(1)]))


@pytest.mark.parametrize("bad", [[], [0, 3], [3, 2], [2, 2], [1.5, 3]])
def test_oss_rejects_bad_indices(bad):
    with pytest.raises(ConfigError):
        oss_sigmas(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_steps": 0},
        {"n_steps": -3},
        {"n_steps": 5, "shift": 0.0},
        {"n_steps": 5, "sigma_max": 0.0},
        {"n_steps": 5, "sigma_max": 1.5},
    ],
)
def test_flow_sigmas_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        flow_sigmas(**kwargs)


def test_truncate():
    sigmas = flow_sigmas(10)
    assert torch.equal(truncate(sigmas, 0.0), sigmas)
    assert torch.equal(truncate(sigmas, 0.8), sigmas[8:])  # repaint variance 0.2 -> steps 8, 9
    assert torch.equal(truncate(sigmas, 1.0), torch.zeros(1))
    # official n_min = int(N * (1 - variance))
    assert len(truncate(flow_sigmas(60), 1 - 0.2)) - 1 == 60 - int(60 * (1 - 0.2))
