"""``songflow serve --lora-dir DIR``: per-request LoRA adapters over the REST API, chosen by name.

On tiny random checkpoints (1.5: two custom timesteps, 10 s; v1: two steps, 1 s), with adapters written
in the official layouts (the helpers of ``test_v15_lora.py``; v1's through ``save_lora``). Shown: a job
naming an adapter at weight w gives the Python API's audio with that adapter, bit for bit, and weight 0
the base song; two queued jobs with different adapters each give what a fresh pipeline gives; records
and sidecars name the adapter, never its server path; unknown names, ``..``, absolute paths outside DIR
and a link leaving DIR are refused (422 naming the item) without a file being opened; a server without
--lora-dir refuses every adapter, saying to start it with --lora-dir; the OpenAPI schema types the field.
"""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
sf = pytest.importorskip("soundfile")

from conftest import load_cpu, tiny_v15_root, wait_final, write_random_lora  # noqa: E402
from songflow.requests import LoraRef  # noqa: E402
from songflow.requests_v15 import Params15, Text2Music15  # noqa: E402
from test_v15_lora import _lokr_factors, _lora_pairs, _write_lycoris, _write_peft  # noqa: E402

FAST15 = {"timesteps": [1.0, 0.5]}
# the calls that stat, list or open a file
_SPIED = ((os, "open"), (os, "stat"), (os, "lstat"), (os, "listdir"), (os, "scandir"), (builtins, "open"))


@pytest.fixture(scope="module")
def ckpt15(tmp_path_factory) -> Path:
    return tiny_v15_root(tmp_path_factory, "srv_lora", seed=3)


@pytest.fixture(scope="module")
def pipe15(ckpt15):
    return load_cpu(ckpt15)


@pytest.fixture(scope="module")
def lora_dir(pipe15, tmp_path_factory) -> Path:
    """``waltz`` (a PEFT trainer folder), ``grit.safetensors`` (a LoKr file) and ``escape``, a link to an
    adapter outside the folder (never offered); ``elsewhere/secret`` is that outside adapter."""
    decoder = pipe15.dit.decoder
    base = tmp_path_factory.mktemp("lora_home")
    root = base / "loras"
    _write_peft(root / "waltz", _lora_pairs(decoder, 4, seed=1), r=4, alpha=8)
    _write_lycoris(root / "grit.safetensors", _lokr_factors(decoder, 3), 4.0)
    outside = _write_peft(base / "elsewhere" / "secret", _lora_pairs(decoder, 4, seed=2), r=4, alpha=4)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


def _client(pipeline, tmp_path: Path, **kwargs):
    from fastapi.testclient import TestClient

    from songflow.interfaces.server.app import create_app

    return TestClient(create_app(pipeline, data_dir=tmp_path / "data", checkpoint_name="tiny", **kwargs))


def _body15(seed: int, *loras: dict) -> dict:
    body = {"caption": "dark synth", "lyrics": "[verse]\nla", "duration_s": 10.0}
    return {**body, "params": {**FAST15, "seeds": [seed]}, **({"loras": list(loras)} if loras else {})}


def _song15(seed: int, *loras: LoraRef) -> Text2Music15:
    params = Params15(seeds=(seed,), timesteps=(1.0, 0.5))
    return Text2Music15(
        caption="dark synth", lyrics="[verse]\nla", duration_s=10.0, params=params, loras=loras
    )


def _finished(client, job_id: str) -> dict:
    job = wait_final(client, job_id, timeout=180.0)
    assert job["state"] == "done", job
    return job


def _audio(client, job: dict) -> torch.Tensor:
    """The job's first output ``[C, T]`` (the server writes 32-bit float WAV: the samples exactly)."""
    answer = client.get(job["audio_urls"][0])
    assert answer.status_code == 200, answer.text
    data, _ = sf.read(io.BytesIO(answer.content), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy())


def _run(client, body: dict) -> tuple[dict, torch.Tensor]:
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    job = _finished(client, answer.json()["id"])
    return job, _audio(client, job)


