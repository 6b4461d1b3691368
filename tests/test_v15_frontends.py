"""The front ends (CLI generate/bulk, sidecar replay, REST server, studio) over an ACE-Step 1.5 checkpoint.

One tiny random 1.5 checkpoint is written per module; every song is 10 s (1.5's shortest) sampled over two
custom timesteps, so each generation takes about a second on two CPU threads.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import wait_final
from songflow.interfaces.cli import main

FAST = ["--duration", "10", "--timesteps", "1,0.5"]
FAST_PARAMS = {"timesteps": [1.0, 0.5]}


@pytest.fixture(scope="module")
def v15_ckpt(tmp_path_factory) -> Path:
    """A tiny random 1.5 checkpoint folder; the module skips (saying why) where the family cannot run."""
    from songflow.families import family_for
    from songflow.requests_v15 import V15_SCHEMA

    try:
        from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

        root = build_random_v15_checkpoint(tmp_path_factory.mktemp("v15_ckpt"))
        family = family_for(root)
    except Exception as exc:  # the 1.5 checkpoint writer or family is not there yet
        pytest.skip(f"no tiny ACE-Step 1.5 checkpoint can be written or recognised yet: {exc!r}")
    if family.name != "acestep-v15" or family.schema is not V15_SCHEMA:
        pytest.skip(
            f"the 1.5 family does not declare its request schema yet (families/acestep_v15.py: "
            f"schema={family.schema.name!r}, expected 'acestep-v15')"
        )
    return root


@pytest.fixture(scope="module")
def pipe15(v15_ckpt):
    from songflow.families import load_pipeline
    from songflow.requests_v15 import Params15, Text2Music15

    try:
        pipe = load_pipeline(v15_ckpt, device="cpu")
        pipe.generate(
            Text2Music15(caption="probe", duration_s=10.0, params=Params15(seeds=(0,), timesteps=(1.0,)))
        )
    except Exception as exc:
        pytest.skip(f"the 1.5 pipeline does not load and run yet: {exc!r}")
    return pipe


def _samples(path: Path) -> torch.Tensor:
    from songflow.audio.io import load_audio

    wav, rate = load_audio(path)
    assert rate == 48000
    return wav


def test_v15_cli_generate_writes_song_and_sidecar_and_replays_bit_exact(pipe15, v15_ckpt, tmp_path):
    out = tmp_path / "song.wav"
    argv = ["generate", "--checkpoint", str(v15_ckpt), "--caption", "upbeat synth pop", "--bpm", "120"]
    assert main([*argv, "--key-scale", "F# minor", *FAST, "--seed", "7", "--out", str(out), "--quiet"]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["family"] == sidecar["request_schema"] == "acestep-v15"
    request = sidecar["request"]
    assert request["caption"] == "upbeat synth pop" and request["bpm"] == 120 and "tags" not in request
    assert request["params"]["seeds"] == [7] and sidecar["sample_rate_hz"] == 48000
    assert not list(tmp_path.glob("*.tmp*")), "the writes are atomic (no temporary file is left)"
    again = tmp_path / "again.wav"  # no --checkpoint: the sidecar's recorded 1.5 checkpoint is used
    assert main(["generate", "--from", str(out.with_suffix(".json")), "--out", str(again), "--quiet"]) == 0
    first, second = _samples(out), _samples(again)
    assert first.shape[-1] == 10 * 48000
    assert torch.equal(first, second)
    assert json.loads(again.with_suffix(".json").read_text())["request"] == request


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tags", "pop"], "--tags does not apply to task 'text2music' of ACE-Step 1.5 checkpoints"),
        (["--sampler", "heun"], "--sampler does not apply to task 'text2music' of ACE-Step 1.5"),
        (
            ["--task", "repaint", "--source-path", "x.wav", "--strength-frac", "0.3"],
            "--strength-frac does not apply to task 'repaint' of ACE-Step 1.5",
        ),
        (["--lora", "some/lora"], "LoRA not found: some/lora"),
        (["--task", "audio2audio"], "ACE-Step 1.5 checkpoints do not run the 'audio2audio' task"),
        (["--task", "cover", "--source-path", "missing.wav"], "source_path missing.wav does not exist"),
        (["--reference-path", "gone.flac"], "reference_path gone.flac does not exist"),
        (["--time-signature", "4", "--bpm", "5"], "bpm must be"),
    ],
)
def test_v15_cli_refuses_other_families_flags_and_missing_inputs_before_loading(
    v15_ckpt, tmp_path, monkeypatch, capsys, flags, message
):
    import songflow.families

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(songflow.families, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    argv = ["generate", "--checkpoint", str(v15_ckpt), "--caption", "pop", "--out", "a.wav", "--quiet"]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "a.wav").exists()


def test_v15_bulk_reads_the_families_schema(pipe15, v15_ckpt, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    line = {
        "name": "one",
        "caption": "lofi piano",
        "duration_s": 10.0,
        "params": {**FAST_PARAMS, "seeds": [1]},
    }
    jobs.write_text(json.dumps(line) + "\n")
    out_dir = tmp_path / "out"
    assert main(["bulk", str(jobs), "--checkpoint", str(v15_ckpt), "--out-dir", str(out_dir), "--quiet"]) == 0
    assert json.loads((out_dir / "one.json").read_text())["request"]["caption"] == "lofi piano"
    jobs.write_text(json.dumps({"tags": "pop"}) + "\n")
    assert main(["bulk", str(jobs), "--checkpoint", str(v15_ckpt), "--out-dir", str(out_dir), "--quiet"]) == 2
    assert "line 1: unknown field 'tags'" in capsys.readouterr().err


def _client(pipeline, tmp_path: Path, **kwargs):
    from fastapi.testclient import TestClient

    from songflow.interfaces.server.app import create_app

    return TestClient(create_app(pipeline, data_dir=tmp_path / "data", checkpoint_name="tiny-v15", **kwargs))


def _wav_bytes(seconds: float = 2.0, amplitude: float = 0.3) -> bytes:
    """A 48 kHz mono sine WAV (silence for amplitude 0)."""
    import soundfile

    t = torch.arange(int(seconds * 48000)) / 48000
    buffer = io.BytesIO()
    soundfile.write(buffer, (amplitude * torch.sin(2 * torch.pi * 220 * t)).numpy(), 48000, format="WAV")
    return buffer.getvalue()


def test_v15_server_runs_a_job_and_serves_its_audio(pipe15, tmp_path):
    with _client(pipe15, tmp_path) as client:
        (model,) = client.get("/v1/models").json()["models"]
        assert model["family"] == "acestep-v15" and model["sample_rate_hz"] == 48000
        assert set(model["tasks"]) == {"text2music", "retake", "repaint", "cover", "extend", "edit", "simple"}
        body = {
            "caption": "warm jazz trio",
            "bpm": 90,
            "duration_s": 10.0,
            "params": {**FAST_PARAMS, "seeds": [3]},
        }
        answer = client.post("/v1/jobs", json=body)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        job = wait_final(client, job_id)
        assert job["state"] == "done", job
        assert job["request"]["caption"] == "warm jazz trio" and job["request"]["params"]["seeds"] == [3]
        audio = client.get(job["audio_urls"][0])
        assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "Cover15Request" in schema and "caption" in schema["Text2Music15Request"]["properties"]


def test_v15_server_refuses_v1_fields_and_takes_uploads(pipe15, tmp_path):
    with _client(pipe15, tmp_path, start_worker=False) as client:
        answer = client.post("/v1/jobs", json={"tags": "pop", "duration_s": 10.0})
        assert answer.status_code == 422
        (error,) = answer.json()["detail"]
        assert error["loc"] == ["body", "tags"] and "'tags' is a field of acestep-v1 requests" in error["msg"]
        answer = client.post("/v1/jobs", json={"caption": "x", "task": "audio2audio"})
        assert answer.status_code == 422 and "does not run task 'audio2audio'" in answer.text
        answer = client.post("/v1/jobs", json={"task": "cover", "caption": "x"})
        assert (
            answer.status_code == 422 and "upload the audio as multipart file field 'source'" in answer.text
        )
        form = {"request": json.dumps({"task": "cover", "caption": "rock cover", "params": FAST_PARAMS})}
        files = {
            "source": ("take.wav", _wav_bytes(), "audio/wav"),
            "reference": ("ref.wav", _wav_bytes(), "audio/wav"),
        }
        answer = client.post("/v1/jobs", data=form, files=files)
        assert answer.status_code == 202, answer.text
        request = answer.json()["request"]
        assert request["source_path"] == "upload:take.wav" and request["reference_path"] == "upload:ref.wav"
        silent = {"source": ("quiet.wav", _wav_bytes(amplitude=0.0), "audio/wav")}
        answer = client.post("/v1/jobs", data=form, files=silent)
        assert answer.status_code in (400, 422) and "quiet.wav" in answer.text and "/data" not in answer.text


def test_v1_server_refuses_v15_fields_by_name(tmp_path):
    from songflow.families import FAMILIES

    pipeline = SimpleNamespace(device="cpu", dtype=torch.float32, family=FAMILIES["acestep-v1"])
    with _client(pipeline, tmp_path, start_worker=False) as client:
        answer = client.post("/v1/jobs", json={"tags": "pop", "caption": "pop"})
        assert answer.status_code == 422
        (error,) = answer.json()["detail"]
        assert error["loc"] == ["body", "caption"] and "'caption' is a field of acestep-v15" in error["msg"]


def test_v15_studio_builds_the_family_tabs_and_runs_one(pipe15, tmp_path):
    from songflow.interfaces.studio.app import build_ui, run_task, studio_tasks
    from songflow.interfaces.studio.engine import History, Studio
    from songflow.interfaces.studio.form import build_request, form_values

    studio = Studio(pipe15, History(tmp_path / "out"), runtime={"checkpoint": "tiny-v15"})
    assert studio_tasks(studio) == ("text2music", "retake", "repaint", "cover", "extend", "edit", "simple")
    demo = build_ui(studio)
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for task in studio_tasks(studio):
        assert {f"tab-{task}", f"generate-{task}"} <= ids
    assert {"field-caption", "field-lyrics", "field-bpm", "field-key_scale", "field-time_signature"} <= ids
    assert {"cover-source_path", "params-timesteps", "params-infer_method"} <= ids
    assert "field-tags" not in ids and "params-sampler" not in ids
    values = {"caption": "dream pop", "lyrics": "[Instrumental]", "duration_s": 10, "bpm": 100}
    entry = run_task(studio, "text2music", values, {"seeds": "5", "timesteps": "1, 0.5"})
    assert entry.request.caption == "dream pop" and entry.request.params.seeds == (5,)
    assert _samples(entry.takes[0]).shape[-1] == 10 * 48000
    (listed,) = studio.history.entries()
    state = form_values(listed.request)
    again = build_request(state.task, state.values, state.params, schema=studio.schema)
    assert again == listed.request


def test_v15_base_tasks_are_refused_on_turbo_before_loading_and_offered_on_base(
    v15_ckpt, tmp_path, monkeypatch, capsys
):
    """extract/lego/complete: the CLI refuses them on a turbo folder from its config alone (nothing
    loaded, no output); a base folder offers them, and a loaded pipeline lists its own tasks (the server's
    and the studio's task lists)."""
    import soundfile as sf

    import songflow.families
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
    from songflow.families import family_for
    from songflow.interfaces.sidecar import pipeline_tasks

    source = tmp_path / "mix.wav"
    sf.write(str(source), torch.zeros(48000, 2).numpy(), 48000)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(songflow.families, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    for task in ("extract", "lego", "complete"):
        argv = ["generate", "--checkpoint", str(v15_ckpt), "--task", task, "--source-path", str(source)]
        assert main([*argv, "--out", "a.wav", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"does not run the {task!r} task" in err and "base or sft checkpoint" in err, err
        assert not (tmp_path / "a.wav").exists()
    base = build_random_v15_checkpoint(tmp_path / "base", variant="base")
    family = family_for(base)
    assert {"extract", "lego", "complete"} <= set(family.folder_tasks(base))
    assert not {"extract", "lego", "complete"} & set(family.folder_tasks(v15_ckpt))
    turbo_pipe = SimpleNamespace(family=family, tasks=family.folder_tasks(v15_ckpt))
    assert pipeline_tasks(turbo_pipe) == family.folder_tasks(v15_ckpt)
