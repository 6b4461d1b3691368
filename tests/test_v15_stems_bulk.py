"""ACE-Step 1.5 stems and bulk / ``--from`` replay for every 1.5 task (issue 15 parts 1 and 5).

Stems: every requested track in one batched DiT call, one row per track, each row the extract of that track
with the request's seed. The residual of the stems' sum against the mix (``stem_residual_db``) is checked
on stems built here (the synthetic corpus renders only the vocal stem); on a tiny random checkpoint it is
finite and reported, with no bound (random weights extract nothing). Bulk: one JSONL line per task runs
on a tiny random turbo (text2music, retake, repaint, cover, extend, edit, simple) or base checkpoint
(extract, stems, lego, complete), and ``--from`` each sidecar regenerates its audio bit-exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from songflow.errors import ConfigError
from songflow.interfaces.cli import main
from songflow.requests_v15 import Extract15, Params15, Stems15
from songflow.tasks.acestep_v15.output import stem_residual_db

SR = 48000
#: batched rows vs single runs: the same math in another matmul blocking (latents peak about 16 here)
BATCH_ATOL = 1e-3
#: known stems summed into a float32 WAV mix and read back: float32 rounding only
KNOWN_STEMS_BOUND_DB = -100.0
FAST_BASE = {"steps": 2}
FAST_TURBO = {"timesteps": [1.0, 0.5]}


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def base_root(tmp_path_factory) -> Path:
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

    return build_random_v15_checkpoint(
        tmp_path_factory.mktemp("v15b") / "checkpoints", variant="base", seed=1
    )


@pytest.fixture(scope="module")
def turbo_root(tmp_path_factory) -> Path:
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

    return build_random_v15_checkpoint(tmp_path_factory.mktemp("v15t") / "checkpoints", seed=0, lm=True)


@pytest.fixture(scope="module")
def base15(base_root):
    from songflow.families import load_pipeline

    return load_pipeline(base_root, device="cpu", dtype="float32")


def _known_stems(n_samples: int) -> np.ndarray:
    """Four stereo stems ``[4, 2, N]``: a bass line, a chord, a noise 'hat' and a click track."""
    t = np.arange(n_samples) / SR
    rng = np.random.default_rng(7)
    bass = 0.3 * np.sin(2 * np.pi * 55 * t)
    chord = 0.1 * (np.sin(2 * np.pi * 262 * t) + np.sin(2 * np.pi * 330 * t))
    hat = 0.02 * rng.standard_normal(n_samples) * (np.sin(2 * np.pi * 4 * t) > 0)
    clicks = np.zeros(n_samples)
    clicks[:: SR // 2] = 0.5
    mono = np.stack([bass, chord, hat, clicks])
    return np.stack([mono, np.roll(mono, 5, axis=-1)], axis=1)


@pytest.fixture(scope="module")
def mix_wav(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The mix of :func:`_known_stems` (3 s, a float32 WAV) and the stems themselves."""
    stems = _known_stems(3 * SR)
    path = tmp_path_factory.mktemp("mix") / "mix.wav"
    sf.write(str(path), stems.sum(axis=0).T.astype(np.float32), SR, subtype="FLOAT")
    return path, stems


# -- the residual -----------------------------------------------------------------------------------


def test_known_stems_sum_to_their_mix(mix_wav):
    """Stems that are the mix's parts give a residual at float32 rounding level (<= -100 dB); leaving one
    out gives exactly that stem's level against the mix; half-level stems give 20 log10(1/2)."""
    from songflow.interfaces.sidecar import read_mix

    path, stems = mix_wav
    mix = read_mix(path, SR)
    parts = torch.from_numpy(stems).float()
    residual = stem_residual_db(mix, parts)
    assert residual <= KNOWN_STEMS_BOUND_DB
    print(f"stems that are the mix's parts: residual {residual:.1f} dB")
    left_out = parts[2]
    expected = 20 * math.log10(
        float(torch.linalg.vector_norm(left_out.double())) / float(mix.double().norm())
    )
    assert stem_residual_db(mix, parts[[0, 1, 3]]) == pytest.approx(expected, abs=1e-3)
    assert stem_residual_db(mix, parts * 0.5) == pytest.approx(20 * math.log10(0.5), abs=1e-3)
    assert stem_residual_db(mix, torch.zeros_like(parts)) == 0.0


