"""FlowEdit on ACE-Step 1.5 (task "edit") on tiny random turbo and base checkpoints.

Invariants: identical source and target prompts return the source latents bit for bit (turbo unguided, base
with APG: each branch keeps its own momentum, so ``dV == 0`` exactly); the edit evaluates the DiT on steps
``int(N * n_min_frac) .. int(N * n_max_frac) - 1`` of the run's schedule (turbo: its 8-entry table), twice
per draw and ``n_avg`` draws per step, then samples the rest under the target; seeds replay bit-exactly and a
batch equals its singles; another target moves the latents; bad requests get clear errors; the CLI and a
REST job run it. Plan-level tests build the conditions once and rerun only the sampling.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_v15_root, wait_final
from songflow.errors import ConfigError
from songflow.requests import RequestFieldError
from songflow.requests_v15 import Edit15, Params15
from songflow.sampling import turbo as v15
from songflow.tasks.acestep_v15 import inputs
from songflow.tasks.acestep_v15.edit import run_edit15
from songflow.tasks.acestep_v15.plan import Conditioning15
from songflow.tasks.acestep_v15.presets import resolve_settings
from songflow.tasks.acestep_v15.tasks import build_plan

SR = 48000
BATCH_ATOL = 1e-3  # a batch row vs its single run: the same math in another matmul blocking
FAST_TURBO = {"timesteps": (1.0, 0.5)}
FAST_BASE = {"steps": 4}


def _root(tmp_path_factory, variant: str) -> Path:
    seed = 0 if variant == "turbo" else 1
    return tiny_v15_root(tmp_path_factory, f"v15{variant}", variant=variant, seed=seed)


@pytest.fixture(scope="module")
def turbo_root(tmp_path_factory) -> Path:
    return _root(tmp_path_factory, "turbo")


@pytest.fixture(scope="module")
def pipes(turbo_root, tmp_path_factory) -> dict:
    from songflow.families import load_pipeline

    base_root = _root(tmp_path_factory, "base")
    return {
        "turbo": load_pipeline(turbo_root, device="cpu", dtype="float32"),
        "base": load_pipeline(base_root, device="cpu", dtype="float32"),
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """2 s of a stereo chord with a little noise (float32 WAV, 48 kHz)."""
    t = np.arange(2 * SR) / SR
    noise = 0.02 * np.random.default_rng(0).standard_normal(t.size)
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + noise
    right = 0.3 * np.sin(2 * np.pi * 277 * t) + noise
    path = tmp_path_factory.mktemp("edit_src") / "source.wav"
    sf.write(str(path), np.stack([left, right], 1).astype(np.float32), SR, subtype="FLOAT")
    return str(path)


def _edit(source: str, **kw) -> Edit15:
    params = kw.pop("params", Params15(seeds=(3,), **FAST_TURBO))
    kw.setdefault("caption", "warm synth pop")
    kw.setdefault("lyrics", "[verse]\nla la")
    return Edit15(source_path=source, params=params, **kw)


def _source_latents(pipe, source: str, seeds: tuple[int, ...]) -> torch.Tensor:
    """The source latents an edit starts from: VAE-sampled with the seeds, padded to the run's frames."""
    pipe._vae_calls = {}
    latents = pipe.encode_source(source, seeds)
    total = inputs.generated_frames(latents.shape[1])
    return inputs.pad_with_silence(latents, pipe.silence_latent, total).float()


def _job(pipe, request: Edit15):
    """The built plan of ``request`` (conditions encoded once) and its settings, as Pipeline15 builds it."""
    settings = resolve_settings(pipe.variant, request.params, request.task)
    request = pipe.resolve_seeds(request)
    pipe._vae_calls = {}
    return build_plan(pipe, request, settings), settings


def _record_calls(pipe, monkeypatch) -> list[tuple[float, int]]:
    """Every DiT velocity call as ``(t, rows)``."""
    calls: list[tuple[float, int]] = []
    velocity = pipe.dit.velocity

    def recording(x, t, *args, **kwargs):
        calls.append((float(t.reshape(-1)[0]), x.shape[0]))
        return velocity(x, t, *args, **kwargs)

    monkeypatch.setattr(pipe.dit, "velocity", recording)
    return calls


# -- identity ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["turbo", "base"])
def test_identical_prompts_return_the_source_exactly(pipes, source, variant):
    pipe = pipes[variant]
    params = Params15(seeds=(3,), **(FAST_TURBO if variant == "turbo" else FAST_BASE))
    request = _edit(source, target_caption="warm synth pop", target_lyrics="[verse]\nla la", params=params)
    result = pipe.generate(request)
    assert torch.equal(result.latents, _source_latents(pipe, source, (3,)))
    assert result.request.params.guidance_scale == (1.0 if variant == "turbo" else 7.0)


