"""Steppers, the sampling loop and noise: golden parity (guidance/sched, pipeline replays) and properties."""

from __future__ import annotations

import json
import typing

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, load_tensors
from songflow.errors import ConfigError
from songflow.sampling.loop import sample
from songflow.sampling.noise import (
    make_generators,
    parse_seeds,
    randn_per_sample,
    shared_generator_noise,
    step_noise_fn,
    trig_mix,
)
from songflow.sampling.schedules import audio2audio_sigmas, flow_sigmas, oss_sigmas, sigmas_to_timesteps
from songflow.sampling.steppers import (
    SAMPLERS,
    STEPPERS,
    Sampler,
    count_evals,
    euler_step,
    evals_per_step,
    heun_step,
    make_stepper,
    omega_factor,
    omega_rescale,
    pingpong_step,
    stepper_spec,
    uses_noise,
)


@pytest.fixture(scope="module")
def guid(golden_dir):
    folder = golden_dir / "guidance"
    return load_tensors(folder / "guidance.safetensors"), json.loads((folder / "guidance.json").read_text())


# ---------------------------------------------------------------------------------------------------
# golden parity: official scheduler steps sched/{euler|heun|pingpong}/omega{w}/x{i} (bit-exact)


def test_omega_factor_matches_official(guid):
    _, meta = guid
    for omega, expected in meta["scheduler_steps"]["omega_rescale_examples"].items():
        assert omega_factor(float(omega)) == expected


@pytest.mark.parametrize(
    "run", ["euler/omega10.0", "euler/omega0.0", "heun/omega10.0", "heun/omega0.0", "pingpong/omega10.0"]
)
def test_scheduler_steps_exact(guid, run):
    t, meta = guid
    info = meta["scheduler_steps"]["runs"][run]
    name, omega = run.split("/")[0], float(run.split("omega")[1])
    sigmas = flow_sigmas(info["N"])
    recorded = list(dict.fromkeys(info["timesteps"]))  # the Heun list has its inner timesteps twice
    assert sigmas_to_timesteps(sigmas).tolist() == recorded
    velocities = [t[s["velocity"]] for s in info["steps"]]
    seen: list[torch.Tensor] = []  # the input of every model evaluation after the first

    def velocity(x, sigma_batch, i):
        assert float(sigma_batch[0]) * 1000 == pytest.approx(info["steps"][i]["timestep"], abs=1e-3)
        if i > 0:
            seen.append(x)
        return velocities[i]

    gen = torch.Generator().manual_seed(meta["scheduler_steps"]["pp_seed"])
    x0 = t["sched/x0"]
    step = make_stepper(name, omega_scale=omega, omega_mean_over="batch")  # the golden used the batch mean
    n_steps = len(info["steps"]) // evals_per_step(name)  # the recorded calls stop before the last step
    out = sample(
        velocity,
        x0,
        sigmas[: n_steps + 1],
        step=step,
        noise=lambda i: torch.empty_like(x0).normal_(generator=gen),
    )
    # after call k the official sample is the next evaluation's input (Heun: predictor outputs included)
    outputs = seen + [out]
    assert len(outputs) == len(info["steps"])
    for k, x in enumerate(outputs):
        assert_close(x, t[f"sched/{run}/x{k + 1}"], rtol=0.0, name=f"{run}/x{k + 1}")


# ---------------------------------------------------------------------------------------------------
# golden parity: replay every scheduler-driven official pipeline run with its recorded velocities


REPLAY_RUNS = [
    "t2m_euler_apg",
    "t2m_euler_cfg",
    "t2m_euler_cfg_star",
    "t2m_heun_apg",
    "t2m_pingpong_apg",
    "t2m_double_condition",
    "t2m_erg_all_off",
    "t2m_erg_ui_default_instrumental",
    "t2m_oss_steps",
    "t2m_batch2",
    "t2m_pingpong_batch2",
    "retake",
    "src_t2m_long",
    "audio2audio",
]


