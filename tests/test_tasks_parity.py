"""retake / repaint / extend / audio2audio parity with the reference pipeline runs in golden/pipeline/.

Each run's stored encoder inputs, source latents and noise (``noise/00_*`` main seeds, ``noise/01_*``
retake seeds, see ``noise_draws`` in its params.json) are injected; every stored sampling step and the
final latents are compared (float32, relative to max(1, |reference|)).
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close, load_golden_run
from songflow.audio.geometry import OFFICIAL_GEOMETRY
from songflow.requests import GenerationParams
from songflow.tasks.audio2audio import build_audio2audio_plan
from songflow.tasks.extend import run_extend
from songflow.tasks.plan import ErgFlags, TextInputs, build_velocity, encode_conditions, run_plan
from songflow.tasks.repaint import build_repaint_plan, masked_guidance, start_step
from songflow.tasks.retake import build_retake_plan
from songflow.tasks.setup import TaskContext

# sampling amplifies float32 rounding differences (APG scale 15 over several steps)
LATENT_RTOL = 1e-4
ERRORS: dict[str, float] = {}


def _params(run: dict) -> GenerationParams:
    """Generation settings of a reference run (its diffusion kwargs), with the reference numerics."""
    d, call = run["diffusion_kwargs"], run["call_kwargs"]
    return GenerationParams(
        steps=d["infer_steps"],
        sampler=d["scheduler_type"],
        guidance=d["cfg_type"],
        guidance_scale=d["guidance_scale"],
        guidance_interval=d["guidance_interval"],
        guidance_interval_decay=d["guidance_interval_decay"],
        min_guidance_scale=d["min_guidance_scale"],
        guidance_scale_text=d["guidance_scale_text"],
        guidance_scale_lyric=d["guidance_scale_lyric"],
        omega_scale=d["omega_scale"],
        use_erg_tag=call.get("use_erg_tag", True),
        use_erg_lyric=d["use_erg_lyric"],
        use_erg_diffusion=d["use_erg_diffusion"],
        seeds=tuple(call["manual_seeds"]),
        legacy_double_shift=True,
        omega_mean_over="batch",
        legacy_batch_noise=True,
        legacy_heun_interval=True,
    )


def _noise(run: dict, t: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main-seed noise, retake-seed noise) by the seeds recorded in ``noise_draws``."""
    seeds, retake = run["call_kwargs"]["manual_seeds"], run["call_kwargs"].get("retake_seeds")
    by_seed = {tuple(d["generator_initial_seeds"]): t[d["tensor"]] for d in run["noise_draws"]}
    return by_seed[tuple(seeds)], (by_seed.get(tuple(retake)) if retake else None)


def _context(golden_transformer, run: dict, t: dict) -> TaskContext:
    p = _params(run)
    inputs = TextInputs(
        text_states=t["inputs/text_hidden_states"],
        text_mask=t["inputs/text_attention_mask"],
        speaker_embeds=t["inputs/speaker_embeds"],
        lyric_ids=t["inputs/lyric_token_ids"],
        lyric_mask=t["inputs/lyric_mask"],
        text_states_erg=t.get("inputs/text_hidden_states_null"),
    )
    conds = encode_conditions(
        golden_transformer,
        inputs,
        erg=ErgFlags(p.use_erg_tag, p.use_erg_lyric, p.use_erg_diffusion),
        need_uncond=True,
        need_text_only=False,
        n_lyric_blocks=golden_transformer.lyric_config.num_blocks,
        n_dit_blocks=golden_transformer.config.num_layers,
    )
    assert_close(conds.cond.states, t["encoder/cond/hidden_states"], name="encoder cond")
    assert_close(conds.uncond.states, t["encoder/null/hidden_states"], name="encoder null")
    return TaskContext(golden_transformer, conds, p)