@pytest.mark.parametrize("variant", ["turbo", "base"])
@pytest.mark.parametrize(("n_min", "n_avg"), [(0.0, 1), (0.5, 2)])
def test_identical_conditions_encoded_apart_edit_nothing(pipes, source, variant, n_min, n_avg):
    """The target condition as separate (equal) tensors: the two branches are separate DiT calls on equal
    inputs, so ``dV`` is exactly 0 for any range that ends at 1 and any ``n_avg``."""
    pipe = pipes[variant]
    params = Params15(seeds=(5,), **({} if variant == "turbo" else FAST_BASE))
    job, _ = _job(pipe, _edit(source, target_caption="x", n_min_frac=n_min, n_avg=n_avg, params=params))
    plan = job.plan
    cond = plan.source.cond
    twin = Conditioning15(cond.enc.clone(), cond.enc_mask.clone(), cond.context.clone())
    plan = replace(plan, target=replace(plan.source, cond=twin))  # its guidance's null is the source's
    assert torch.equal(run_edit15(pipe.dit, plan), plan.x_src)


# -- what n_min_frac / n_max_frac / n_avg do -------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "n_min", "n_max", "n_avg"),
    [("turbo", 0.25, 0.75, 2), ("turbo", 0.6, 1.0, 1), ("base", 0.5, 0.75, 1)],
)
def test_the_edit_runs_on_the_fraction_of_the_schedule(
    pipes, source, monkeypatch, variant, n_min, n_max, n_avg
):
    """turbo: the 8-entry shift-3 table; base: 4 steps of its schedule, APG doubling every call's rows."""
    pipe = pipes[variant]
    params = Params15(seeds=(3,), **({} if variant == "turbo" else FAST_BASE))
    request = _edit(source, target_caption="dark rock", n_min_frac=n_min, n_max_frac=n_max, n_avg=n_avg)
    job, settings = _job(pipe, replace(request, params=params))
    sigmas = settings.schedule.sigmas
    if variant == "turbo":
        assert torch.equal(sigmas[:-1], torch.tensor(v15.turbo_table(3.0), dtype=torch.float32))
    n = len(sigmas) - 1
    lo, hi = int(n * n_min), int(n * n_max)
    calls = _record_calls(pipe, monkeypatch)
    steps: list[int] = []
    out = run_edit15(pipe.dit, job.plan, lambda i, t, x: steps.append(i))
    rows = 1 if variant == "turbo" else 2
    edit_calls = [(float(sigmas[i]), rows) for i in range(lo, hi) for _ in range(2 * n_avg)]
    assert calls == edit_calls + [(float(sigmas[i]), rows) for i in range(hi, n)]
    assert steps == list(range(lo, n)) and torch.isfinite(out).all()
    assert not torch.equal(out, job.plan.x_src)


def test_n_max_below_one_samples_the_rest_even_for_identical_prompts(pipes, source):
    pipe = pipes["turbo"]
    job, _ = _job(
        pipe, _edit(source, target_caption="warm synth pop", n_max_frac=0.75, params=Params15(seeds=(3,)))
    )
    out = run_edit15(pipe.dit, job.plan)
    assert torch.isfinite(out).all() and not torch.equal(out, job.plan.x_src)


def test_n_min_and_n_avg_change_the_edit(pipes, source):
    pipe = pipes["turbo"]
    job, _ = _job(pipe, _edit(source, target_caption="dark rock", params=Params15(seeds=(3,))))
    outs = {}
    for name, change in {"base": {}, "lo": {"edit_steps": (2, 8)}, "avg": {"n_avg": 2}}.items():
        j, _ = _job(pipe, _edit(source, target_caption="dark rock", params=Params15(seeds=(3,))))
        outs[name] = run_edit15(pipe.dit, replace(j.plan, **change))
    assert torch.equal(run_edit15(pipe.dit, job.plan), outs["base"])  # the same plan replays
    assert not torch.equal(outs["base"], outs["lo"]) and not torch.equal(outs["base"], outs["avg"])


# -- seeds, batches, targets ------------------------------------------------------------------------------


def test_seeds_replay_bit_exactly_and_a_batch_equals_its_singles(pipes, source):
    pipe = pipes["turbo"]
    params = Params15(seeds=(3, 4), batch_size=2, infer_method="sde", **FAST_TURBO)
    request = _edit(
        source, target_lyrics="[verse]\nnew words here", n_min_frac=0.0, n_max_frac=0.5, params=params
    )
    first, again = pipe.generate(request), pipe.generate(request)
    assert torch.equal(first.latents, again.latents) and torch.equal(first.audio, again.audio)
    for i, seed in enumerate((3, 4)):
        single = pipe.generate(replace(request, params=replace(params, seeds=(seed,), batch_size=1)))
        assert (first.latents[i] - single.latents[0]).abs().max() <= BATCH_ATOL
    assert not torch.equal(first.latents[0], first.latents[1])