@pytest.mark.parametrize("run", REPLAY_RUNS)
def test_pipeline_replay(golden_dir, run):
    """schedule + stepper + loop reproduce the official latents at every iteration, bit for bit."""
    folder = golden_dir / "pipeline" / run
    kw = json.loads((folder / "params.json").read_text())["diffusion_kwargs"]
    t = load_tensors(folder / "tensors.safetensors")
    if kw["oss_steps"]:
        sigmas = oss_sigmas(kw["oss_steps"], sampler=kw["scheduler_type"])
    elif kw["audio2audio_enable"]:
        sigmas, level = audio2audio_sigmas(kw["infer_steps"], kw["ref_audio_strength"])
        x_init = (1 - level) * t["inputs/ref_latents"] + level * t["noise/00_text2music_diffusion_process"]
        assert_close(x_init, t["steps/00/x"], rtol=0.0, name="a2a x_init")
    else:
        sigmas = flow_sigmas(kw["infer_steps"])
    pp_noise = sorted(k for k in t if k.startswith("noise/pingpong_step_"))
    step = make_stepper(kw["scheduler_type"], omega_scale=kw["omega_scale"], omega_mean_over="batch")
    indices: list[int] = []

    def velocity(x, sigma_batch, i):
        indices.append(i)
        assert_close(x, t[f"steps/{i:02d}/x"], rtol=0.0, name=f"{run}/steps/{i}/x")
        assert torch.equal(sigma_batch * 1000, t[f"steps/{i:02d}/t"])
        key = f"steps/{i:02d}/guided"
        return t[key] if key in t else t[f"steps/{i:02d}/v_cond"]

    out = sample(velocity, t["steps/00/x"], sigmas, step=step, noise=lambda i: t[pp_noise[i]])
    assert indices == list(range(count_evals(kw["scheduler_type"], len(sigmas) - 1)))
    assert_close(out, t["final_latents"], rtol=0.0, name=f"{run}/final_latents")
    if t["steps/00/x"].shape[0] == 1 and kw["scheduler_type"] != "pingpong":
        # for a single sample the per-sample omega mean is the official whole-tensor mean, bit for bit
        indices.clear()
        step = make_stepper(kw["scheduler_type"], omega_scale=kw["omega_scale"], omega_mean_over="sample")
        assert torch.equal(sample(velocity, t["steps/00/x"], sigmas, step=step), t["final_latents"])


def test_batch_mean_couples_samples_but_sample_mean_does_not(golden_dir):
    """Official quirk: the whole-batch omega mean makes t2m_batch2's items depend on each other."""
    folder = golden_dir / "pipeline" / "t2m_batch2"
    t = load_tensors(folder / "tensors.safetensors")
    sigmas = flow_sigmas(6)

    def run(rows, mean_over):
        step = make_stepper("euler", omega_scale=10.0, omega_mean_over=mean_over)
        return sample(
            lambda x, s, i: t[f"steps/{i:02d}/guided"][rows], t["steps/00/x"][rows], sigmas, step=step
        )

    single = run(slice(0, 1), "sample")
    assert torch.equal(run(slice(0, 2), "sample")[:1], single)
    assert not torch.equal(run(slice(0, 2), "batch")[:1], single)


# ---------------------------------------------------------------------------------------------------
# properties: exactness on a point-mass field, batch independence, bookkeeping


def _decreasing_schedule(values: list[float]) -> torch.Tensor:
    vals = sorted(set(values), reverse=True)
    return torch.tensor(vals + [0.0], dtype=torch.float32)


schedule_st = st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=1, max_size=12).map(
    _decreasing_schedule
)


def _point_mass(x0: torch.Tensor):
    def velocity(x, sigma_batch, i):
        return (x - x0) / sigma_batch.reshape(-1, *([1] * (x.ndim - 1)))

    return velocity


@settings(max_examples=50, deadline=None)
@given(
    sigmas=schedule_st,
    seed=st.integers(0, 2**31 - 1),
    name=st.sampled_from(SAMPLERS),
    omega=st.sampled_from([None, 0.0]),
)
def test_point_mass_field_is_solved_exactly(sigmas, seed, name, omega):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 2, 4, 5, generator=g)
    eps = torch.randn(3, 2, 4, 5, generator=g)
    x = (1 - sigmas[0]) * x0 + sigmas[0] * eps
    step = make_stepper(name, omega_scale=omega)
    noise = lambda i: torch.randn(x0.shape, generator=g)  # noqa: E731
    out = sample(_point_mass(x0), x, sigmas, step=step, noise=noise)
    assert torch.allclose(out, x0, atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), omega=st.floats(-50.0, 50.0), name=st.sampled_from(["euler", "heun"]))