def _check_steps(name: str, t: dict, sigmas: torch.Tensor, first: int, xs: dict, guided: dict) -> None:
    """Compare the stored iterations ``first..`` (official loop index) with our steps 0.. of ``sigmas``."""
    n_run = len(sigmas) - 1
    stored = sorted(int(k.split("/")[1]) for k in t if k.startswith("steps/") and k.endswith("/x"))
    assert stored == list(range(first, first + n_run)), f"{name}: stored iterations {stored}"
    for k in range(n_run):
        j = first + k
        t_ref = t[f"steps/{j:02d}/t"]
        assert torch.equal((sigmas[k] * 1000).expand(xs[k].shape[0]), t_ref), f"{name} t {j}"
        assert_close(xs[k], t[f"steps/{j:02d}/x"], rtol=LATENT_RTOL, name=f"{name} x {j}")
        for key, got in guided.get(k, {}).items():
            if f"steps/{j:02d}/{key}" in t:
                assert_close(got, t[f"steps/{j:02d}/{key}"], rtol=LATENT_RTOL, name=f"{name} {key} {j}")


def _trace(plan):
    """Record the latents entering every step (``xs[k]``) of a plan run."""
    xs = {0: plan.x_init.clone()}
    return xs, lambda i, sigma, x: xs.__setitem__(i + 1, x.clone())


def test_retake_matches_reference(golden_dir, golden_transformer):
    run, t = load_golden_run(golden_dir, "retake")
    noise, retake = _noise(run, t)
    with torch.inference_mode():
        ctx = _context(golden_transformer, run, t)
        plan = build_retake_plan(
            ctx, noise=noise, retake_noise=retake, variance_frac=run["call_kwargs"]["retake_variance"]
        )
        xs, callback = _trace(plan)
        final = run_plan(plan, callback=callback)
    _check_steps("retake", t, plan.sigmas, 0, xs, {})
    ERRORS["retake"] = assert_close(final, t["final_latents"], rtol=LATENT_RTOL, name="retake final")


def test_repaint_matches_reference(golden_dir, golden_transformer):
    run, t = load_golden_run(golden_dir, "repaint")
    call, derived = run["call_kwargs"], run["derived"]
    start = OFFICIAL_GEOMETRY.frames_from_seconds(call["repaint_start"])
    end = OFFICIAL_GEOMETRY.frames_from_seconds(call["repaint_end"])
    assert (start, end) == (derived["repaint_start_frame"], derived["repaint_end_frame"])
    noise, retake = _noise(run, t)
    src = t["inputs/src_latents"]
    with torch.inference_mode():
        ctx = _context(golden_transformer, run, t)
        plan = build_repaint_plan(
            ctx,
            src_latents=src,
            start_frame=start,
            end_frame=end,
            variance_frac=call["retake_variance"],
            noise=noise,
            retake_noise=retake,
        )
        n_steps = ctx.params.steps
        first = start_step(n_steps, call["retake_variance"])
        assert first == derived["n_min"]
        passes: dict[int, dict] = {}
        names = {"cond": "v_cond", "uncond": "v_uncond", "guided": "guided"}
        plan.velocity = build_velocity(
            golden_transformer,
            ctx.conds,
            masked_guidance(ctx.params, n_steps, first),
            on_eval=lambda k, v: passes.__setitem__(k, {names[n]: x.clone() for n, x in v.items()}),
        )
        xs, callback = _trace(plan)
        final = run_plan(plan, callback=callback)
    _check_steps("repaint", t, plan.sigmas, first, xs, passes)
    assert len(passes) == n_steps - first and all("guided" in p for p in passes.values())
    ERRORS["repaint"] = assert_close(final, t["final_latents"], rtol=LATENT_RTOL, name="repaint final")
    keep = torch.ones(src.shape[-1], dtype=torch.bool)
    keep[start:end] = False
    assert torch.equal(final[..., keep], src[..., keep])  # latent-exact outside the window


def _extend_frames(run: dict, n_src: int) -> tuple[int, int]:
    """(left, right) frames of an official extend call: repaint_start = -left_s, end = src_s + right_s."""
    call = run["call_kwargs"]
    start = OFFICIAL_GEOMETRY.frames_from_seconds(call["repaint_start"])
    end = OFFICIAL_GEOMETRY.frames_from_seconds(call["repaint_end"])
    return max(0, -start), max(0, end - n_src)


def _extend(golden_transformer, run, t, left, right):
    noise, retake = _noise(run, t)
    xs: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        ctx = _context(golden_transformer, run, t)
        out = run_extend(
            ctx,
            src_latents=t["inputs/src_latents"],
            left_frames=left,
            right_frames=right,
            max_frames=OFFICIAL_GEOMETRY.max_frames,
            reference_noise=(noise, retake),
            callback=lambda w, i, sigma, x: xs.__setitem__(i + 1, x.clone()),
        )
    return out, xs, ctx


