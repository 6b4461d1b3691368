"""The shipped default model ``songflow-tiny``: it is inside the package, ``songflow generate`` uses it with
no --checkpoint, and what it generates passes minimal adherence thresholds (the full figures on held-out
prompts are in its MODEL_CARD.md; this guards against a broken or silently swapped model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from songflow.checkpoint.hub import DEFAULT_MODEL_NAME, default_model_dir, resolve_checkpoint


@pytest.fixture(scope="module")
def tiny_pipe():
    from songflow.families import load_pipeline

    return load_pipeline(resolve_checkpoint(None), device="cpu")


def test_the_default_model_ships_with_its_card():
    root = default_model_dir()
    assert resolve_checkpoint(None) == root == resolve_checkpoint(DEFAULT_MODEL_NAME)
    card = (root / "MODEL_CARD.md").read_text(encoding="utf-8")
    for section in ("## Recipe", "## Adherence", "## Codec", "## Speed", "## Limitations"):
        assert section in card, f"model card lacks {section}"
    assert not any(p.is_symlink() for p in root.rglob("*"))
    total_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    assert total_mb < 60, f"songflow-tiny weighs {total_mb:.0f} MB; keep the package small"


def test_generate_without_checkpoint_uses_songflow_tiny(tmp_path):
    from songflow.audio.io import load_audio
    from songflow.interfaces.cli import main

    out = tmp_path / "song.wav"
    argv = ["generate", "--tags", "pop, 120 bpm, piano, drums, C major", "--lyrics", "[inst]"]
    assert main([*argv, "--duration", "6", "--steps", "20", "--seed", "3", "--out", str(out)]) == 0
    wav, rate = load_audio(out)
    assert wav.shape[0] == 2 and abs(wav.shape[1] / rate - 6.0) < 0.1
    rms = float(wav.square().mean().sqrt())
    assert torch.isfinite(wav).all() and rms > 0.01, f"near-silent output (rms {rms:.4f})"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["runtime"]["checkpoint"] == str(default_model_dir())


def test_songflow_tiny_passes_minimal_adherence(tiny_pipe):
    """Floors far below the model card's targets, high enough to catch a broken or swapped model: an
    instrumental piano/bass prompt gives an unclipped clip at a sane loudness, with pitched instruments or
    bass heard, no words heard (with the Whisper extra), and a tempo within 25 % (octave-tolerant)."""
    from songflow.eval import checkers as ck
    from songflow.requests import GenerationParams, Text2Music

    request = Text2Music(
        tags="jazz, piano, upright bass, drums, 100 bpm, C major, calm, instrumental",
        lyrics="[inst]",
        duration_s=10.0,
        params=GenerationParams(seeds=(11,)),
    )
    result = tiny_pipe.generate(request)
    audio, rate = result.audio[0].numpy(), result.sample_rate_hz
    assert np.isfinite(audio).all()
    assert ck.check_clipping(audio, rate).passed
    lufs = ck.check_loudness(audio, rate).measured
    assert -35.0 < lufs < -6.0, f"loudness {lufs} LUFS"
    heard = ck.check_instruments(audio, rate, ["piano", "upright bass"]).details["families"]
    assert heard["pitched"] or heard["bass"], heard
    if ck.whisper_available():  # the pyin fallback is near chance level on full mixes
        assert ck.check_vocals(audio, rate, False).passed
    tempo = ck.check_tempo(audio, rate, 100.0, tol=0.25)
    assert tempo.passed, f"tempo {tempo.measured} for 100 BPM"


def _major_cadence(tonic_midi: int, rate: int) -> np.ndarray:
    """Stereo I-IV-V-I of plucked harmonic tones (root in the bass), 2.5 s per chord."""
    t = np.arange(int(2.5 * rate)) / rate
    envelope = np.minimum(1.0, t * 50) * np.exp(-t * 0.8)
    chords = []
    for degree in ((0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7)):
        x = np.zeros_like(t)
        for interval in (*degree, degree[0] - 12):
            f0 = 440.0 * 2 ** ((tonic_midi + interval - 69) / 12)
            x += sum(np.sin(2 * np.pi * f0 * h * t) / h**1.5 for h in range(1, 6))
        chords.append(x * envelope)
    y = np.concatenate(chords)
    return np.stack([y, y]).astype(np.float32) * (0.25 / np.abs(y).max())


def test_songflow_tiny_codec_keeps_the_key(tiny_pipe):
    """A codec round trip (DC-AE + vocoder) of cadences in six major keys keeps the key: the vocoder's
    integrated phases place partials at their pitch. Before them, a frame-rate buzz (86 Hz, F2, and its
    harmonics) made the key estimator hear F in every round trip."""
    from songflow.eval import checkers as ck

    rate, codec = 44100, tiny_pipe.codec
    results = []
    for tonic, midi in (("C", 60), ("D", 62), ("E", 64), ("F#", 66), ("A", 57), ("Bb", 58)):
        x = _major_cadence(midi, rate)
        assert ck.check_key(x, rate, f"{tonic} major").passed  # the estimator hears the input right
        with torch.no_grad():
            y = codec.decode(codec.encode(torch.from_numpy(x)[None], rate))[0].numpy()
        results.append(ck.check_key(y, rate, f"{tonic} major"))
    assert sum(r.passed for r in results) >= 5, [r.measured for r in results]


def test_the_shipped_demo_lora_loads_changes_the_output_and_weight_zero_restores_it(tiny_pipe):
    """``--lora waltz-demo:0.8`` works without training: the adapter ships (weights + adapter_config.json)
    beside the default model, resolves by its short name, loads onto the DiT, and moves a 2-step
    generation; at weight 0 the output is the base model's again."""
    from songflow.checkpoint.hub import resolve_lora, shipped_loras
    from songflow.checkpoint.lora import WEIGHT_NAME, LoraSpec, resolve_lora_files, set_loras
    from songflow.requests import GenerationParams, Text2Music

    folder = shipped_loras()["waltz-demo"]
    assert folder == default_model_dir() / "loras" / "waltz-demo" == resolve_lora("waltz-demo")
    weights, config = resolve_lora_files(folder)
    assert weights.name == WEIGHT_NAME and config is not None  # as the trainer writes it
    assert resolve_lora("no-such-adapter") == resolve_lora("no-such-adapter").expanduser()
    request = Text2Music(
        tags="piano, strings, gentle, instrumental",
        lyrics="[inst]",
        duration_s=4.0,
        params=GenerationParams(steps=2, seeds=(100,)),
    )
    base = tiny_pipe.generate(request).latents
    try:
        set_loras(tiny_pipe.transformer, [LoraSpec(resolve_lora("waltz-demo"), 0.8)])
        adapted = tiny_pipe.generate(request).latents
        set_loras(tiny_pipe.transformer, [LoraSpec(folder, 0.0)])
        off = tiny_pipe.generate(request).latents
    finally:
        set_loras(tiny_pipe.transformer, [])
    assert (adapted - base).abs().mean() > 1e-3 * base.abs().mean()
    torch.testing.assert_close(off, base)
