"""text2music parity with the reference pipeline runs in golden/pipeline/.

Each run's stored encoder inputs and noise are injected; the conditions, every sampling step and the
final latents are compared. The end-to-end test also runs our text encoder and lyric tokenizer from the
prompt/lyrics/seed and compares the final audio.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import assert_close, golden_text_inputs, load_golden_run
from songflow.requests import request_from_official
from songflow.tasks.plan import ErgFlags, build_velocity, encode_conditions, run_plan
from songflow.tasks.setup import TaskContext, guidance_for
from songflow.tasks.text2music import build_text2music_plan

T2M_RUNS = [
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
    "src_t2m_long",
]
# sampling amplifies float32 rounding differences (APG scale 15 over several steps)
LATENT_RTOL = 1e-4
ERRORS: dict[str, float] = {}


def _encode(golden_transformer, request, t):
    p = request.params
    guided = p.guidance_scale not in (0.0, 1.0)
    return encode_conditions(
        golden_transformer,
        golden_text_inputs(t),
        erg=ErgFlags(p.use_erg_tag, p.use_erg_lyric, p.use_erg_diffusion),
        need_uncond=guided,
        need_text_only=guided and p.guidance_scale_text > 1 and p.guidance_scale_lyric > 1,
        n_lyric_blocks=golden_transformer.lyric_config.num_blocks,
        n_dit_blocks=golden_transformer.config.num_layers,
    )


@pytest.mark.parametrize("name", T2M_RUNS)
def test_text2music_run_matches_reference(golden_dir, golden_transformer, name):
    params, t = load_golden_run(golden_dir, name)
    request = request_from_official(params["call_kwargs"], reference_behaviour=True)
    with torch.inference_mode():
        conds = _encode(golden_transformer, request, t)
    for label, got in (("cond", conds.cond), ("null", conds.uncond), ("text_only", conds.text_only)):
        if f"encoder/{label}/hidden_states" in t:
            assert_close(got.states, t[f"encoder/{label}/hidden_states"], name=f"{name} encoder/{label}")
            assert torch.equal(got.mask.float(), t["encoder/cond/mask"])

    noise = t["noise/00_text2music_diffusion_process"]
    plan = build_text2music_plan(TaskContext(golden_transformer, conds, request.params), noise)
    pingpong = sorted(k for k in t if k.startswith("noise/pingpong_step_"))
    if pingpong:
        plan.noise = lambda i: t[pingpong[i]]
    guided: dict[int, torch.Tensor] = {}
    plan.velocity = build_velocity(
        golden_transformer,
        conds,
        guidance_for(request.params, len(plan.sigmas) - 1),
        on_eval=lambda k, v: guided.__setitem__(k, v.get("guided", v["cond"])),
    )
    xs: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        final = run_plan(plan, callback=lambda i, sigma, x: xs.__setitem__(i + 1, x.clone()))
    # the reference loop runs one iteration per model evaluation (Heun: 2N-1, sigma index (j+1)//2);
    # our eval index equals its iteration index, and x after our step i enters its iteration 2(i+1) (Heun)
    heun = request.params.sampler == "heun"
    n_iters = 2 * (len(plan.sigmas) - 1) - 1 if heun else len(plan.sigmas) - 1
    for j in range(n_iters):
        sigma = plan.sigmas[(j + 1) // 2 if heun else j]
        if f"steps/{j:02d}/t" in t:
            assert torch.equal((sigma * 1000).expand(noise.shape[0]), t[f"steps/{j:02d}/t"])
        if f"steps/{j:02d}/guided" in t:
            assert_close(guided[j], t[f"steps/{j:02d}/guided"], rtol=LATENT_RTOL, name=f"{name} guided {j}")
    for i, x in xs.items():
        j = 2 * i if heun else i
        if f"steps/{j:02d}/x" in t:
            assert_close(x, t[f"steps/{j:02d}/x"], rtol=LATENT_RTOL, name=f"{name} x {j}")
    ERRORS[name] = assert_close(final, t["final_latents"], rtol=LATENT_RTOL, name=f"{name} final")


def test_batch_coupling_is_reference_only(golden_dir, golden_transformer):
    """The reference's whole-batch omega mean couples batch items; our default makes a batch = its singles."""
    params, t = load_golden_run(golden_dir, "t2m_batch2")
    ref_request = request_from_official(params["call_kwargs"], reference_behaviour=True)
    request = replace(ref_request, params=replace(ref_request.params, omega_mean_over="sample"))
    noise = t["noise/00_text2music_diffusion_process"]
    with torch.inference_mode():
        conds = _encode(golden_transformer, request, t)
        batch = run_plan(build_text2music_plan(TaskContext(golden_transformer, conds, request.params), noise))
        one = replace(request.params, batch_size=1, seeds=request.params.seeds[:1])
        conds1 = _encode(golden_transformer, replace(request, params=one), {k: v[:1] for k, v in t.items()})
        single = run_plan(build_text2music_plan(TaskContext(golden_transformer, conds1, one), noise[:1]))
    assert_close(batch[:1], single, rtol=1e-5, name="batch item 0 vs single")
    # the reference result differs from the per-sample one by far more than rounding
    assert (t["final_latents"] - batch).abs().max() > 1e-3


def test_end_to_end_from_prompt_and_seed(golden_dir, golden_models_dir, vocab_path):
    """Prompt + lyrics + seed -> our text encoder, tokenizer, sampler and codec -> the reference's audio."""
    from songflow.families import load_pipeline

    params, t = load_golden_run(golden_dir, "t2m_euler_apg")
    request = request_from_official(params["call_kwargs"], reference_behaviour=True)
    pipe = load_pipeline(golden_models_dir, device="cpu", dtype="float32", vocab_path=vocab_path)
    result = pipe.generate(request)
    ERRORS["e2e latents"] = assert_close(result.latents, t["final_latents"], rtol=LATENT_RTOL, name="latents")
    import soundfile as sf

    ref, sr = sf.read(golden_dir / "pipeline" / "t2m_euler_apg" / "output_48k_0.wav", dtype="float32")
    assert sr == result.sample_rate_hz == 48000
    ERRORS["e2e wav48k"] = assert_close(result.audio[0], torch.from_numpy(ref.T), rtol=1e-3, name="wav48k")
    assert result.request.params.seeds == tuple(params["call_kwargs"]["manual_seeds"])


def test_report_errors():
    """Print the max abs errors gathered above (run with -s to see them)."""
    for name, err in ERRORS.items():
        print(f"parity {name:40s} max abs err {err:.3e}")
