"""ACE-Step 1.5 extend on a tiny random checkpoint: exact length, the source kept, windows, replay, errors.

The pipeline's window is shrunk to :data:`WINDOW` frames (6 s) so that a 3 s source extended by a few
seconds runs several windows in about a second each; a > 600 s extension is checked on the pure planner.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_v15_root, wait_final
from songflow.errors import SongflowError
from songflow.interfaces.cli import main
from songflow.requests import RequestFieldError
from songflow.requests_v15 import MAX_EXTEND_V15_S, Extend15, Params15, request15_from_dict
from songflow.tasks.acestep_v15 import extend as extend15

SR, HOP = 48000, 1920
WINDOW = 150  # frames per DiT run in these tests (the model's is 15000 = 600 s)
FAST = {"timesteps": (1.0, 0.5)}


@pytest.fixture(scope="module")
def ckpt15(tmp_path_factory) -> Path:
    return tiny_v15_root(tmp_path_factory, "v15x", seed=0)


@pytest.fixture(scope="module")
def pipe15(ckpt15):
    from songflow.families import load_pipeline

    pipe = load_pipeline(ckpt15, device="cpu", dtype="float32")
    pipe.extend_window_frames = WINDOW
    return pipe


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """3.01 s of a stereo chord (not a whole number of latent frames: 75 frames + 480 samples)."""
    t = np.arange(int(3.01 * SR)) / SR
    noise = 0.02 * np.random.default_rng(0).standard_normal(t.size)
    wav = np.stack([0.3 * np.sin(2 * np.pi * 220 * t) + noise, 0.3 * np.sin(2 * np.pi * 277 * t)], 1)
    wav = wav.astype(np.float32)
    path = tmp_path_factory.mktemp("src") / "source.wav"
    sf.write(str(path), wav, SR, subtype="FLOAT")
    return path, wav


def _extend(path: Path, **kw) -> Extend15:
    params = Params15(seeds=kw.pop("seeds", (5,)), batch_size=kw.pop("batch_size", 1), **FAST)
    return Extend15(caption="warm synth pop", source_path=str(path), params=params, **kw)


def _source_latents(pipe, path: Path, seeds: tuple[int, ...]) -> torch.Tensor:
    """The source's VAE latents as a request with ``seeds`` samples them (fresh per-request draws)."""
    pipe._vae_calls = {}
    try:
        return pipe.encode_source(str(path), seeds).float()
    finally:
        pipe._sources.clear()


# -- the pure parts: frames and windows ---------------------------------------------------------------


