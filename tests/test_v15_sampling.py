"""ACE-Step 1.5 sampling pieces: schedules, steps, cover noise, repaint, APG/ADG (``sampling/turbo.py``).

Golden parity: every ``pipeline/<case>`` of the 1.5 fixtures is replayed on ``sampling.loop.sample`` with the
recorded decoder outputs (teacher forcing) and must reproduce every recorded ``steps/NN/xt_in`` and the final
``generate_audio/out/target_latents``; ``guidance/apg_adg`` checks APG (3 calls, shared momentum) and ADG.

The replay helpers (:class:`Case15`, :func:`load_case`, :func:`recorded_velocity`, :func:`run_case`) are meant
for reuse: a full pipeline run can hand its own velocity to :func:`run_case` and compare the same tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from conftest import GOLDEN_V15_DIR, assert_close, load_tensors
from songflow.errors import ConfigError
from songflow.sampling.guidance import (
    APG_V15_DIMS,
    ApgState,
    adg,
    apg,
    cfg_interval_active,
    guide_v15,
)
from songflow.sampling.loop import GuidedVelocityFn, sample
from songflow.sampling.turbo import (
    MAX_TURBO_TIMESTEPS,
    TURBO_STEPS,
    VALID_TURBO_TIMESTEPS,
    FlowOdeStep,
    FlowSdeStep,
    Schedule15,
    base_schedule,
    cover_noise,
    cover_switch_step,
    repaint_crossfade,
    repaint_injection,
    schedule_15,
    snap_turbo_shift,
    snap_turbo_timesteps,
    soft_repaint_mask,
    turbo_schedule,
    turbo_table,
)

# ---------------------------------------------------------------------------------------------------
# replay helpers (reusable)


@dataclass(frozen=True)
class Case15:
    """One ``pipeline/<case>`` fixture: its ``generate_audio`` kwargs and tensors (aliases resolved)."""

    name: str
    variant: str
    kwargs: dict
    tensors: dict[str, Tensor]
    aliases: dict[str, str]

    def get(self, key: str) -> Tensor:
        return self.tensors[key] if key in self.tensors else self.tensors[self.aliases[key]]

    def has(self, key: str) -> bool:
        return key in self.tensors or key in self.aliases

    @property
    def batch(self) -> int:
        return self.get("noise/initial").shape[0]

    @property
    def n_calls(self) -> int:
        return sum(1 for k in self.tensors if k.startswith("steps/") and k.endswith("/v_out"))

    @property
    def guided(self) -> bool:
        """Whether the run batched [cond; uncond] (base/sft with scale > 1)."""
        return self.variant != "turbo" and self.kwargs["diffusion_guidance_sale"] > 1.0

    def timesteps(self) -> list[float] | None:
        ts = self.kwargs.get("timesteps")
        if ts is None and self.has("generate_audio/in/timesteps"):
            ts = self.get("generate_audio/in/timesteps").tolist()
        return ts


def load_case(folder: Path) -> Case15:
    case = json.loads((folder / "case.json").read_text())
    rec = case["recorded_json"]
    dit = case["dit_folder"]
    variant = "turbo" if "turbo" in dit else ("sft" if "sft" in dit else "base")
    tensors = load_tensors(folder / "tensors.safetensors")
    return Case15(folder.name, variant, rec["generate_audio_kwargs"], tensors, rec.get("aliases", {}))


@dataclass(frozen=True)
class Plan15:
    """What ``generate_audio`` samples for a case: schedule, initial latents, projection, final blend."""

    schedule: Schedule15
    x: Tensor
    project: Callable[[Tensor, int], Tensor] | None
    finish: Callable[[Tensor], Tensor]


def plan_case(case: Case15) -> Plan15:
    kw = case.kwargs
    sched = schedule_15(
        case.variant,
        method=kw["infer_method"],
        shift=kw["shift"],
        steps=kw["infer_steps"],
        timesteps=case.timesteps(),
    )
    noise = case.get("noise/initial")
    x, sched = cover_noise(
        sched, noise, case.get("generate_audio/in/src_latents"), kw["cover_noise_strength"]
    )
    if not case.has("generate_audio/in/repaint_mask"):
        return Plan15(sched, x, None, lambda out: out)
    mask, clean = case.get("generate_audio/in/repaint_mask"), case.get("generate_audio/in/clean_src_latents")
    project = repaint_injection(sched, mask, clean, noise, injection_ratio=kw["repaint_injection_ratio"])
    frames = kw["repaint_crossfade_frames"]
    return Plan15(sched, x, project, lambda out: repaint_crossfade(out, clean, mask, frames))


def recorded_velocity(case: Case15, sched: Schedule15) -> GuidedVelocityFn:
    """Teacher forcing: step ``i`` gets the recorded ``steps/i/v_out`` (base: [cond; uncond] combined with
    the case's guidance, APG momentum threaded through the run)."""
    kw, b = case.kwargs, case.batch
    state = ApgState()
    kind = "adg" if kw["use_adg"] else "apg"
    interval = (kw["cfg_interval_start"], kw["cfg_interval_end"])

    def velocity(x: Tensor, sigma_batch: Tensor, i: int) -> Tensor:
        nonlocal state
        v = case.get(f"steps/{i:02d}/v_out")
        if not case.guided:
            return v
        scale = kw["diffusion_guidance_sale"]
        guided, state = guide_v15(
            v[:b], v[b:], x, sched.sigmas[i], scale, state, kind=kind, interval=interval
        )
        return guided

    return velocity


def run_case(
    case: Case15,
    velocity: GuidedVelocityFn | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """The case's ``target_latents`` from ``velocity`` (default: the recorded one) on ``sample``."""
    plan = plan_case(case)
    velocity = velocity or recorded_velocity(case, plan.schedule)

    def noise(i: int) -> Tensor | None:
        key = f"noise/renoise_{i}"
        return case.get(key) if case.has(key) else None

    out = sample(
        velocity,
        plan.x,
        plan.schedule.sigmas,
        step=plan.schedule.stepper(),
        noise=noise,
        project=plan.project,
        callback=callback,
    )
    return plan.finish(out)


def replay_errors(case: Case15) -> dict[str, float]:
    """Max abs errors of a teacher-forced replay: every recorded next ``xt_in`` and the final latents."""
    errors: dict[str, float] = {}
    b = case.batch

    def check(i: int, sigma: Tensor, x: Tensor) -> None:
        key = f"steps/{i + 1:02d}/xt_in"
        if case.has(key):
            errors[key] = assert_close(x, case.get(key)[:b], rtol=1e-6, name=f"{case.name} {key}")

    out = run_case(case, callback=check)
    target = case.get("generate_audio/out/target_latents")
    errors["target_latents"] = assert_close(out, target, rtol=1e-6, name=f"{case.name} target_latents")
    return errors


def _case_names() -> list[str]:
    folder = GOLDEN_V15_DIR / "pipeline"
    return sorted(p.parent.name for p in folder.glob("*/case.json")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def cases(golden_v15_dir: Path) -> Callable[[str], Case15]:
    cache: dict[str, Case15] = {}

    def get(name: str) -> Case15:
        if name not in cache:
            cache[name] = load_case(golden_v15_dir / "pipeline" / name)
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------------------
# golden parity: pipeline fixtures


@pytest.mark.parametrize("name", _case_names())
def test_v15_golden_schedule_matches_recorded_timesteps(cases, name):
    case = cases(name)
    if case.n_calls == 0:
        pytest.skip(f"{name} stores no decoder steps")
    sched = plan_case(case).schedule
    assert sched.n_steps == case.n_calls
    for i in range(case.n_calls):
        t = case.get(f"steps/{i:02d}/timestep")
        assert torch.equal(t, sched.sigmas[i].expand(t.shape)), f"{name} step {i}"
        assert torch.equal(case.get(f"steps/{i:02d}/timestep_r"), t)


@pytest.mark.parametrize("name", _case_names())
def test_v15_golden_teacher_forced_replay(cases, name):
    case = cases(name)
    if case.n_calls == 0:
        pytest.skip(f"{name} stores no decoder steps")
    errors = replay_errors(case)
    assert len(errors) == case.n_calls  # n - 1 intermediate states + the final latents


def test_v15_golden_replay_is_sensitive_to_repaint(cases):
    """Without the injection or the crossfade the repaint fixture is not reproduced (the test can fail)."""
    if "turbo_repaint" not in _case_names():
        pytest.skip("no turbo_repaint fixture")
    case = cases("turbo_repaint")
    plan = plan_case(case)
    velocity = recorded_velocity(case, plan.schedule)
    raw = sample(velocity, plan.x, plan.schedule.sigmas, step=plan.schedule.stepper())
    target = case.get("generate_audio/out/target_latents")
    assert (raw - target).abs().max() > 1e-3
    assert (plan.finish(raw) - target).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------
# golden parity: guidance


@pytest.fixture(scope="module")
def guid(golden_v15_dir: Path) -> dict[str, Tensor]:
    return load_tensors(golden_v15_dir / "guidance" / "apg_adg.safetensors")


def test_v15_golden_apg_momentum_three_calls(guid):
    state = ApgState()
    for i in range(3):
        cond, uncond = guid[f"apg/{i}/pred_cond"], guid[f"apg/{i}/pred_uncond"]
        out, state = apg(cond, uncond, 7.0, state, dims=APG_V15_DIMS)
        assert_close(out, guid[f"apg/{i}/out"], rtol=1e-6, name=f"apg call {i}")


def test_v15_golden_guide_v15_apg(guid):
    """The per-step rule (time-contiguous memory, see guide_v15) agrees to rounding on contiguous inputs."""
    state = ApgState()
    for i in range(3):
        cond, uncond = guid[f"apg/{i}/pred_cond"], guid[f"apg/{i}/pred_uncond"]
        out, state = guide_v15(cond, uncond, cond, 0.5, 7.0, state)
        assert_close(out, guid[f"apg/{i}/out"], rtol=1e-5, name=f"guide_v15 apg call {i}")


def test_v15_golden_adg(guid):
    out = adg(guid["adg/latents"], guid["adg/cond"], guid["adg/uncond"], 0.6, 7.0)
    assert_close(out, guid["adg/out"], rtol=1e-6, name="adg")
    sigma = torch.tensor(0.6, dtype=torch.float32)
    assert torch.equal(adg(guid["adg/latents"], guid["adg/cond"], guid["adg/uncond"], sigma, 7.0), out)


# ---------------------------------------------------------------------------------------------------
# turbo schedule and snapping


def test_v15_turbo_tables_follow_the_shift_formula():
    for shift in (1.0, 2.0, 3.0):
        table = turbo_table(shift)
        assert len(table) == TURBO_STEPS and table[0] == 1.0
        for n, t in enumerate(table):
            u = 1 - n / TURBO_STEPS
            assert t == pytest.approx(shift * u / (1 + (shift - 1) * u), abs=1e-15)
    assert len(VALID_TURBO_TIMESTEPS) == 20
    assert list(VALID_TURBO_TIMESTEPS) == sorted(set(VALID_TURBO_TIMESTEPS), reverse=True)
    sched = turbo_schedule(2.0)
    assert sched.sigmas.dtype == torch.float32 and sched.sigmas[-1] == 0 and sched.n_steps == 8
    assert sched.values == turbo_table(2.0)  # float64 values kept for the cover-noise search


def test_v15_turbo_shift_snaps_to_nearest():
    assert snap_turbo_shift(2.4) == 2.0
    assert snap_turbo_shift(2.6) == 3.0
    assert snap_turbo_shift(2.5) == 2.0  # tie -> the first (smaller) one
    assert snap_turbo_shift(0.3) == 1.0 and snap_turbo_shift(9.0) == 3.0
    assert turbo_schedule(7.5).values == turbo_table(3.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="shift"):
            snap_turbo_shift(bad)


def test_v15_turbo_custom_timesteps_snap():
    valid = VALID_TURBO_TIMESTEPS
    assert snap_turbo_timesteps([1.0, 0.7, 0.31, 0.0, 0.0]) == (1.0, valid[9], 0.3)  # 0.7 -> 0.6667
    assert snap_turbo_timesteps(list(valid)) == valid  # all 20 at once
    sched = turbo_schedule(3.0, [0.99, 0.5, 0.0])
    assert sched.values == (1.0, 0.5) and torch.equal(sched.sigmas, torch.tensor([1.0, 0.5, 0.0]))
    assert turbo_schedule(2.0, []).values == turbo_table(2.0)  # empty = not given


@pytest.mark.parametrize(
    ("timesteps", "match"),
    [
        ([0.0, 0.0], "no value above 0"),
        ([1.0] + [0.5] * MAX_TURBO_TIMESTEPS, "at most 20"),
        ([1.0, 0.96, 0.95], "strictly"),  # 0.96 and 0.95 both snap to 0.9545
        ([0.5, 0.9], "strictly"),
        ([1.0, 0.0, 0.5], "strictly"),
        ([1.2, 0.5], r"\[0, 1\]"),
    ],
)
def test_v15_turbo_custom_timesteps_refused(timesteps, match):
    with pytest.raises(ConfigError, match=match):
        snap_turbo_timesteps(timesteps)


# ---------------------------------------------------------------------------------------------------
# base / sft schedule


def test_v15_base_schedule_float32_shift():
    t = torch.linspace(1.0, 0.0, 13, dtype=torch.float32)
    assert torch.equal(base_schedule(12, 1.0).sigmas, t)
    shifted = base_schedule(12, 3.0).sigmas
    assert shifted.dtype == torch.float32 and shifted[0] == 1 and shifted[-1] == 0
    assert torch.equal(shifted, 3.0 * t / (1 + 2.0 * t))
    assert base_schedule(4, 2.0, dtype=torch.bfloat16).sigmas.dtype == torch.bfloat16


def test_v15_sft_explicit_timesteps():
    sched = schedule_15("sft", timesteps=[1.0, 0.6, 0.3, 0.0], method="sde")
    assert sched.n_steps == 3 and sched.levels == (1 - 1 / 3, 1 - 2 / 3, 0.0)
    with pytest.raises(ConfigError, match="ignores custom timesteps"):
        schedule_15("base", timesteps=[1.0, 0.5, 0.0])
    with pytest.raises(ConfigError, match="end with 0"):
        schedule_15("sft", timesteps=[1.0, 0.6, 0.3])
    for bad in ({"steps": 0}, {"shift": 0.0}, {"method": "euler"}):
        with pytest.raises(ConfigError):
            schedule_15("base", **bad)
    with pytest.raises(ConfigError, match="variant"):
        schedule_15("xl")


# ---------------------------------------------------------------------------------------------------
# steps


def _const(v: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, sigma_batch: v


def test_v15_ode_step_is_x_minus_v_dt_and_final_x0():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    sig = turbo_schedule(3.0).sigmas
    step = FlowOdeStep()
    assert not step.uses_noise
    dt = torch.tensor(float(sig[1]) - float(sig[2]), dtype=torch.float32)
    assert torch.equal(step(_const(v), x, sig[1], sig[2], None), x - v * dt)
    assert torch.equal(step(_const(v), x, sig[-2], sig[-1], None), x - v * sig[-2])  # turbo's x0 shortcut
    seen = []
    step(lambda xx, sb: seen.append(sb) or v, x, sig[3], sig[4], None)
    assert seen[0].shape == (2,) and torch.equal(seen[0], sig[3].expand(2))


def test_v15_sde_steps_turbo_and_base_quirk():
    g = torch.Generator().manual_seed(1)
    x, v, eps = (torch.randn(1, 4, 2, generator=g) for _ in range(3))
    turbo = turbo_schedule(3.0, method="sde")
    step = turbo.stepper()
    assert isinstance(step, FlowSdeStep) and step.uses_noise
    x0 = x - v * turbo.sigmas[2]
    t_next = float(turbo.sigmas[3])
    assert torch.equal(
        step(_const(v), x, turbo.sigmas[2], turbo.sigmas[3], eps), t_next * eps + (1 - t_next) * x0
    )
    assert torch.equal(step(_const(v), x, turbo.sigmas[-2], 0.0, None), x - v * turbo.sigmas[-2])
    with pytest.raises(ConfigError, match="noise"):
        step(_const(v), x, turbo.sigmas[0], turbo.sigmas[1], None)
    base = base_schedule(4, 3.0, method="sde")
    assert base.levels == (0.75, 0.5, 0.25, 0.0)  # 1 - (n + 1) / steps, not the shifted schedule
    assert base_schedule(4, 3.0).levels == tuple(base_schedule(4, 3.0).sigmas[1:].tolist())
    bstep = base.stepper()
    x0 = x - v * base.sigmas[1]
    assert torch.equal(bstep(_const(v), x, base.sigmas[1], base.sigmas[2], eps), 0.5 * eps + 0.5 * x0)
    with pytest.raises(ValueError, match="not a step"):
        bstep(_const(v), x, 0.123, 0.0, eps)


def test_v15_cover_switch_step():
    assert (
        cover_switch_step(8, 0.5) == 4 and cover_switch_step(8, 1.0) == 8 and cover_switch_step(7, 0.3) == 2
    )
    with pytest.raises(ConfigError):
        cover_switch_step(8, 1.5)


# ---------------------------------------------------------------------------------------------------
# cover noise


def test_v15_cover_noise_turbo_starts_at_nearest_entry():
    g = torch.Generator().manual_seed(2)
    noise, src = torch.randn(1, 6, 2, generator=g), torch.randn(1, 6, 2, generator=g)
    sched = turbo_schedule(3.0, method="sde")
    x, cut = cover_noise(sched, noise, src, 0.3)  # 1 - 0.3 = 0.7 -> 0.75, index 4
    t = turbo_table(3.0)[4]
    assert cut.values == turbo_table(3.0)[4:] and cut.n_steps == 4 and cut.sigmas[-1] == 0
    assert torch.equal(x, t * noise + (1 - t) * src)
    x_same, same = cover_noise(sched, noise, src, 0.0)
    assert x_same is noise and same is sched
    x_t, cut_t = cover_noise(sched, noise, src, 1.0)  # nearest to 0: the last entry
    assert cut_t.n_steps == 1
    for bad in (-0.1, 1.1):
        with pytest.raises(ConfigError):
            cover_noise(sched, noise, src, bad)


def test_v15_cover_noise_turbo_uses_float64_table_values():
    noise, src = torch.zeros(1, 1, 1), torch.ones(1, 1, 1)
    x, _ = cover_noise(turbo_schedule(3.0), noise, src, 0.05)  # -> 0.9545..., as a float64
    t64 = turbo_table(3.0)[1]
    assert x.item() == torch.tensor(1 - t64, dtype=torch.float32).item()


def test_v15_cover_noise_base_recomputes_sde_levels():
    sched = base_schedule(10, 1.0, method="sde")
    _, cut = cover_noise(sched, torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), 0.5)
    assert cut.n_steps == 5 and torch.equal(cut.sigmas, sched.sigmas[5:])
    assert cut.levels == tuple(1.0 - (i + 1) / 5 for i in range(5))


# ---------------------------------------------------------------------------------------------------
# repaint


def test_v15_repaint_injection_cutoff_and_levels():
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 2:4] = True
    clean, noise = torch.full((1, 6, 2), 2.0), torch.full((1, 6, 2), -1.0)
    turbo = turbo_schedule(3.0)
    proj = repaint_injection(turbo, mask, clean, noise, injection_ratio=1.0)
    assert proj.n_inject == 7  # never after turbo's last step
    base = base_schedule(5, 1.0)
    assert repaint_injection(base, mask, clean, noise, injection_ratio=1.0).n_inject == 5
    assert repaint_injection(base, mask, clean, noise).n_inject == 2  # round(2.5) == 2 (half to even)
    x = torch.zeros(1, 6, 2)
    out = proj(x, 1)
    r = turbo.levels[1]
    assert torch.equal(out[0, 2:4], x[0, 2:4])
    assert torch.equal(out[0, :2], (r * noise + (1.0 - r) * clean)[0, :2])
    assert proj(x, 7) is x
    with pytest.raises(ConfigError):
        repaint_injection(turbo, mask, clean, noise, injection_ratio=1.5)


def test_v15_soft_repaint_mask_ramps():
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, 5:8] = True
    mask[1, 0:3] = True
    mask[2] = True
    soft = soft_repaint_mask(mask, 3)
    assert soft.dtype == torch.float32
    assert torch.allclose(soft[0, 2:5], torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(soft[0, 8:11], torch.tensor([0.75, 0.5, 0.25]))
    assert soft[0, :2].eq(0).all() and soft[0, 5:8].eq(1).all() and soft[0, 11] == 0
    assert torch.allclose(soft[1, 3:6], torch.tensor([0.75, 0.5, 0.25])) and soft[1, :3].eq(1).all()
    assert soft[2].eq(1).all()  # all-True row: no ramp


def test_v15_repaint_crossfade_blend():
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 4:6] = True
    x, clean = torch.full((1, 10, 2), 1.0), torch.zeros(1, 10, 2)
    assert repaint_crossfade(x, clean, mask, 0) is x
    out = repaint_crossfade(x, clean, mask, 2)
    assert torch.allclose(out[0, :, 0], soft_repaint_mask(mask, 2)[0])
    with pytest.raises(ConfigError):
        repaint_crossfade(x, clean, mask, -1)


# ---------------------------------------------------------------------------------------------------
# guidance rule


def test_v15_cfg_interval_compares_in_float32():
    t = torch.tensor(0.2, dtype=torch.float32)  # 0.2000000030
    assert cfg_interval_active(t, 0.2, 0.9)
    assert not cfg_interval_active(t, 0.0, 0.1999)
    assert cfg_interval_active(torch.tensor(0.9), 0.2, 0.9)
    assert cfg_interval_active(0.5, 0.0, 1.0) and not cfg_interval_active(0.95, 0.2, 0.9)


def test_v15_guide_outside_interval_keeps_cond_and_state():
    g = torch.Generator().manual_seed(3)
    cond, uncond, x = (torch.randn(1, 16, 4, generator=g) for _ in range(3))
    state = ApgState(running_average=torch.ones(1, 16, 4))
    out, new = guide_v15(cond, uncond, x, torch.tensor(0.95), 7.0, state, interval=(0.2, 0.9))
    assert out is cond and new is state
    out_adg, same = guide_v15(cond, uncond, x, 0.5, 7.0, state, kind="adg")
    assert torch.equal(out_adg, adg(x, cond, uncond, 0.5, 7.0)) and same is state
    with pytest.raises(ConfigError, match="guidance"):
        guide_v15(cond, uncond, x, 0.5, 7.0, state, kind="cfg")


def test_v15_guide_apg_does_not_depend_on_memory_layout():
    g = torch.Generator().manual_seed(4)
    cond, uncond = torch.randn(2, 128, 8, generator=g), torch.randn(2, 128, 8, generator=g)
    out_a, st_a = guide_v15(cond, uncond, cond, 0.5, 7.0, ApgState())
    tc = cond.transpose(1, 2).contiguous().transpose(1, 2)
    tu = uncond.transpose(1, 2).contiguous().transpose(1, 2)
    out_b, st_b = guide_v15(tc, tu, tc, 0.5, 7.0, ApgState())
    assert torch.equal(out_a, out_b) and torch.equal(st_a.running_average, st_b.running_average)
    ref, _ = apg(cond, uncond, 7.0, ApgState(), dims=APG_V15_DIMS)
    assert torch.allclose(out_a, ref, atol=1e-5)