def test_a_named_lora_job_is_the_python_api_song_and_weight_zero_the_base(pipe15, lora_dir, tmp_path):
    with _client(pipe15, tmp_path, lora_dir=lora_dir) as client:
        listed = client.get("/v1/loras").json()
        assert listed["enabled"] and [a["name"] for a in listed["loras"]] == ["grit.safetensors", "waltz"]
        job, styled = _run(client, _body15(5, {"name": "waltz", "weight": 0.8}))
        _, off = _run(client, _body15(5, {"name": "waltz", "weight": 0.0}))
        sidecar_text = (tmp_path / "data" / "outputs" / job["id"] / "result.json").read_text()
    assert job["request"]["loras"] == [{"name": "waltz", "weight": 0.8}]
    assert str(lora_dir) not in json.dumps(job) and str(lora_dir) not in sidecar_text
    assert json.loads(sidecar_text)["request"]["loras"] == [{"path": "waltz", "weight": 0.8}]
    expected = pipe15.generate(_song15(5, LoraRef(str(lora_dir / "waltz"), 0.8)))
    base = pipe15.generate(_song15(5))
    assert torch.equal(styled, expected.audio[0])
    assert torch.equal(off, base.audio[0])
    assert not torch.equal(styled, off)  # the adapter changes the song (the tiny VAE squashes it):
    assert (expected.latents - base.latents).abs().max() > 0.1 * base.latents.abs().max()


def test_queued_jobs_with_different_adapters_each_get_their_own(pipe15, ckpt15, lora_dir, tmp_path):
    waltz, grit = str(lora_dir / "waltz"), str(lora_dir / "grit.safetensors")
    choices = [  # (the job's loras, the Python API's)
        ([{"name": "grit.safetensors", "weight": 0.7}], (LoraRef(grit, 0.7),)),
        ([{"path": "./waltz/", "weight": 1.0}], (LoraRef(waltz, 1.0),)),  # a path naming an offered one
        ([], ()),
        ([{"name": "waltz", "weight": 0.5}, {"path": grit}], (LoraRef(waltz, 0.5), LoraRef(grit, 1.0))),
    ]
    with _client(pipe15, tmp_path, lora_dir=lora_dir) as client:
        client.app.state.worker.pause()  # all four queued before the first runs
        ids = [client.post("/v1/jobs", json=_body15(8, *items)).json()["id"] for items, _ in choices]
        client.app.state.worker.resume()
        audio = [_audio(client, _finished(client, job_id)) for job_id in ids]
        views = [client.get(f"/v1/jobs/{job_id}").json()["request"]["loras"] for job_id in ids]
    assert views[1] == [{"name": "waltz", "weight": 1.0}] and views[2] == []
    assert views[3] == [{"name": "waltz", "weight": 0.5}, {"name": "grit.safetensors", "weight": 1.0}]
    fresh = load_cpu(ckpt15)
    for (items, refs), got in zip(choices, audio, strict=True):
        assert torch.equal(fresh.generate(_song15(8, *refs)).audio[0], got), items


@pytest.mark.parametrize(
    ("item", "key", "says"),
    [
        ({"name": "nope"}, "name", "no LoRA adapter 'nope'"),
        ({"name": "../elsewhere/secret"}, "name", "chosen by name, not by path"),
        ({"path": "waltz/../../elsewhere/secret"}, "path", "chosen by name, not by path"),
        ({"path": "ELSEWHERE"}, "path", "chosen by name, not by path"),  # the outside adapter's path
        ({"path": "/etc/passwd"}, "path", "chosen by name, not by path"),
        ({"name": "escape"}, "name", "no LoRA adapter 'escape'"),  # a link leaving the folder
    ],
)
def test_paths_outside_the_lora_dir_and_unknown_names_are_refused_unopened(
    pipe15, lora_dir, tmp_path, monkeypatch, item, key, says
):
    outside = str((lora_dir.parent / "elsewhere").resolve())
    if item.get("path") == "ELSEWHERE":
        item = {"path": str(Path(outside) / "secret")}
    touched: list[str] = []  # every path the server stats, lists or opens while it answers
    for module, name in [(os, n) for n in ("open", "stat", "lstat", "listdir", "scandir")] + [
        (builtins, "open")
    ]:
        real = getattr(module, name)

        def spy(path, *args, _real=real, **kwargs):
            touched.append(os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else "")
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    with _client(pipe15, tmp_path, lora_dir=lora_dir, start_worker=False) as client:
        touched.clear()
        answer = client.post("/v1/jobs", json=_body15(1, item))
        opened = [p for p in touched if p.startswith((outside, "/etc", str(lora_dir)))]
        assert Path(outside).is_dir() and outside in touched  # the spies see file-system calls
        monkeypatch.undo()
        assert answer.status_code == 422, answer.text
        (error,) = answer.json()["detail"]
        assert error["loc"] == ["body", "loras", 0, key] and says in error["msg"], error
        assert "GET /v1/loras" in error["msg"] and str(lora_dir) not in error["msg"]
        assert client.get("/v1/jobs").json()["jobs"] == []
    assert opened == []


