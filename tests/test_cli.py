"""The CLI and the pipeline end to end on a random tiny checkpoint: outputs, reproducibility, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import regenerate
from songflow.interfaces.cli import main
from songflow.requests import GenerationParams, Text2Music

LYRICS = "[verse]\nneon lights on the river\n\n[chorus]\nla la la"


def _gen(ckpt: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--tags",
            "funk, pop, 105 BPM",
            "--lyrics",
            LYRICS,
            "--duration",
            "2",
            "--steps",
            "4",
            "--seed",
            "7",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def test_generate_writes_audio_and_sidecar_and_from_reproduces_bit_for_bit(tiny_ckpt, tmp_path):
    import soundfile as sf

    out = tmp_path / "song.wav"
    assert _gen(tiny_ckpt, out) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["request"]["params"]["seeds"] == [7]
    assert side["request"]["tags"] == "funk, pop, 105 BPM" and side["request"]["lyrics"] == LYRICS
    assert set(side["timings_s"]) == {"preprocess", "diffusion", "decode"}
    audio, sr = sf.read(out, dtype="float32")
    assert sr == 48000 and audio.shape[1] == 2 and audio.shape[0] > 0
    again = tmp_path / "again.wav"
    assert regenerate(tiny_ckpt, out, again) == 0
    again_audio, _ = sf.read(again, dtype="float32")
    # the samples, bit for bit (the WAV PEAK chunk holds a time stamp, so the bytes differ)
    assert again_audio.tobytes() == audio.tobytes()
    assert not list(tmp_path.glob(".*.part*")), "temporary files left behind"


def test_batch_writes_one_file_per_item(tiny_ckpt, tmp_path):
    out = tmp_path / "b.flac"
    assert _gen(tiny_ckpt, out, "--batch-size", "2", "--seeds", "3,4") == 0
    assert (tmp_path / "b_0.flac").exists() and (tmp_path / "b_1.flac").exists()
    assert json.loads((tmp_path / "b.json").read_text())["outputs"] == ["b_0.flac", "b_1.flac"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "0"], "duration_s must be a positive"),
        (["--duration", "-3"], "duration_s must be a positive"),
        (["--duration", "100000"], "duration_s must be a positive number of seconds up to 240"),
        (["--duration", "nan"], "duration_s must be a positive"),
        (["--steps", "0"], "steps must be an integer"),
        (["--tags", "   "], "tags must be a non-empty"),
        (["--guidance-interval", "2"], "guidance_interval must be in"),
        (["--out", "x.xyz"], "unsupported output format"),
        (["--lyrics", "@/nonexistent/lyrics.txt"], "cannot read lyrics file"),
    ],
)
def test_bad_input_gives_one_clear_error(tiny_ckpt, tmp_path, capsys, args, message):
    out = tmp_path / "song.wav"
    argv = [
        "generate",
        "--checkpoint",
        str(tiny_ckpt),
        "--tags",
        "pop",
        "--duration",
        "2",
        "--steps",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    code = main(argv + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir()), "nothing may be written on error"


@pytest.mark.parametrize("flag", [["--sampler", "dpm"], ["--guidance", "pag"]])
def test_unknown_choice_is_rejected_by_name(tiny_ckpt, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--checkpoint", str(tiny_ckpt), "--tags", "pop", *flag])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_huge_lyrics_and_missing_checkpoint(tiny_ckpt, tmp_path, capsys):
    code = main(
        [
            "generate",
            "--checkpoint",
            str(tiny_ckpt),
            "--tags",
            "pop",
            "--lyrics",
            "la " * 34000,
            "--duration",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "a.wav"),
            "--quiet",
        ]
    )
    assert code == 2 and "lyrics" in capsys.readouterr().err.lower()
    code = main(
        [
            "generate",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--tags",
            "pop",
            "--out",
            str(tmp_path / "b.wav"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and "songflow download" in err
    assert not (tmp_path / "a.wav").exists() and not (tmp_path / "b.wav").exists()


def _request(**params) -> Text2Music:
    base = GenerationParams(steps=4, guidance_interval=1.0, **params)
    return Text2Music(tags="funk, pop", lyrics=LYRICS, duration_s=2.0, params=base)


@pytest.mark.parametrize("sampler", ["euler", "heun", "pingpong"])
def test_batch_equals_singles_and_seed_is_deterministic(pipe, sampler):
    batch = pipe.generate(_request(sampler=sampler, seeds=(5, 6, 9), batch_size=3))
    for i, seed in enumerate((5, 6, 9)):
        single = pipe.generate(_request(sampler=sampler, seeds=(seed,)))
        torch.testing.assert_close(batch.latents[i : i + 1], single.latents, rtol=1e-5, atol=1e-5)
    again = pipe.generate(_request(sampler=sampler, seeds=(5, 6, 9), batch_size=3))
    assert torch.equal(again.audio, batch.audio)


def test_unbatched_guidance_passes_equal_batched(pipe):
    request = _request(seeds=(3,), guidance_scale_text=5.0, guidance_scale_lyric=1.5)
    batched = pipe.generate(request)
    pipe.batch_passes = False
    try:
        separate = pipe.generate(request)
    finally:
        pipe.batch_passes = True
    torch.testing.assert_close(batched.latents, separate.latents, rtol=1e-5, atol=1e-5)


def test_offload_on_equals_off(pipe):
    request = _request(seeds=(11,))
    plain = pipe.generate(request)
    pipe.placement.offload = True
    try:
        offloaded = pipe.generate(request)
    finally:
        pipe.placement.offload = False
    assert torch.equal(plain.audio, offloaded.audio)


def test_result_request_regenerates_the_result(pipe):
    first = pipe.generate(_request())  # random seed, resolved into the result
    assert len(first.seeds) == 1
    second = pipe.generate(first.request)
    assert torch.equal(first.audio, second.audio)
    assert replace(first.request) == second.request


def test_typed_line_breaks_and_lyrics_files(tmp_path):
    from songflow.interfaces.cli.generate import _read_lyrics

    assert _read_lyrics("[verse]\\nla la") == "[verse]\nla la"
    (tmp_path / "l.txt").write_text("[chorus]\nhey\\n", encoding="utf-8")
    assert _read_lyrics(f"@{tmp_path / 'l.txt'}") == "[chorus]\nhey\\n"  # file text is taken as written


def test_random_checkpoint_is_audible_and_runs_in_half_precision(tiny_ckpt, pipe):
    from songflow.families import load_pipeline

    full = pipe.generate(_request(seeds=(1,)))
    assert full.audio.pow(2).mean().sqrt() > 1e-3, "the demo checkpoint must not produce silence"
    half = load_pipeline(tiny_ckpt, device="cpu", dtype="bfloat16").generate(_request(seeds=(1,)))
    assert half.audio.shape == full.audio.shape and torch.isfinite(half.audio).all()
    assert half.latents.dtype == torch.float32


@pytest.mark.parametrize("config", ["tiny", "checkpoint"])
def test_bench_prints_figures_for_random_weights_and_for_a_checkpoint(tiny_ckpt, capsys, config):
    """`songflow bench` times the same pipeline for random weights and for real checkpoint folders."""
    from songflow.interfaces.bench.speed import run_bench
    from songflow.interfaces.cli.commands import build_parser

    name = "tiny" if config == "tiny" else str(tiny_ckpt)
    args = build_parser().parse_args(
        ["bench", "--config", name, "--duration", "2", "--steps", "3", "--repeats", "1", "--device", "cpu"]
    )
    figures = run_bench(args)
    assert all(v > 0 and v == v for v in figures.values()), figures
    assert figures["end_to_end_s"] >= figures["diffusion_s"] + figures["decode_s"]
    assert f"config={name}" in capsys.readouterr().out
    if config == "checkpoint":  # a missing folder is one clear error, not a traceback
        assert main(["bench", "--config", str(tiny_ckpt / "nope"), "--device", "cpu"]) != 0
        assert "nope" in capsys.readouterr().err


def _stored_numel(module: torch.nn.Module) -> int:
    """Elements of the tensors a module saves (tied weights once): what its safetensors file holds."""
    return sum({t.data_ptr(): t.numel() for t in module.state_dict().values()}.values())


def test_info_names_the_family_components_and_parameter_counts(capsys):
    from songflow.checkpoint.hub import default_model_dir
    from songflow.families import describe_folder, load_pipeline

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert main(["info", str(default_model_dir())]) == 0
    assert capsys.readouterr().out == out
    report = describe_folder(default_model_dir())
    assert report.family == "acestep-v1" and out.startswith("family: acestep-v1 (ACE-Step v1)")
    assert f"root:   {report.root}" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) == {c.name for c in report.components}
    for c in report.components:
        assert f"{c.n_params:,} params" in lines[c.name] and c.folder in lines[c.name]
    assert out.rstrip().endswith(f"total:  {report.n_params:,} params")
    pipe = load_pipeline(None, device="cpu")
    loaded = {
        "transformer": pipe.transformer,
        "dcae": pipe.codec.dcae,
        "vocoder": pipe.codec.vocoder,
        "text_encoder": pipe.text_encoder._model,
    }
    assert {c.name: c.n_params for c in report.components} == {k: _stored_numel(m) for k, m in loaded.items()}


def test_info_on_a_partial_or_missing_folder_is_one_clear_error(tiny_ckpt, tmp_path, capsys):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(tiny_ckpt / "ace_step_transformer", partial / "ace_step_transformer")
    assert main(["info", str(partial)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and "Traceback" not in captured.err
    assert "music_dcae_f8c8" in captured.err and "umt5-base" in captured.err
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