@pytest.mark.parametrize("target", [{"target_caption": "dark rock"}, {"target_lyrics": "[chorus]\noh no"}])
def test_another_target_moves_the_latents(pipes, source, target):
    pipe = pipes["turbo"]
    result = pipe.generate(_edit(source, n_min_frac=0.0, **target))
    moved = (result.latents - _source_latents(pipe, source, (3,))).abs().max()
    assert torch.isfinite(result.latents).all() and moved > 0
    assert result.audio.shape[-1] == 2 * SR  # the source's length


# -- bad requests ------------------------------------------------------------------------------------------


def test_bad_requests_say_what_to_do(pipes, source):
    with pytest.raises(RequestFieldError, match="target_caption and/or target_lyrics"):
        _edit(source)
    with pytest.raises(RequestFieldError, match="must be < n_max_frac"):
        _edit(source, target_caption="x", n_min_frac=0.8, n_max_frac=0.8)
    with pytest.raises(ConfigError, match="holds no step of a 8-step schedule"):
        pipes["turbo"].generate(
            _edit(source, target_caption="x", n_min_frac=0.6, n_max_frac=0.62, params=Params15(seeds=(1,)))
        )
    with pytest.raises(ConfigError, match="guidance-distilled"):
        pipes["turbo"].generate(_edit(source, target_caption="x", params=Params15(guidance_scale=5.0)))


# -- front ends ------------------------------------------------------------------------------------------


def test_cli_generate_task_edit_and_replay(turbo_root, source, tmp_path):
    from songflow.interfaces.cli import main

    out = tmp_path / "edit.wav"
    argv = ["generate", "--checkpoint", str(turbo_root), "--task", "edit", "--source-path", source]
    argv += ["--caption", "warm synth pop", "--target-caption", "dark rock", "--timesteps", "1,0.5"]
    assert main([*argv, "--seed", "7", "--out", str(out), "--quiet"]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["request"]["task"] == "edit" and sidecar["request"]["target_caption"] == "dark rock"
    replay = tmp_path / "again.wav"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(turbo_root),
                "--from",
                str(out.with_suffix(".json")),
                "--out",
                str(replay),
                "--quiet",
            ]
        )
        == 0
    )
    assert np.array_equal(sf.read(out)[0], sf.read(replay)[0])


def test_rest_job_runs_an_edit(pipes, source, tmp_path):
    from fastapi.testclient import TestClient

    from songflow.interfaces.server.app import create_app

    app = create_app(pipes["turbo"], data_dir=tmp_path / "data", checkpoint_name="tiny-v15")
    body = {
        "task": "edit",
        "caption": "pop",
        "target_caption": "rock",
        "params": {"timesteps": [1.0, 0.5], "seeds": [2]},
    }
    with TestClient(app) as client, open(source, "rb") as f:
        files = {"source": ("take.wav", f.read(), "audio/wav")}
        answer = client.post("/v1/jobs", data={"request": json.dumps(body)}, files=files)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        job = wait_final(client, job_id)
        assert job["state"] == "done", job
        assert job["request"]["task"] == "edit" and job["request"]["source_path"] == "upload:take.wav"
        assert client.get(job["audio_urls"][0]).content[:4] == b"RIFF"


def test_two_steps_follow_the_flowedit_formula(pipes, source):
    """Edit step 6 then sampling step 7 of the turbo table, recomputed by hand from the two branches'
    velocities and the per-item draw stream (edit draw, then the phase-2 start noise)."""
    from songflow.tasks.acestep_v15.plan import guided_velocity

    pipe = pipes["turbo"]
    job, settings = _job(pipe, _edit(source, target_caption="dark rock", params=Params15(seeds=(3,))))
    plan = replace(job.plan, edit_steps=(6, 7))
    out = run_edit15(pipe.dit, plan)
    x_src, sig = plan.x_src, settings.schedule.sigmas
    draw = pipe.renoise_fn((3,), x_src.shape[1])
    v_src, v_tar = guided_velocity(pipe.dit, plan.source), guided_velocity(pipe.dit, plan.target)
    t6, t7 = sig[6].expand(1), sig[7].expand(1)
    with torch.inference_mode():
        z_src = float(sig[6]) * draw(0) + (1 - float(sig[6])) * x_src
        d_v = v_tar(z_src, t6, 6, None)[0] - v_src(z_src, t6, 6, None)[0]
        z_edit = x_src - d_v * (float(sig[6]) - float(sig[7]))
        x_tar = float(sig[7]) * draw(0) + (1 - float(sig[7])) * x_src + (z_edit - x_src)
        expected = x_tar - v_tar(x_tar, t7, 7, None)[0] * float(sig[7])
    assert torch.allclose(out, expected, atol=1e-5, rtol=0), (out - expected).abs().max()
