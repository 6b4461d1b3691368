"""The ACE-Step 1.5 pipeline with the 5 Hz LM planner (``think``) against the official top-level run
``pipeline/turbo_text2music_lm_thinking`` (``acestep.inference.generate_music`` with ``thinking=True``), and
the pipeline's planner invariants on the fixtures' tiny checkpoint.

The request is built from the case's ``call_kwargs`` (official ``GenerationParams`` names -> ours); the LM
runs with the official flow (``legacy_planner``) from the recorded ``lm_seed``; the DiT runs with the
reference's recorded draws (``tests/test_v15_pipeline.py``'s helpers).
"""

# ruff: noqa: F811 (the v15_pipes fixture imported from test_v15_pipeline is a test argument)
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import assert_close
from test_v15_pipeline import _alias, _case, run_case_request, v15_pipes  # noqa: F401 (fixture)

CASE = "turbo_text2music_lm_thinking"


@contextlib.contextmanager
def _without_lm(pipe):
    """The pipeline with a planner that has no LM folder (any LM use raises)."""
    from songflow.pipeline_v15 import Planner15

    kept = pipe.planner
    pipe.planner = Planner15(None, pipe.device, checkpoint_root=kept.checkpoint_root)
    try:
        yield
    finally:
        pipe.planner = kept


def _think_request(case: dict, **params):
    """Our ``Text2Music15(think=True)`` for the case's ``GenerationParams``/``GenerationConfig``."""
    from songflow.requests_v15 import Params15, Text2Music15

    kw, config = case["call_kwargs"]["params"], case["call_kwargs"]["config"]
    settings = dict(
        seeds=tuple(config["seeds"]),
        lm_seeds=(case["lm_seed"],),
        lm_temperature=kw["lm_temperature"],
        lm_cfg_scale=kw["lm_cfg_scale"],
        lm_top_p=kw["lm_top_p"],
        use_cot_caption=kw["use_cot_caption"],
        use_cot_language=kw["use_cot_language"],
        use_cot_metas=kw["use_cot_metas"],
        legacy_planner=True,  # the official flow, as recorded
        legacy_output_length=True,
        normalization_db=-1.0,  # generate_music's default normalisation
    )
    return Text2Music15(
        caption=kw["caption"],
        lyrics=kw["lyrics"],
        duration_s=float(kw["duration"]),
        bpm=kw["bpm"],
        vocal_language=kw["vocal_language"],
        think=kw["thinking"],
        params=Params15(**{**settings, **params}),
    )


def _dit_metas(case: dict) -> dict[str, str]:
    """The ``# Metas`` lines of the DiT caption prompt the reference encoded."""
    prompt = case["recorded_json"]["text_inputs"][0]
    block = prompt.split("# Metas\n")[1].split("<|endoftext|>")[0]
    return dict(line[2:].split(": ", 1) for line in block.split("\n") if line.startswith("- "))


@pytest.fixture(scope="module")
def thinking_run(v15_pipes, golden_v15_dir):
    case, t = _case(golden_v15_dir, CASE)
    pipe = v15_pipes(case["dit_folder"])
    trace = run_case_request(pipe, case, t, _think_request(case))
    return case, t, pipe, trace


def test_v15_planner_golden_pipeline_lm_thinking(thinking_run):
    """Planner codes and metas equal the recorded ones; the DiT run (cover of the codes) matches end to
    end; the audio is peak-normalised to -1 dBFS."""
    from songflow.text.acestep_v15_plan_text import codes_from_text

    case, t, _pipe, trace = thinking_run
    result = trace["result"]
    (plan,) = result.plans
    assert plan.raw_text == case["lm_calls"][0]["output_text"]
    assert list(plan.audio_codes) == codes_from_text(case["lm_calls"][-1]["output_text"])
    assert len(plan.audio_codes) == len(t["lm/call1/steps/token"]) - 1  # the codes, then the stop token
    metas = _dit_metas(case)
    ran = result.request
    assert (ran.bpm, ran.key_scale, ran.time_signature) == (
        int(metas["bpm"]),
        metas["keyscale"],
        metas["timesignature"],
    )
    assert ran.audio_codes == plan.audio_codes and not ran.think
    assert ran.vocal_language == case["recorded_json"]["text_inputs"][0].split("# Languages\n")[1].split()[0]
    hints = t["generate_audio/in/precomputed_lm_hints_25Hz"]
    ctx = trace["ctx"][0]
    assert_close(ctx[:, : hints.shape[1], : hints.shape[2]], hints, rtol=1e-5, name="hints")
    assert_close(ctx, _alias(case, t, "decoder_call0/context_latents"), rtol=1e-5, name="context")
    enc, _mask = trace["enc"][0]
    assert_close(enc, _alias(case, t, "decoder_call0/encoder_hidden_states"), rtol=1e-4, name="enc")
    for i in range(case["num_decoder_calls"]):
        assert_close(trace["v"][i], _alias(case, t, f"steps/{i:02d}/v_out"), rtol=1e-4, name=f"v{i}")
    assert_close(result.latents, t["generate_audio/out/target_latents"], rtol=1e-4, name="final latents")
    peak = result.audio.abs().amax().item()
    assert peak == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    assert result.timings_s["planner"] > 0


