"""Codec training: losses, discriminators, vocoder/DC-AE loops, export, resume, Griffin-Lim baseline."""

from __future__ import annotations

import argparse
import csv
import math

import pytest
import torch

from songflow.audio.mel import LogMelSpectrogram
from songflow.errors import ConfigError
from songflow.training.codec_losses import (
    MultiResolutionSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_l1,
    phase_advance_loss,
)
from songflow.training.codec_trainer import (
    DCAETrainConfig,
    DCAETrainer,
    VocoderTrainConfig,
    VocoderTrainer,
    compare_to_griffin_lim,
    load_train_config,
    train_dcae,
    train_vocoder,
)
from songflow.training.discriminators import MelPatchDiscriminator, VocoderDiscriminator
from songflow.training.griffin_lim import griffin_lim_from_logmel

SMALL_STFT = ((256, 64, 256), (512, 128, 512))


def _vocoder_cfg(tmp_path, **kw):
    base = dict(
        out_dir=str(tmp_path / "voc"),
        batch_size=2,
        crop_frames=8,
        mpd_periods=(2, 3),
        mpd_channels=(4, 8),
        mrd_channels=4,
        stft_resolutions=SMALL_STFT,
        gan_start_step=0,
        lr=5e-4,
        log_every=1,
    )
    base.update(kw)
    return VocoderTrainConfig.from_dict(base)


def _dcae_cfg(tmp_path, **kw):
    base = dict(
        out_dir=str(tmp_path / "dcae"),
        batch_size=1,
        crop_latent_frames=2,
        disc_channels=8,
        disc_layers=2,
        lr=1e-3,
        log_every=1,
    )
    base.update(kw)
    return DCAETrainConfig.from_dict(base)


def test_mrstft_zero_for_identical_and_grows_with_noise():
    torch.manual_seed(0)
    loss = MultiResolutionSTFTLoss(SMALL_STFT)
    x = torch.randn(2, 4096) * 0.3
    sc, mag = loss(x, x.clone())
    assert float(sc) == 0.0 and float(mag) == 0.0
    totals = [sum(loss(x + s * torch.randn_like(x), x)) for s in (0.01, 0.1, 1.0)]
    assert 0 < totals[0] < totals[1] < totals[2]


def test_phase_advance_loss_measures_frequency_not_absolute_phase():
    """0 for the same spectrum and for one rotated by any constant (absolute phase is arbitrary); a
    known wrong advance per frame is measured in radians, across the ±π wrap; silent bins do not count."""
    torch.manual_seed(0)
    magnitude = torch.rand(2, 9, 30) + 0.1
    phase = torch.rand(2, 9, 30) * 2 * math.pi
    target = torch.polar(magnitude, phase)
    assert float(phase_advance_loss(target, target)) == 0.0
    assert float(phase_advance_loss(torch.polar(magnitude, phase + 2.5), target)) < 1e-5
    frames = torch.arange(30.0)
    for offset in (0.3, math.pi - 0.1, 2 * math.pi + 0.2):  # the last is 0.2 after wrapping
        drifting = torch.polar(magnitude, phase + offset * frames)
        expected = abs(math.remainder(offset, 2 * math.pi))
        assert abs(float(phase_advance_loss(drifting, target)) - expected) < 1e-4
    silent_magnitude = magnitude.clone()
    silent_magnitude[:, 4] = 0.0  # bin 4 silent in the target: its (garbage) prediction is ignored
    noisy_phase = phase.clone()
    noisy_phase[:, 4] = torch.rand(2, 30) * 2 * math.pi
    loss = phase_advance_loss(torch.polar(magnitude, noisy_phase), torch.polar(silent_magnitude, phase))
    assert float(loss) < 1e-5


def test_adversarial_and_feature_losses():
    real = [(torch.ones(2, 1, 5), [torch.zeros(2, 3)])]
    fake = [(torch.zeros(2, 1, 5), [torch.zeros(2, 3)])]
    assert float(discriminator_loss(real, fake, "lsgan")) == 0.0
    assert float(generator_adversarial_loss(real, "lsgan")) == 0.0
    assert float(discriminator_loss(real, [(-torch.ones(2, 1, 5), [])], "hinge")) == 0.0
    assert float(feature_matching_loss(real, fake)) == 0.0
    assert float(mel_l1(torch.ones(3, 4), torch.zeros(3, 4))) == 1.0
    with pytest.raises(ValueError):
        discriminator_loss(real, fake, "wgan")