@pytest.mark.parametrize("n_source", [144480, 144000 * 10 + 1, 600 * SR])
@pytest.mark.parametrize(("left_s", "right_s"), [(0.0, 2.345), (1.001, 0.0), (7.5, 30.02), (1200.0, 1200.0)])
def test_span_frames_cover_the_requested_samples_exactly(n_source, left_s, right_s):
    span = extend15.extend_span(n_source, n_source // HOP, left_s, right_s)
    assert span.n_samples == round(left_s * SR) + n_source + round(right_s * SR)
    # the new frames cover the requested samples, with less than one frame to spare
    assert 0 <= span.left_frames * HOP - span.n_left < HOP
    if right_s:
        spare = (span.source_frames + span.right_frames) * HOP - (n_source + span.n_right)
        assert 0 <= spare < HOP
    else:
        assert span.right_frames == 0


def test_windows_past_600_s_each_fit_and_generate_every_new_frame_once():
    span = extend15.extend_span(200 * SR, 200 * 25, MAX_EXTEND_V15_S, MAX_EXTEND_V15_S)  # 2600 s result
    assert extend15.WINDOW_FRAMES == 600 * 25
    windows = extend15.plan_windows15(span)
    assert span.total_frames == 65000 and len(windows) > 4
    generated = torch.zeros(span.total_frames, dtype=torch.int64)
    known = torch.zeros(span.total_frames, dtype=torch.bool)
    known[span.left_frames : span.left_frames + span.source_frames] = True
    for win in windows:
        assert win.n_frames <= extend15.WINDOW_FRAMES
        mask = win.mask()
        context = known[win.start : win.stop][~mask]
        # the context is known (source or earlier windows) and at least half a window of it, or all there is
        assert bool(context.all())
        assert context.numel() >= min(int(known.sum()), extend15.WINDOW_FRAMES // 2)
        assert not bool(known[win.start : win.stop][mask].any())  # never regenerated
        generated[win.start : win.stop] += mask.long()
        known[win.start : win.stop] |= mask
    assert bool(known.all())
    expected = torch.ones(span.total_frames, dtype=torch.int64)
    expected[span.left_frames : span.left_frames + span.source_frames] = 0
    assert torch.equal(generated, expected)
    assert extend15.window_seeds((1, 2), 0) == (1, 2) and extend15.window_seeds((1,), 3) != (1,)


# -- the pipeline -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left_s", "right_s", "n_windows"),
    [(1.5, 0.0, 1), (0.0, 2.0, 1), (1.0, 1.0, 1), (2.5, 4.0, 3)],
    ids=["left", "right", "both", "multi-window"],
)
def test_extend_length_and_kept_source(pipe15, source_wav, left_s, right_s, n_windows):
    path, wav = source_wav
    seen: list[tuple[int, int]] = []
    result = pipe15.generate(
        _extend(path, left_s=left_s, right_s=right_s), progress=lambda i, n: seen.append((i, n))
    )
    span = extend15.extend_span(len(wav), len(wav) // HOP, left_s, right_s)
    assert len(extend15.plan_windows15(span, WINDOW)) == n_windows
    n_left, n_right = round(left_s * SR), round(right_s * SR)
    assert result.audio.shape == (1, 2, n_left + len(wav) + n_right)  # exactly what was asked
    assert result.latents.shape[1] == span.total_frames
    a = span.left_frames
    src = _source_latents(pipe15, path, result.request.params.seeds)
    assert torch.equal(result.latents[:, a : a + span.source_frames], src)  # the source latents, bit-exact
    assert np.array_equal(result.audio[0, :, n_left : n_left + len(wav)].numpy(), wav.T)  # its samples
    new = torch.cat([result.latents[:, :a], result.latents[:, a + span.source_frames :]], dim=1)
    assert bool(torch.isfinite(new).all()) and new.abs().max() > 0  # generated, not left empty
    steps = 2 * n_windows
    assert seen == [(i + 1, steps) for i in range(steps)]


def test_extend_without_kept_samples_is_the_decoded_source(pipe15, source_wav):
    path, wav = source_wav
    kept = pipe15.generate(_extend(path, left_s=1.0, right_s=1.0, retake_seeds=(9,)))
    decoded = pipe15.generate(
        _extend(path, left_s=1.0, right_s=1.0, retake_seeds=(9,), keep_source_samples=False)
    )
    assert decoded.audio.shape == kept.audio.shape
    assert torch.equal(decoded.latents, kept.latents)  # the same run; only the returned samples differ
    n_left = SR
    region = decoded.audio[0, :, n_left : n_left + len(wav)].numpy()
    assert not np.array_equal(region, wav.T)
    fade = round(0.05 * SR)  # the splice's fade reaches this far into the new audio
    assert torch.equal(kept.audio[..., : n_left - fade], decoded.audio[..., : n_left - fade])
    assert torch.equal(
        kept.audio[..., n_left + len(wav) + fade :], decoded.audio[..., n_left + len(wav) + fade :]
    )


def test_extend_replays_bit_exactly_and_retake_seeds_change_only_the_new_frames(pipe15, source_wav):
    path, wav = source_wav
    first = pipe15.generate(_extend(path, left_s=2.5, right_s=4.0, seeds=(5, 6), batch_size=2))
    assert first.request.retake_seeds is not None and len(first.request.retake_seeds) == 2
    again = pipe15.generate(first.request)
    assert torch.equal(again.latents, first.latents) and torch.equal(again.audio, first.audio)
    other = pipe15.generate(
        _extend(path, left_s=2.5, right_s=4.0, seeds=(5, 6), batch_size=2, retake_seeds=(1, 2))
    )
    span = extend15.extend_span(len(wav), len(wav) // HOP, 2.5, 4.0)
    a, b = span.left_frames, span.left_frames + span.source_frames
    assert torch.equal(other.latents[:, a:b], first.latents[:, a:b])
    assert (other.latents[:, b:] - first.latents[:, b:]).abs().max() > 1e-3
    retake = (first.request.retake_seeds[1],)
    single = pipe15.generate(_extend(path, left_s=2.5, right_s=4.0, seeds=(6,), retake_seeds=retake))
    assert torch.allclose(single.latents[0], first.latents[1], atol=1e-4)  # a batch equals its singles


def test_extend_bad_requests_say_what_to_do(pipe15, source_wav, tmp_path):
    path, _ = source_wav
    with pytest.raises(RequestFieldError, match="needs field"):
        request15_from_dict({"task": "extend", "right_s": 2.0})
    with pytest.raises(RequestFieldError, match="left_s > 0 or right_s > 0"):
        _extend(path, left_s=0.0, right_s=0.0)
    with pytest.raises(RequestFieldError, match=r"right_s must be in \[0.0, 1200.0\]"):
        request15_from_dict({"task": "extend", "source_path": str(path), "right_s": 1500})
    with pytest.raises(SongflowError, match="missing.wav"):
        pipe15.generate(_extend(tmp_path / "missing.wav", right_s=1.0))


def test_extend_cli_and_replay(ckpt15, source_wav, tmp_path):
    path, wav = source_wav
    out = tmp_path / "ext.wav"
    argv = ["generate", "--checkpoint", str(ckpt15), "--task", "extend", "--source-path", str(path)]
    flags = ["--left-s", "0.5", "--right-s", "1.25", "--timesteps", "1,0.5", "--seed", "4", "--quiet"]
    assert main([*argv, *flags, "--out", str(out)]) == 0
    audio, rate = sf.read(out)
    assert rate == SR and audio.shape[0] == round(0.5 * SR) + len(wav) + round(1.25 * SR)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["request"]["task"] == "extend" and sidecar["request"]["left_s"] == 0.5
    again = tmp_path / "again.wav"
    assert main(["generate", "--from", str(out.with_suffix(".json")), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(sf.read(again)[0], audio)


def test_extend_on_base_with_guidance_and_sde(tmp_path, source_wav):
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
    from songflow.families import load_pipeline

    path, wav = source_wav
    root = build_random_v15_checkpoint(tmp_path / "checkpoints", variant="base", seed=1)
    base = load_pipeline(root, device="cpu", dtype="float32")
    base.extend_window_frames = WINDOW
    params = Params15(seeds=(2,), steps=2, infer_method="sde")
    request = Extend15(source_path=str(path), left_s=2.5, right_s=4.0, params=params, retake_seeds=(3,))
    result = base.generate(request)
    assert result.request.params.guidance_scale == 7.0  # APG ran in every window
    span = extend15.extend_span(len(wav), len(wav) // HOP, 2.5, 4.0)
    a = span.left_frames
    src = _source_latents(base, path, (2,))
    assert torch.equal(result.latents[:, a : a + span.source_frames], src)
    assert result.audio.shape[-1] == span.n_samples
    assert torch.equal(base.generate(result.request).audio, result.audio)


def test_extend_rest_job_with_an_uploaded_source(pipe15, source_wav, tmp_path):
    from fastapi.testclient import TestClient

    from songflow.interfaces.server.app import create_app

    path, wav = source_wav
    app = create_app(pipe15, data_dir=tmp_path / "data", checkpoint_name="tiny-v15")
    form = {"request": json.dumps({"task": "extend", "right_s": 1.5, "params": {"timesteps": [1.0, 0.5]}})}
    with TestClient(app) as client:
        answer = client.post("/v1/jobs", data=form, files={"source": ("take.wav", path.read_bytes())})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        job = wait_final(client, job_id)
        assert job["state"] == "done", job
        audio, rate = sf.read(io.BytesIO(client.get(job["audio_urls"][0]).content))
    assert rate == SR and audio.shape[0] == len(wav) + round(1.5 * SR)