@pytest.mark.parametrize("name", ["extend_left", "extend_right"])
def test_extend_matches_reference(golden_dir, golden_transformer, name):
    run, t = load_golden_run(golden_dir, name)
    src = t["inputs/src_latents"]
    n_src = src.shape[-1]
    left, right = _extend_frames(run, n_src)
    derived = run["derived"]
    assert (left, right) == (derived["left_pad_frames"], derived["right_pad_frames_intended"])
    out, xs, ctx = _extend(golden_transformer, run, t, left, right)
    assert out.shape[-1] == left + n_src + right == derived["total_frames_official"]
    noise, retake = _noise(run, t)
    # the run starts from z0 = [retake[:, :left], noise, retake[:, -right:]] (sigma_0 = 1)
    xs[0] = torch.cat([retake[..., :left], noise, retake[..., n_src - right :]], dim=-1)
    from songflow.tasks.setup import sigmas_for

    _check_steps(name, t, sigmas_for(ctx.params), 0, xs, {})
    ERRORS[name] = assert_close(out, t["final_latents"], rtol=LATENT_RTOL, name=f"{name} final")
    assert torch.equal(out[..., left : left + n_src], src)


def test_extend_both_sides_has_the_intended_length_unlike_the_reference(golden_dir, golden_transformer):
    """Official bug (docs/reference_behaviour.md#r12): with both sides, the reference measures the right
    padding against the already left-padded latent and adds ``left`` frames too few. We give the intended
    ``left + L + right`` frames with the source in the middle; asked for the reference's short right
    padding, we reproduce its output, so the padding count is the only difference. Every expected count
    comes from the run's ``derived`` block and tensors."""
    run, t = load_golden_run(golden_dir, "extend_both")
    src = t["inputs/src_latents"]
    n_src = src.shape[-1]
    left, right = _extend_frames(run, n_src)
    derived = run["derived"]
    assert (left, right, n_src) == (
        derived["left_pad_frames"],
        derived["right_pad_frames_intended"],
        derived["source_frames"],
    )
    assert 0 < left <= right  # both sides; the reference asserts when left > right
    official_total = derived["total_frames_official"]
    assert t["final_latents"].shape[-1] == official_total  # reference: too short
    assert official_total == left + n_src + right - left

    ours, _, _ = _extend(golden_transformer, run, t, left, right)
    assert ours.shape[-1] == left + n_src + right == derived["total_frames_intended"]
    assert torch.equal(ours[..., left : left + n_src], src)

    official_right = derived["right_pad_frames_official"]  # repaint_end_frame - (left + L)
    assert official_right == right - left
    buggy, _, _ = _extend(golden_transformer, run, t, left, official_right)
    ERRORS["extend_both (reference padding)"] = assert_close(
        buggy, t["final_latents"], rtol=LATENT_RTOL, name="extend_both with the reference's padding"
    )


def test_audio2audio_matches_reference(golden_dir, golden_transformer):
    run, t = load_golden_run(golden_dir, "audio2audio")
    noise, _ = _noise(run, t)
    strength = run["call_kwargs"]["ref_audio_strength"]
    with torch.inference_mode():
        ctx = _context(golden_transformer, run, t)
        plan = build_audio2audio_plan(
            ctx, ref_latents=t["inputs/ref_latents"], strength_frac=strength, noise=noise
        )
        assert len(plan.sigmas) - 1 == int((1 - strength) * ctx.params.steps)
        official = run["retrieve_timesteps_calls"][-1]["sigmas"]
        assert plan.sigmas.tolist() == pytest.approx(official, rel=0, abs=0)
        xs, callback = _trace(plan)
        final = run_plan(plan, callback=callback)
    _check_steps("audio2audio", t, plan.sigmas, 0, xs, {})
    ERRORS["audio2audio"] = assert_close(final, t["final_latents"], rtol=LATENT_RTOL, name="a2a final")


def test_report_errors():
    """Print the max abs errors gathered above (run with -s to see them)."""
    for name, err in ERRORS.items():
        print(f"parity {name:40s} max abs err {err:.3e}")