@pytest.mark.parametrize("length", [1, 37, 1000, 4099])
def test_vocoder_discriminator_shapes(length):
    disc = VocoderDiscriminator((2, 3, 5), (4, 8), SMALL_STFT, 4)
    out = disc(torch.randn(3, 1, length))
    assert len(out) == 5
    for logits, feats in out:
        assert logits.shape[0] == 3 and logits.shape[1] == 1 and logits.numel() > 0
        assert all(f.shape[0] == 3 for f in feats) and feats
    for (logits, _), p in zip(out[:3], (2, 3, 5), strict=True):
        assert logits.shape[-1] == p


@pytest.mark.parametrize("frames", [1, 8, 13, 64])
def test_mel_patch_discriminator_shapes(frames):
    [(logits, feats)] = MelPatchDiscriminator(2, 8, 3)(torch.randn(2, 2, 128, frames))
    assert logits.shape == (2, 1, 16, math.ceil(frames / 8))
    assert len(feats) == 3


def test_vocoder_steps_reduce_mel_l1(tmp_path):
    torch.manual_seed(0)
    trainer = VocoderTrainer(_vocoder_cfg(tmp_path, gan_start_step=10_000, lr=1e-3))
    wav = trainer.sample_batch(0)  # fixed batch: sines + noise
    losses = []
    for _ in range(8):
        losses.append(trainer.train_step(wav)["mel_l1"])
        trainer.step += 1
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("term", ["consistency", "log_magnitude", "phase_advance"])
def test_istft_vocoder_spectral_terms_are_measured_and_reduced(tmp_path, term):
    """The istft head's spectral terms (consistency, log-magnitude and phase advance against the real
    STFT) start high for an untrained head and training on each alone lowers it."""
    torch.manual_seed(0)
    overrides = {"dims": (16,), "depths": (1,), "num_mels": 16, "head_type": "istft"}
    cfg = _vocoder_cfg(
        tmp_path, gan_start_step=10_000, lr=3e-3, model_overrides=overrides, **{f"lambda_{term}": 50.0}
    )
    trainer = VocoderTrainer(cfg)
    wav = trainer.sample_batch(0)
    terms = []
    for _ in range(12):
        out = trainer.train_step(wav)
        assert ({"consistency", "log_magnitude", "phase_advance"} - {term}).isdisjoint(out)  # only weighted
        terms.append(out[term])
        trainer.step += 1
    assert all(math.isfinite(v) for v in terms) and terms[0] > 0.3
    assert min(terms[-3:]) < 0.95 * terms[0], terms  # slow: phases are learned frame by frame


def test_vocoder_gan_step_runs_and_updates_discriminator(tmp_path):
    trainer = VocoderTrainer(_vocoder_cfg(tmp_path))
    before = [p.detach().clone() for p in trainer.disc.parameters()]
    out = trainer.train_step(trainer.sample_batch(0))
    assert {"loss_disc", "loss_adv", "loss_fm", "mel_l1"} <= set(out)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.disc.parameters(), strict=True))


def test_dcae_phase1_reduces_reconstruction(tmp_path):
    torch.manual_seed(0)
    trainer = DCAETrainer(_dcae_cfg(tmp_path))
    wav = trainer.sample_batch(0)
    losses = []
    for _ in range(6):
        losses.append(trainer.train_step(wav)["recon_mse"])
        trainer.step += 1
    assert min(losses[-2:]) < 0.7 * losses[0], losses


def test_dcae_phase2_freezes_encoder(tmp_path):
    trainer = DCAETrainer(_dcae_cfg(tmp_path, phase2_start_step=0))
    enc = {k: v.clone() for k, v in trainer.dcae.encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in trainer.dcae.decoder.state_dict().items()}
    wav = trainer.sample_batch(0)
    for _ in range(2):
        out = trainer.train_step(wav)
        trainer.step += 1
    assert out["phase"] == 2.0 and "loss_adv" in out
    assert all(torch.equal(enc[k], v) for k, v in trainer.dcae.encoder.state_dict().items())
    assert any(not torch.equal(dec[k], v) for k, v in trainer.dcae.decoder.state_dict().items())