def test_sample_mode_omega_batch_equals_singles(seed, omega, name):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, 4, 6, generator=g)
    v = torch.randn(3, 2, 4, 6, generator=g) + torch.tensor([0.0, 3.0, -2.0]).reshape(3, 1, 1, 1)
    sigmas = flow_sigmas(4)
    step = make_stepper(name, omega_scale=omega, omega_mean_over="sample")

    def run(rows):
        return sample(lambda xx, s, i: v[rows] * (1 + i) + 0.1 * xx, x[rows], sigmas, step=step)

    batch = run(slice(0, 3))
    for b in range(3):
        assert torch.equal(batch[b : b + 1], run(slice(b, b + 1)))


def test_omega_rescale_keeps_mean_and_scales_deviation():
    g = torch.Generator().manual_seed(0)
    dx = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) + torch.tensor([1.0, -2.0]).reshape(2, 1, 1)
    w = omega_factor(10.0)
    for mode, dims in (("sample", (1, 2)), ("batch", (0, 1, 2))):
        out = omega_rescale(dx, 10.0, mean_over=mode)
        m = dx.mean(dim=dims, keepdim=True)
        assert torch.allclose(out.mean(dim=dims, keepdim=True), m)
        assert torch.allclose(out - m, (dx - m) * w)
    assert omega_factor(0.0) == 1.0 and 0.9 < omega_factor(-50.0) < omega_factor(50.0) < 1.1
    assert omega_factor(-1e5) == 0.9 and omega_factor(1e5) == pytest.approx(1.1)
    with pytest.raises(ConfigError):
        omega_rescale(dx, 1.0, mean_over="channel")


def test_heun_eval_indices_and_sigmas_match_official_list(golden_dir):
    meta = json.loads((golden_dir / "schedules" / "schedules.json").read_text())
    seen: list[tuple[int, torch.Tensor]] = []

    def velocity(x, sigma_batch, i):
        seen.append((i, sigma_batch))
        return torch.zeros_like(x)

    for n in (1, 2, 5, 27):
        sigmas = flow_sigmas(n)
        seen.clear()
        sample(velocity, torch.zeros(2, 3), sigmas, step=make_stepper("heun", omega_scale=10.0))
        assert [i for i, _ in seen] == list(range(2 * n - 1)) and count_evals("heun", n) == 2 * n - 1
        timesteps = torch.stack([s[0] * 1000 for _, s in seen])
        assert all(s.shape == (2,) and s.dtype == torch.float32 for _, s in seen)
        # the evaluation timesteps are exactly the official Heun list [t0, t1, t1, ..., t_{n-1}, t_{n-1}]
        assert timesteps.tolist() == meta["schedules"][f"heun/shift3.0/N{n}"]["timesteps"]


def test_loop_project_callback_and_noise_order():
    sigmas = flow_sigmas(4)
    events: list[tuple] = []

    def velocity(x, s, i):
        events.append(("v", i))
        return torch.ones_like(x)

    def noise(i):
        events.append(("noise", i))
        return torch.zeros(1, 2)

    def project(x, i):
        events.append(("project", i))
        return x * 0 + i

    def callback(i, sigma, x):
        events.append(("cb", i, float(sigma), float(x[0, 0])))

    out = sample(
        velocity,
        torch.zeros(1, 2),
        sigmas,
        step=make_stepper("pingpong"),
        noise=noise,
        project=project,
        callback=callback,
    )
    assert float(out[0, 0]) == 3.0
    assert events[:4] == [("noise", 0), ("v", 0), ("project", 0), ("cb", 0, 1.0, 0.0)]
    assert [e for e in events if e[0] == "cb"][-1][1:3] == (3, float(sigmas[3]))
    events.clear()
    sample(velocity, torch.zeros(1, 2), sigmas, step=make_stepper("euler"), noise=noise)
    assert ("noise", 0) not in events  # deterministic steppers never consume noise
    assert torch.equal(sample(velocity, torch.ones(1, 2), torch.zeros(1), step=euler_step), torch.ones(1, 2))


def test_dtype_handling():
    x = torch.randn(2, 3, 4).to(torch.bfloat16)
    for name in SAMPLERS:
        out = make_stepper(name, omega_scale=10.0)(
            lambda xx, s: torch.ones_like(xx), x, 1.0, 0.5, torch.zeros(2, 3, 4)
        )
        assert out.dtype == torch.bfloat16
    out = euler_step(lambda xx, s: torch.ones(2, 3, 4), x, 1.0, 0.5, omega_scale=None)
    assert out.dtype == torch.float32  # cast to the velocity dtype, as officially
    assert torch.allclose(out, x.float() - 0.5)