def test_residual_lengths_and_bad_input(mix_wav):
    """Over the mix's length: longer stems are cut, missing samples count as residual."""
    _, stems = mix_wav
    parts = torch.from_numpy(stems).double()
    mix = parts.sum(0)
    longer = torch.cat([parts, torch.ones(4, 2, 100, dtype=parts.dtype)], dim=-1)
    assert stem_residual_db(mix, longer) == -math.inf  # exact in float64, the extra samples ignored
    n = mix.shape[-1] // 2
    expected = 20 * math.log10(float(mix[:, n:].norm()) / float(mix.norm()))
    assert stem_residual_db(mix, parts[..., :n]) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="silent"):
        stem_residual_db(torch.zeros(2, 10), torch.zeros(1, 2, 10))
    with pytest.raises(ValueError, match="expected mix"):
        stem_residual_db(mix, mix)


# -- stems on the tiny base checkpoint ---------------------------------------------------------------


def _instruction_tokens(pipe, track: str) -> int:
    """How many tokens the extract instruction of ``track`` has."""
    from songflow.text.acestep_v15_prompts import instruction_for

    return int(pipe.text_encoder.tokenize_captions([instruction_for("extract", track)])[0].shape[1])


def _equal_length_tracks(pipe, count: int) -> tuple[str, ...]:
    """``count`` tracks whose extract instructions tokenize to the same length (no padding in a batch)."""
    from songflow.requests_v15 import TRACK_NAMES_V15

    by_length: dict[int, list[str]] = {}
    for track in TRACK_NAMES_V15:
        by_length.setdefault(_instruction_tokens(pipe, track), []).append(track)
    group = max(by_length.values(), key=len)
    assert len(group) >= count, by_length
    return tuple(group[:count])


def test_one_track_stems_is_the_extract_bit_exactly(base15, mix_wav):
    p = Params15(seeds=(3,), **FAST_BASE)
    stems = base15.generate(Stems15(source_path=str(mix_wav[0]), tracks="vocals", params=p))
    single = base15.generate(Extract15(source_path=str(mix_wav[0]), track="vocals", params=p))
    assert torch.equal(stems.latents, single.latents) and torch.equal(stems.audio, single.audio)


def test_batched_stems_equal_single_extracts(base15, mix_wav):
    """One DiT batch, a row per track; each row is the single extract of its track with the same seed (to
    BATCH_ATOL on latents peaking near 16: not bit-exact, a batch blocks the matmuls differently), SDE
    draws and a reference timbre included. The instructions here tokenize to one length: rows whose
    instructions are padded to the longest differ more (see the next test)."""
    three = _equal_length_tracks(base15, 3)
    reference = {"infer_method": "sde", "reference_path": str(mix_wav[0])}  # 30 s of VAE work per run
    for tracks, extra in ((three, {}), (three[:2], reference)):
        ref = extra.pop("reference_path", None)
        p = Params15(seeds=(3,), **FAST_BASE, **extra)
        fields = {"source_path": str(mix_wav[0]), "reference_path": ref, "params": p}
        batch = base15.generate(Stems15(tracks=",".join(tracks), **fields))
        assert batch.audio.shape[0] == len(tracks)
        for i, track in enumerate(tracks):
            single = base15.generate(Extract15(track=track, **fields))
            diff = (batch.latents[i] - single.latents[0]).abs().max().item()
            assert diff <= BATCH_ATOL, (track, extra, diff)
            assert torch.allclose(batch.audio[i], single.audio[0], atol=1e-5), track


def test_padded_instruction_rows_equal_their_single_extract(base15, mix_wav):
    """All 12 tracks in one batch: the instructions differ in length, so the shorter rows are right-padded;
    the padded encoder tokens are masked out of the cross-attention (the official model masks nothing, SPEC
    §9.2, which is the same for a lone row, that has no padding), so every row equals its single extract."""
    p = Params15(seeds=(3,), **FAST_BASE)
    source = str(mix_wav[0])
    batch = base15.generate(Stems15(source_path=source, tracks="all", params=p))
    tracks = batch.request.track_names
    lengths = [_instruction_tokens(base15, t) for t in tracks]
    assert len(set(lengths)) > 1, "the 12 instructions should have different lengths"
    diffs = {}
    for i, track in enumerate(tracks):
        single = base15.generate(Extract15(source_path=source, track=track, params=p))
        diffs[track] = (batch.latents[i] - single.latents[0]).abs().max().item()
    assert all(d <= BATCH_ATOL for d in diffs.values()), diffs
    print(f"12 stems in one batch vs single extracts: max |diff| {max(diffs.values()):.2g}")