def test_saved_components_load_as_codec_and_decode(tmp_path):
    from songflow.checkpoint.acestep_v1 import load_codec

    voc = train_vocoder(_vocoder_cfg(tmp_path, steps=1))
    dcae = train_dcae(_dcae_cfg(tmp_path, steps=1, phase2_start_step=1))
    assert voc.name == "music_vocoder" and dcae.name == "music_dcae_f8c8"
    codec = load_codec(dcae, voc)
    wav = torch.randn(1, 2, 4096 * 2) * 0.1
    latents = codec.encode(wav, 44100)
    assert latents.shape == (1, 8, 16, 2)
    out = codec.decode(latents)
    assert out.shape == (1, 2, 8192) and torch.isfinite(out).all()
    rows = list(csv.DictReader((tmp_path / "dcae" / "log.csv").open()))
    assert [r["step"] for r in rows] == ["1"]


def test_resume_continues_step_and_optimizer(tmp_path):
    cfg = _vocoder_cfg(tmp_path, steps=2, gan_start_step=1)
    train_vocoder(cfg)
    state = torch.load(tmp_path / "voc" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2
    g_steps = [s["step"] for s in state["optimizers"]["vocoder"]["state"].values()]
    assert all(float(s) == 2 for s in g_steps)
    resumed = VocoderTrainer(_vocoder_cfg(tmp_path, steps=3, gan_start_step=1))
    assert resumed.load_state() and resumed.step == 2
    assert all(float(s["step"]) == 2 for s in resumed.opt_g.state_dict()["state"].values())
    train_vocoder(_vocoder_cfg(tmp_path, steps=3, gan_start_step=1))
    state = torch.load(tmp_path / "voc" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3
    assert all(float(s["step"]) == 3 for s in state["optimizers"]["vocoder"]["state"].values())
    assert all(float(s["step"]) == 2 for s in state["optimizers"]["discriminator"]["state"].values())
    rows = list(csv.DictReader((tmp_path / "voc" / "log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["loss_disc"] == "nan" and rows[2]["loss_disc"] != "nan"  # GAN columns exist from the start


def test_griffin_lim_recovers_sine_pitch():
    mel = LogMelSpectrogram()
    sr = 44100
    t = torch.arange(sr // 2) / sr
    x = 0.5 * torch.sin(2 * math.pi * 440.0 * t)[None]
    y = griffin_lim_from_logmel(mel(x), mel, n_iter=16)
    assert y.shape == (1, (sr // 2) // 512 * 512)
    peak_hz = torch.fft.rfft(y[0]).abs().argmax().item() * sr / y.shape[-1]
    assert abs(peak_hz - 440.0) < 20.0


def test_compare_to_griffin_lim_reports_both(tmp_path):
    from songflow.checkpoint.acestep_v1 import load_codec

    voc = train_vocoder(_vocoder_cfg(tmp_path, steps=0))
    dcae = train_dcae(_dcae_cfg(tmp_path, steps=0))
    wav = torch.sin(2 * math.pi * 330 * torch.arange(8192) / 44100).expand(1, 2, -1) * 0.3
    result = compare_to_griffin_lim(load_codec(dcae, voc), wav, n_iter=4)
    for name in ("codec", "griffin_lim"):
        assert set(result[name]) == {"mrstft", "mel_l1"}
        assert all(math.isfinite(v) for v in result[name].values())


def test_config_rejects_unknown_keys_and_applies_overrides(tmp_path):
    with pytest.raises(ConfigError, match="nonsense"):
        VocoderTrainConfig.from_dict({"nonsense": 1})
    path = tmp_path / "c.json"
    path.write_text('{"steps": 5, "model_overrides": {"dims": [8, 8, 8, 8]}}')
    cfg = load_train_config("dcae", path, {"steps": 7, "model_overrides.latent_channels": 4})
    assert cfg.steps == 7 and dict(cfg.model_overrides) == {"dims": [8, 8, 8, 8], "latent_channels": 4}


def test_cli_parser(tmp_path):
    from songflow.interfaces.cli.codec_train import add_codec_train_parser, parse_set

    parser = argparse.ArgumentParser()
    add_codec_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-codec", "vocoder", "cfg.yaml", "--set", "steps=3", "--set", "data=/x"])
    assert args.component == "vocoder" and args.config == "cfg.yaml"
    assert parse_set(args.overrides) == {"steps": 3, "data": "/x"}
    assert callable(args.func)


def test_folder_and_hf_dataset_data_sources(tmp_path):
    import datasets

    from songflow.audio.io import save_audio

    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        save_audio(audio / f"{i}.wav", torch.randn(1, 4000) * 0.1, 22050)
    cfg = _vocoder_cfg(tmp_path, data=str(audio), steps=1)
    trainer = VocoderTrainer(cfg)
    assert len(trainer.data.files) == 2 and trainer.sample_batch(0).shape == (2, 8 * 512)
    ds_dir = tmp_path / "ds"
    datasets.Dataset.from_dict({"keys": ["a"], "filename": [str(audio / "0.wav")]}).save_to_disk(str(ds_dir))
    trainer = DCAETrainer(_dcae_cfg(tmp_path, data=str(ds_dir)))
    assert trainer.data.files == [audio / "0.wav"]
    assert trainer.sample_batch(0).shape == (1, 2, 2 * 8 * 512)


def _state_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("kind", ["vocoder", "dcae"])
def test_resumed_codec_run_continues_exactly_like_an_uninterrupted_one(tmp_path, kind):
    """Stopped after 2 steps and resumed to 4 (GAN / phase 2 starting in the resumed part, lr decaying):
    the same logged losses, the same models and optimiser states as 4 steps in one go."""
    if kind == "vocoder":
        make, run = _vocoder_cfg, train_vocoder
        extra = {"gan_start_step": 3}
    else:
        make, run = _dcae_cfg, train_dcae
        extra = {"phase2_start_step": 3}
    common = {"lr_decay_per_step": 0.9, "ckpt_every": 2, **extra}
    run(make(tmp_path / "a", steps=4, **common))
    run(make(tmp_path / "b", steps=2, **common))
    run(make(tmp_path / "b", steps=4, **common))
    folder = "voc" if kind == "vocoder" else "dcae"
    logs = []
    for name in ("a", "b"):
        with (tmp_path / name / folder / "log.csv").open() as f:
            logs.append([{k: v for k, v in r.items() if k != "sec_per_step"} for r in csv.DictReader(f)])
    assert [r["step"] for r in logs[0]] == ["1", "2", "3", "4"] and logs[0] == logs[1]
    states = [torch.load(tmp_path / n / folder / "trainer_state.pt", weights_only=True) for n in "ab"]
    assert states[0]["step"] == 4 and _state_equal(states[0], states[1])


def test_codec_set_overrides_work_like_the_dit_configs(tmp_path):
    """``--set`` strings go through the DiT config's code: YAML-parsed, coerced to the field type (``1e-3``
    is a float, lists become tuples), dotted keys into mappings, unknown keys rejected by dotted name."""
    from songflow.training.config import TrainConfig, apply_overrides

    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\nmodel_overrides:\n  dims: [8, 8]\n")
    sets = ["steps=7", "lr=1e-3", "betas=[0.5, 0.6]", "model_overrides.depths=[1, 1]", 'data="/x y"']
    cfg = load_train_config("vocoder", path, sets)
    assert cfg == VocoderTrainConfig.from_file(path, sets)
    assert cfg.steps == 7 and cfg.lr == 1e-3 and isinstance(cfg.lr, float) and cfg.betas == (0.5, 0.6)
    assert dict(cfg.model_overrides) == {"dims": [8, 8], "depths": [1, 1]} and cfg.data == "/x y"
    assert apply_overrides(cfg, ["lr_disc=2e-3"]).lr_disc == 2e-3  # same function as for TrainConfig
    assert apply_overrides(TrainConfig(), ["optim.lr=1e-3"]).optim.lr == 1e-3
    for bad, name in (("stepz=1", "stepz"), ("steps.x=1", "steps"), ("steps=abc", "steps")):
        with pytest.raises(ConfigError, match=name):
            load_train_config("dcae", None, [bad])
    assert load_train_config("dcae", None, {"steps": 2}).steps == 2  # already-parsed values too


def test_codec_yaml_configs_load():
    for kind, name in (("vocoder", "songflow_tiny_vocoder"), ("dcae", "songflow_tiny_dcae")):
        cfg = load_train_config(kind, f"configs/codec/{name}.yaml", ['data="/corpus"'])
        assert cfg.data == "/corpus" and cfg.steps > 0 and cfg.loop_settings().save_every == cfg.ckpt_every