def test_v15_planner_golden_replay_without_lm(thinking_run, golden_v15_dir):
    """The planned request (codes + metas, think off) replays the same song without touching the LM."""
    case, t, pipe, trace = thinking_run
    result = trace["result"]
    with _without_lm(pipe):  # any LM use would now raise
        again = run_case_request(pipe, case, t, result.request)["result"]
    assert torch.equal(again.latents, result.latents)
    assert torch.equal(again.audio, result.audio)
    assert again.request == result.request


def test_v15_planner_pipeline_replay_with_plans_and_batch(v15_pipes, golden_v15_dir):
    """A batch of two planned songs equals its singles, and given its plans (a sidecar) it replays
    without the LM; the LM is loaded once, on first use."""
    from songflow.requests_v15 import Params15, Text2Music15

    case, _t = _case(golden_v15_dir, CASE)
    pipe = v15_pipes(case["dit_folder"])
    fast = dict(timesteps=(1.0, 0.5), lm_temperature=0.0, lm_cfg_scale=1.0)
    request = Text2Music15(
        caption="a calm song", lyrics="[Instrumental]", duration_s=10.0, bpm=90, think=True,
        params=Params15(seeds=(3, 4), batch_size=2, **fast),
    )  # fmt: skip
    both = pipe.generate(request)
    assert pipe.planner.loaded and len(both.plans) == 2
    assert both.request.think and both.request.params.lm_seeds == (3, 4)
    single = pipe.generate(dataclasses.replace(request, params=Params15(seeds=(4,), **fast)))
    assert torch.equal(both.audio[1:], single.audio)
    assert single.plans[0].audio_codes == both.plans[1].audio_codes
    with _without_lm(pipe):
        replay = pipe.generate(both.request, plans=both.plans)
    assert torch.equal(replay.audio, both.audio)


def test_v15_planner_pipeline_no_lm_folder_says_what_to_download(v15_pipes, golden_v15_dir):
    from songflow.errors import ConfigError
    from songflow.requests_v15 import Params15, Text2Music15

    case, _t = _case(golden_v15_dir, CASE)
    pipe = v15_pipes(case["dit_folder"])
    with (
        _without_lm(pipe),
        pytest.raises(ConfigError, match=r"songflow download --model acestep-v15-turbo --lm"),
    ):
        pipe.generate(Text2Music15(caption="x", duration_s=10.0, think=True, params=Params15(seeds=(1,))))


def test_v15_planner_pipeline_understand_reads_codes(v15_pipes, golden_v15_dir, tmp_path: Path):
    """Understand: audio -> VAE -> 5 Hz codes (5 per second) -> the LM's answer carrying those codes."""
    import soundfile as sf

    from songflow.requests_v15 import Params15, Understand15

    case, _t = _case(golden_v15_dir, CASE)
    pipe = v15_pipes(case["dit_folder"])
    wav = torch.randn(2, 48000 * 2) * 0.1
    path = tmp_path / "clip.wav"
    sf.write(str(path), wav.T.numpy(), 48000)
    (answer,) = pipe.understand(Understand15(source_path=str(path), params=Params15(lm_temperature=0.0)))
    assert answer.audio_codes is not None and len(answer.audio_codes) == 10
    assert answer.audio_codes == pipe.audio_codes_of(str(path), answer.seed)