def test_stems_cli_writes_tracks_side_by_side_with_one_sidecar(base_root, mix_wav, tmp_path, capsys):
    """``--task extract --stems all``: OUT_<track>.wav for the 12 tracks, one OUT.json listing them with the
    residual (finite on random weights; no bound), printed too; ``--from`` replays every stem exactly."""
    from songflow.interfaces.sidecar import read_mix

    out = tmp_path / "run" / "song.wav"
    argv = ["generate", "--checkpoint", str(base_root), "--task", "extract", "--stems", "all"]
    argv += ["--source-path", str(mix_wav[0]), "--steps", "2", "--seed", "5", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    sidecar = json.loads((tmp_path / "run" / "song.json").read_text())
    tracks = sidecar["stems"]["tracks"]
    assert sidecar["request"]["task"] == "stems" and len(tracks) == 12
    assert sidecar["outputs"] == [f"song_{t}.wav" for t in tracks]
    stems = torch.stack(
        [torch.from_numpy(sf.read(out.parent / name, dtype="float32")[0].T) for name in sidecar["outputs"]]
    )
    residual = stem_residual_db(read_mix(mix_wav[0], SR), stems)
    assert math.isfinite(residual) and sidecar["stems"]["residual_db"] == pytest.approx(residual, abs=0.01)
    assert f"= {sidecar['stems']['residual_db']:.2f} dB" in err
    print(f"tiny random base checkpoint, 12 stems: residual {residual:.2f} dB (random weights: no bound)")
    replay = tmp_path / "again" / "song.wav"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(base_root),
                "--from",
                str(tmp_path / "run" / "song.json"),
                "--out",
                str(replay),
                "--quiet",
            ]
        )
        == 0
    )
    for name in sidecar["outputs"]:
        assert np.array_equal(sf.read(out.parent / name)[0], sf.read(replay.parent / name)[0]), name


def test_stems_are_refused_clearly(base15, base_root, turbo_root, mix_wav, tmp_path, capsys):
    source = str(mix_wav[0])
    with pytest.raises(ConfigError, match="leave instruction out"):
        base15.generate(
            Stems15(source_path=source, tracks="bass", instruction="x", params=Params15(seeds=(1,)))
        )
    argv = ["generate", "--source-path", source, "--out", str(tmp_path / "x.wav")]
    assert main([*argv, "--checkpoint", str(turbo_root), "--stems", "all"]) == 2
    assert "base or sft" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", str(base_root), "--task", "repaint", "--stems", "all"]) == 2
    assert "--task extract" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", str(base_root), "--stems", "all", "--track", "bass"]) == 2
    assert "give the stems once" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", str(base_root), "--stems", "vocals,nope"]) == 2
    assert "tracks must be" in capsys.readouterr().err


def test_the_server_names_a_stems_jobs_outputs_by_track(base15, mix_wav, tmp_path):
    """The job worker writes audio_<track>.wav per stem (audio_<i>.wav otherwise) and one sidecar."""
    from songflow.interfaces.server.jobs import SIDECAR_NAME, Worker

    result = base15.generate(
        Stems15(source_path=str(mix_wav[0]), tracks="drums,bass", params=Params15(seeds=(2,), **FAST_BASE))
    )
    worker = SimpleNamespace(
        outputs_dir=tmp_path,
        runtime={"checkpoint": "tiny"},
        family=base15.family,
        pipeline=base15,
        loras=None,
    )
    names = Worker._write_outputs(worker, "job1", result)  # type: ignore[arg-type]
    assert names == ["audio_drums.wav", "audio_bass.wav"]
    sidecar = json.loads((tmp_path / "job1" / SIDECAR_NAME).read_text())
    assert sidecar["outputs"] == names and sidecar["stems"]["tracks"] == ["drums", "bass"]
    assert set(sidecar["weights_sha256"]) == {"dit", "vae", "text_encoder"}


