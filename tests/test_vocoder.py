"""Vocoder: official key layout, config round trip, and waveform parity on the tiny golden checkpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import assert_close, load_tensors
from songflow.errors import ConfigError
from songflow.models.vocoder import Vocoder, VocoderConfig


@pytest.fixture(scope="module")
def golden_vocoder(golden_models_dir) -> Vocoder:
    folder = golden_models_dir / "music_vocoder"
    model = Vocoder(VocoderConfig.from_json(folder / "config.json")).eval()
    model.load_state_dict(load_tensors(folder / "diffusion_pytorch_model.safetensors"), strict=True)
    return model


@pytest.fixture(scope="module")
def audio_golden(golden_dir):
    return load_tensors(golden_dir / "audio" / "audio.safetensors")


def _decode_per_channel(model: Vocoder, mels: torch.Tensor) -> torch.Tensor:
    """The official decode: one vocoder call per stereo channel, [1, 128, F] -> [1, 512·F], stacked."""
    with torch.no_grad():
        return torch.cat([model(mels[c : c + 1])[:, 0] for c in range(mels.shape[0])])


def test_golden_waveform_parity(golden_vocoder, audio_golden):
    wav = _decode_per_channel(golden_vocoder, audio_golden["dec/vocoder_in_mel"])
    err = assert_close(wav, audio_golden["dec/wav_44k"], rtol=2e-5, name="dec/wav_44k")
    print(f"vocoder wav_44k max abs err {err:.3e}")


def test_fold_weight_norm_same_output_and_keys(golden_vocoder, audio_golden):
    mel = audio_golden["dec/vocoder_in_mel"][:1, :, :40]
    keys_before = list(golden_vocoder.state_dict())
    with torch.no_grad():
        reference = golden_vocoder(mel)
        golden_vocoder.fold_weight_norm()
        try:
            folded = golden_vocoder(mel)
            assert list(golden_vocoder.state_dict()) == keys_before  # still weight_g / weight_v
        finally:
            golden_vocoder.unfold_weight_norm()
    assert torch.equal(folded, reference)


def test_load_state_dict_clears_folded_weights():
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig.tiny()).eval()
    other = Vocoder(VocoderConfig.tiny()).eval()
    with torch.no_grad():
        for p in other.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mel = torch.randn(1, 16, 5)
    model.fold_weight_norm()
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(model(mel), other(mel))


def test_full_size_keys_and_shapes_on_meta(golden_dir):
    expected = json.loads((golden_dir / "keys" / "vocoder_full.json").read_text())
    with torch.device("meta"):
        model = Vocoder(VocoderConfig())
    actual = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(actual) == 713
    assert actual == expected
    assert list(actual) == list(expected)  # same order as the official state_dict


def test_tiny_checkpoint_keys_and_shapes(golden_models_dir):
    folder = golden_models_dir / "music_vocoder"
    stored = load_tensors(folder / "diffusion_pytorch_model.safetensors")
    model = Vocoder(VocoderConfig.from_json(folder / "config.json"))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in stored.items()
    }


def test_config_json_round_trip(golden_models_dir, tmp_path):
    path = golden_models_dir / "music_vocoder" / "config.json"
    official = json.loads(path.read_text())
    config = VocoderConfig.from_json(path)
    written = config.to_dict()
    assert written["_class_name"] == "ADaMoSHiFiGANV1"
    assert {k: v for k, v in written.items() if not k.startswith("_")} == {
        k: v for k, v in official.items() if not k.startswith("_")
    }
    config.to_json(tmp_path / "config.json")
    assert VocoderConfig.from_json(tmp_path / "config.json") == config
    assert VocoderConfig.from_dict(VocoderConfig.tiny().to_dict()) == VocoderConfig.tiny()


def test_default_config_is_the_release():
    c = VocoderConfig()
    assert (c.dims, c.depths, c.num_mels, c.upsample_initial_channel) == (
        (128, 256, 384, 512),
        (3, 3, 9, 3),
        512,
        1024,
    )
    assert (c.sampling_rate, c.n_fft, c.hop_length, c.f_min, c.f_max, c.n_mels) == (
        44100,
        2048,
        512,
        40,
        16000,
        128,
    )


def test_config_rejects_unknown_and_invalid_values():
    with pytest.raises(ConfigError, match="not_a_field"):
        VocoderConfig.from_dict({**VocoderConfig().to_dict(), "not_a_field": 1})
    bad = [
        {"use_template": True},
        {"upsample_rates": (4, 4, 2, 2, 2, 2, 4)},  # product != hop
        {"num_mels": 256},  # head input != dims[-1]
        {"kernel_sizes": (7, 5)},
        {"depths": (3, 3, 9)},
        {"input_channels": 80},
    ]
    for change in bad:
        with pytest.raises(ConfigError):
            dataclasses.replace(VocoderConfig(), **change)
        with pytest.raises(ConfigError):
            VocoderConfig.from_dict({**VocoderConfig().to_dict(), **change})


def test_tiny_shapes_batching_and_mel():
    torch.manual_seed(0)
    config = VocoderConfig.tiny()
    model = Vocoder(config).eval()
    assert sum(p.numel() for p in model.parameters()) < 50_000
    wav = torch.randn(2, config.hop_length * 12) * 0.1
    mel = model.encode_mel(wav)
    assert mel.shape == (2, config.n_mels, 12)
    with torch.no_grad():
        out = model(mel)
        assert out.shape == (2, 1, config.hop_length * 12)
        assert out.abs().max() < 1
        assert torch.allclose(out[1:], model(mel[1:]), atol=1e-6)
    with pytest.raises(ValueError):
        model(torch.randn(1, config.n_mels + 1, 4))


def test_meta_construction_tiny():
    with torch.device("meta"):
        model = Vocoder(VocoderConfig.tiny())
    assert all(t.is_meta for t in model.state_dict().values())


# ---------------------------------------------------------------------------------------------------
# songflow's istft head (head_type="istft")


def _istft_config(head_type: str = "istft") -> VocoderConfig:
    return VocoderConfig(dims=(32,), depths=(2,), num_mels=32, head_type=head_type)


def test_istft_head_inverts_the_front_end_framing():
    """The STFT taken with the mel front end's framing (reflect pad (n_fft-hop)/2, uncentred) goes back
    to the same samples: the synthesis frames line up with the mel frames."""
    vocoder = Vocoder(_istft_config())
    head, hop = vocoder.head, 512
    x = torch.randn(2, hop * 24)
    spec = vocoder.mel_transform.stft(x)
    assert spec.shape[-1] == 24 == vocoder.encode_mel(x.float()).shape[-1]  # one frame per mel frame
    err = assert_close(head.synthesize(spec)[:, 0], x, rtol=1e-6, name="istft round trip")
    print(f"istft head round trip: max abs err {err:.1e}")


def test_istft_vocoder_shapes_config_and_receptive_field():
    from songflow.models.codec import vocoder_receptive_radius_mel_frames

    cfg = _istft_config()
    assert VocoderConfig.from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    vocoder = Vocoder(cfg)
    assert not any(k.endswith("weight_g") for k in vocoder.state_dict())
    n_frames, centre, hop = 40, 20, cfg.hop_length
    x = torch.randn(1, 128, n_frames, requires_grad=True)
    wav = vocoder(x)
    assert wav.shape == (1, 1, hop * n_frames) and wav.abs().max() <= 1.0
    radius = 0.0
    for sample in (centre * hop, centre * hop + hop // 2, centre * hop + hop - 1):
        (grad,) = torch.autograd.grad(wav[0, 0, sample], x, retain_graph=True)
        hit = grad.abs().sum(1)[0].nonzero()[:, 0]
        radius = max(radius, sample / hop - int(hit.min()), int(hit.max()) - sample / hop)
    assert radius <= vocoder_receptive_radius_mel_frames(cfg) <= radius + 4
    with pytest.raises(ConfigError, match="head_type"):
        _istft_config(head_type="wavenet")