def test_malformed_lora_items_are_422_naming_the_field(pipe15, lora_dir, tmp_path):
    with _client(pipe15, tmp_path, lora_dir=lora_dir, start_worker=False) as client:
        for item, loc in (
            ({"name": "waltz", "path": "waltz"}, ["body", "loras", 0]),
            ({}, ["body", "loras", 0]),
            ({"name": "waltz", "weight": "loud"}, ["body", "loras", 0, "weight"]),
            ({"name": "waltz", "weight": 11}, ["body", "loras", 0, "weight"]),
            ({"name": "waltz", "scale": 1}, ["body", "loras", 0, "scale"]),
        ):
            answer = client.post("/v1/jobs", json=_body15(1, item))
            assert answer.status_code == 422, (item, answer.text)
            assert loc in [e["loc"] for e in answer.json()["detail"]], (item, answer.text)
        schema = client.get("/openapi.json").json()
    parts = schema["components"]["schemas"]
    assert parts["Text2Music15Request"]["properties"]["loras"]["items"] == {
        "$ref": "#/components/schemas/LoraChoice"
    }
    choice = parts["LoraChoice"]["properties"]
    assert {"type": "string", "minLength": 1} in choice["name"]["anyOf"]
    weight = choice["weight"]
    assert (weight["type"], weight["minimum"], weight["maximum"]) == ("number", -10.0, 10.0)
    assert "/v1/loras" in schema["paths"]


def test_without_a_lora_dir_every_adapter_is_refused_saying_how(pipe15, tmp_path):
    with _client(pipe15, tmp_path, start_worker=False) as client:
        listed = client.get("/v1/loras").json()
        assert listed["enabled"] is False and listed["loras"] == [] and "--lora-dir" in listed["hint"]
        for item in ({"name": "waltz"}, {"path": "/srv/lora"}):
            answer = client.post("/v1/jobs", json=_body15(1, item))
            assert answer.status_code == 422, answer.text
            (error,) = answer.json()["detail"]
            assert error["loc"] == ["body", "loras"] and "songflow serve --lora-dir DIR" in error["msg"]
        assert client.post("/v1/jobs", json=_body15(1)).status_code == 202  # no adapters: fine


def test_serve_refuses_a_missing_lora_dir_before_loading(tmp_path, capsys):
    from songflow.interfaces.cli import main

    assert main(["serve", "--lora-dir", str(tmp_path / "missing"), "--checkpoint", str(tmp_path / "x")]) == 2
    assert "--lora-dir" in (err := capsys.readouterr().err) and "is not a folder" in err, err


def test_a_v1_job_with_a_named_lora_is_the_python_api_song(pipe, tiny_ckpt, tmp_path):
    from songflow.checkpoint.acestep_v1 import load_transformer
    from songflow.checkpoint.lora import OFFICIAL_TARGET_MODULES
    from songflow.requests import GenerationParams, Text2Music

    model = load_transformer(tiny_ckpt / "ace_step_transformer", dtype=torch.float32, device="cpu")
    write_random_lora(model, OFFICIAL_TARGET_MODULES, tmp_path / "loras" / "style")
    fast = {"steps": 2, "guidance": "cfg", "guidance_scale": 2.0, "seeds": [4]}
    body = {"task": "text2music", "tags": "waltz", "duration_s": 1.0, "params": fast}
    try:
        with _client(pipe, tmp_path, lora_dir=tmp_path / "loras") as client:
            job, styled = _run(client, {**body, "loras": [{"name": "style", "weight": 0.9}]})
            _, plain = _run(client, body)
        ref = LoraRef(str(tmp_path / "loras" / "style"), 0.9)
        params = GenerationParams(steps=2, guidance="cfg", guidance_scale=2.0, seeds=(4,))
        expected = pipe.generate(Text2Music(tags="waltz", duration_s=1.0, params=params, loras=(ref,)))
    finally:
        pipe.apply_loras(())  # the pipeline fixture is shared
    assert job["request"]["loras"] == [{"name": "style", "weight": 0.9}]
    assert torch.equal(styled, expected.audio[0])
    assert (styled - plain).abs().max() > 1e-4