# -- bulk and --from for every 1.5 task ---------------------------------------------------------------


def _lines(source: str) -> dict[str, dict]:
    """One request per 1.5 task (its checkpoint's variant in ``_VARIANT``)."""
    song = {"caption": "warm synth pop", "lyrics": "[verse]\nla la", "params": {"seeds": [11]}}
    turbo = {**song, "params": {**song["params"], **FAST_TURBO}}
    base = {**song, "params": {**song["params"], **FAST_BASE}}
    return {
        "text2music": {"task": "text2music", **turbo, "duration_s": 2.0},
        "retake": {"task": "retake", **turbo, "duration_s": 2.0, "variance_frac": 0.4, "retake_seeds": [7]},
        "repaint": {"task": "repaint", **turbo, "source_path": source, "start_s": 1.0, "end_s": 2.0},
        "cover": {"task": "cover", **turbo, "source_path": source, "cover_strength_frac": 0.5},
        "simple": {
            "task": "simple",
            "description": "a calm piano song",
            "duration_s": 10.0,
            "params": {"seeds": [2], "lm_seeds": [3], **FAST_TURBO},
        },  # fmt: skip
        "extract": {"task": "extract", **base, "source_path": source, "track": "vocals"},
        "stems": {"task": "stems", **base, "source_path": source, "tracks": "drums,bass"},
        "lego": {"task": "lego", **base, "source_path": source, "track": "guitar", "start_s": 1.0},
        "complete": {"task": "complete", **base, "source_path": source, "classes": "drums"},
        "extend": {"task": "extend", **turbo, "source_path": source, "right_s": 2.0, "retake_seeds": [9]},
        "edit": {"task": "edit", **turbo, "source_path": source, "target_caption": "dark rock"},
    }


_VARIANT = {"extract": "base", "stems": "base", "lego": "base", "complete": "base"}


def _bulk_then_replay(root: Path, lines: dict[str, dict], tmp_path: Path) -> None:
    """``songflow bulk`` over ``lines`` (named by task), then ``--from`` each sidecar: every output file
    (and the recorded request) the same."""
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text("".join(json.dumps({"name": task, **line}) + "\n" for task, line in lines.items()))
    out = tmp_path / "bulk"
    assert main(["bulk", str(jsonl), "--checkpoint", str(root), "--out-dir", str(out), "--quiet"]) == 0
    for task in lines:
        sidecar = json.loads((out / f"{task}.json").read_text())
        replay = tmp_path / "replay" / task / f"{task}.wav"
        argv = [
            "generate",
            "--checkpoint",
            str(root),
            "--from",
            str(out / f"{task}.json"),
            "--out",
            str(replay),
        ]
        assert main([*argv, "--quiet"]) == 0, task
        again = json.loads(replay.with_suffix(".json").read_text())
        assert again["request"] == sidecar["request"] and again["outputs"] == sidecar["outputs"], task
        replayed_lm = "lm" in again["weights_sha256"]  # a planned song replays without the LM
        assert again["weights_sha256"] == {
            k: v for k, v in sidecar["weights_sha256"].items() if k != "lm" or replayed_lm
        }
        for name in sidecar["outputs"]:
            a, b = sf.read(out / name)[0], sf.read(replay.parent / name)[0]
            assert a.shape == b.shape and np.array_equal(a, b), (task, name)


def test_bulk_and_replay_every_turbo_task(turbo_root, mix_wav, tmp_path):
    lines = {t: v for t, v in _lines(str(mix_wav[0])).items() if t not in _VARIANT}
    _bulk_then_replay(turbo_root, lines, tmp_path)
    simple = json.loads((tmp_path / "bulk" / "simple.json").read_text())
    assert simple["planned_from"]["task"] == "simple" and "lm" in simple["weights_sha256"]


def test_bulk_and_replay_every_base_task(base_root, mix_wav, tmp_path):
    lines = {t: v for t, v in _lines(str(mix_wav[0])).items() if _VARIANT.get(t) == "base"}
    _bulk_then_replay(base_root, lines, tmp_path)
    stems = json.loads((tmp_path / "bulk" / "stems.json").read_text())
    assert stems["outputs"] == ["stems_drums.wav", "stems_bass.wav"] and math.isfinite(
        stems["stems"]["residual_db"]
    )