def test_stepper_registry():
    assert SAMPLERS == ("euler", "heun", "pingpong")
    assert [evals_per_step(n) for n in SAMPLERS] == [1, 2, 1]
    assert [count_evals(n, 10) for n in SAMPLERS] == [10, 19, 10]
    assert [uses_noise(n) for n in SAMPLERS] == [False, False, True]
    for name in SAMPLERS:
        step = make_stepper(name)
        assert step.name == name and step.uses_noise == uses_noise(name)
        assert step.evals_per_step == evals_per_step(name) and step.spec is stepper_spec(name)
    with pytest.raises(ConfigError, match="euler, heun, pingpong"):
        make_stepper("dpm++")
    with pytest.raises(ConfigError, match="'dpm'; valid: euler, heun, pingpong"):
        evals_per_step("dpm")
    with pytest.raises(ConfigError):
        make_stepper("euler", omega_mean_over="channel")
    with pytest.raises(ConfigError, match="noise"):
        pingpong_step(lambda x, s: x, torch.zeros(1, 2), 1.0, 0.5, None)


def test_sampler_names_are_defined_once():
    from songflow import requests

    assert tuple(STEPPERS) == SAMPLERS == typing.get_args(Sampler)
    assert requests.SAMPLER_NAMES is SAMPLERS
    assert typing.get_type_hints(requests.GenerationParams)["sampler"] == Sampler


@pytest.mark.parametrize("name", SAMPLERS)
def test_registry_metadata_matches_behaviour(name):
    """``evals_per_step`` is the number of velocity calls of a non-final step (one for the step to 0);
    a stepper declared noise-free ignores its noise, a noisy one depends on it; the loop supplies noise
    exactly to the steppers that declare it."""
    spec = STEPPERS[name]
    step = make_stepper(name, omega_scale=10.0)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    calls: list[float] = []

    def f(xx, sigma):
        calls.append(float(sigma[0]))
        return torch.tanh(xx) + sigma.view(-1, 1, 1)

    noise_a, noise_b = torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(2))
    out_a = step(f, x, 0.8, 0.5, noise_a)
    assert len(calls) == spec.evals_per_step
    out_b = step(f, x, 0.8, 0.5, noise_b)
    assert torch.equal(out_a, out_b) != spec.uses_noise
    if not spec.uses_noise:
        assert torch.equal(step(f, x, 0.8, 0.5, None), out_a)
    calls.clear()
    step(f, x, 0.5, 0.0, noise_a)
    assert len(calls) == 1  # the step to sigma = 0 is first-order for every stepper

    drawn: list[int] = []
    sigmas = flow_sigmas(4, 3.0)
    calls.clear()
    sample(lambda xx, s, i: f(xx, s), x, sigmas, step=step, noise=lambda i: drawn.append(i) or noise_a)
    assert drawn == (list(range(4)) if spec.uses_noise else [])
    assert len(calls) == count_evals(name, 4)


def test_heun_calls_the_velocity_twice_per_step():
    assert STEPPERS["heun"].evals_per_step == 2
    calls: list[float] = []
    heun_step(lambda x, s: calls.append(float(s[0])) or torch.ones_like(x), torch.zeros(1, 3), 0.8, 0.5)
    assert calls == pytest.approx([0.8, 0.5])  # predictor at sigma, corrector at sigma_next


def test_heun_last_step_is_first_order():
    calls: list[int] = []
    out = heun_step(
        lambda x, s: calls.append(1) or torch.full_like(x, 2.0), torch.ones(1, 3), 0.5, 0.0, omega_scale=None
    )
    assert len(calls) == 1 and torch.allclose(out, torch.zeros(1, 3))


# ---------------------------------------------------------------------------------------------------
# noise


def test_parse_seeds_rules():
    assert parse_seeds("1,2,3", 3) == [1, 2, 3]
    assert parse_seeds("1, 2", 4) == [1, 2, 2, 2]  # missing entries reuse the last
    assert parse_seeds("7", 3) == [7, 7, 7]
    assert parse_seeds(7, 2) == [7, 7]
    assert parse_seeds([5, 6, 7], 2) == [5, 6]
    assert parse_seeds([5], 3) == [5, 5, 5]
    for empty in (None, "", "  ", []):
        seeds = parse_seeds(empty, 4)
        assert len(seeds) == 4 and all(0 <= s < 2**32 for s in seeds)
    for bad in ("abc", "1,x", "-5", [1, "2"], [-1], 1.5, True):
        with pytest.raises(ConfigError):
            parse_seeds(bad, 2)
    with pytest.raises(ConfigError):
        parse_seeds(1, 0)


def test_randn_per_sample_batch_equals_singles():
    gens = make_generators([3, 4, 5])
    batch = randn_per_sample((2, 3), gens)
    singles = [randn_per_sample((2, 3), make_generators([s])) for s in (3, 4, 5)]
    assert batch.shape == (3, 2, 3) and torch.equal(batch, torch.cat(singles))
    # per-sample step noise too
    fn = step_noise_fn((2, 3), make_generators([3, 4]))
    assert torch.equal(fn(0)[1:], step_noise_fn((2, 3), make_generators([4]))(0))


def _golden_run(root, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = root / name
    return json.loads((folder / "params.json").read_text()), load_tensors(folder / "tensors.safetensors")


def test_noise_matches_official_draws(golden_dir):
    """Seeds, shapes and the retake variance come from each run's ``call_kwargs`` and ``noise_draws``."""
    root = golden_dir / "pipeline"
    run, t = _golden_run(root, "t2m_batch2")
    seeds = run["call_kwargs"]["manual_seeds"]
    item_shape = tuple(t["noise/00_text2music_diffusion_process"].shape[1:])
    gens = make_generators(parse_seeds(seeds, len(seeds)))
    assert torch.equal(randn_per_sample(item_shape, gens), t["noise/00_text2music_diffusion_process"])
    # ping-pong: initial noise per item, then every step's noise for the WHOLE batch from item 0's generator
    run, t = _golden_run(root, "t2m_pingpong_batch2")
    seeds = run["call_kwargs"]["manual_seeds"]
    item_shape = tuple(t["noise/00_text2music_diffusion_process"].shape[1:])
    gens = make_generators(parse_seeds(",".join(str(s) for s in seeds), len(seeds)))
    assert torch.equal(randn_per_sample(item_shape, gens), t["noise/00_text2music_diffusion_process"])
    legacy = step_noise_fn(item_shape, gens, per_sample=False)
    steps = [d for d in run["noise_draws"] if d["tensor"].startswith("noise/pingpong_step_")]
    assert steps and all(d["generator_initial_seeds"] == seeds[:1] for d in steps)
    for k, draw in enumerate(steps):
        assert torch.equal(legacy(k), t[draw["tensor"]])
    # retake: trig mix of the main and retake noise is the first latent
    run, t = _golden_run(root, "retake")
    call = run["call_kwargs"]
    item_shape = tuple(t["noise/00_text2music_diffusion_process"].shape[1:])
    a = randn_per_sample(item_shape, make_generators(parse_seeds(call["manual_seeds"][0], 1)))
    b = randn_per_sample(item_shape, make_generators(parse_seeds(call["retake_seeds"], 1)))
    assert torch.equal(a, t["noise/00_text2music_diffusion_process"])
    assert torch.equal(b, t["noise/01_text2music_diffusion_process"])
    assert torch.equal(trig_mix(a, b, call["retake_variance"]), t["steps/00/x"])


def test_shared_generator_noise_is_one_stream():
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    full = shared_generator_noise((2, 3), g1)
    assert torch.equal(full, torch.empty(2, 3).normal_(generator=g2))


def test_trig_mix():
    a, b = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.equal(trig_mix(a, b, 0.0), a)
    assert torch.allclose(trig_mix(a, b, 1.0), b, atol=1e-6)
    big_a, big_b = torch.randn(200_000), torch.randn(200_000)
    assert abs(float(trig_mix(big_a, big_b, 0.37).std()) - 1.0) < 0.01  # unit variance kept
    with pytest.raises(ConfigError):
        trig_mix(a, b, 1.2)


def test_sigmas_to_timesteps():
    assert sigmas_to_timesteps(flow_sigmas(3)).tolist() == pytest.approx(
        [1000.0, 751.12109375, 8.928571701049805]
    )
