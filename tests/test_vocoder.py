"""Vocoder: official key layout, config round trip, and waveform parity on the tiny golden checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from conftest import assert_close, load_tensors
from songflow.errors import ConfigError
from songflow.models.acestep_v1.vocoder import Vocoder, VocoderConfig


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


def _istft_config(head_type: str = "istft", phase_refiner_bins: int = 64) -> VocoderConfig:
    return VocoderConfig(
        dims=(32,), depths=(2,), num_mels=32, head_type=head_type, phase_refiner_bins=phase_refiner_bins
    )


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


def _head_features(head, spec: torch.Tensor) -> torch.Tensor:
    """The inverse of ``head.to_spectrum``: log-magnitudes and per-frame phase deviations of ``spec``."""
    phase = torch.angle(spec)
    zero = head.integrate_phase(torch.zeros_like(phase))  # the bin-centre part alone
    step = torch.diff(phase - zero, dim=-1, prepend=torch.zeros_like(phase[..., :1]))
    deviation = torch.remainder(step + math.pi, 2 * math.pi) - math.pi
    return torch.cat([spec.abs().clamp_min(1e-12).log(), deviation], dim=1)


def test_istft_head_integrated_phases_round_trip_real_audio():
    """Log-magnitudes + phase advances measured on real framing render the signal back: the phase
    integration (bin-centre advance, main-lobe alignment, running sum) is exact, including far into a
    long song where a float32 running sum would have drifted."""
    vocoder = Vocoder(_istft_config())
    head, hop = vocoder.head, 512
    torch.manual_seed(0)
    x = 0.2 * torch.randn(1, hop * 24).clamp(-4, 4)  # inside the clamp of render
    spec = vocoder.mel_transform.stft(x)
    assert_close(head.render(_head_features(head, spec))[:, 0], x, rtol=1e-4, name="features round trip")
    # 20 minutes of frames: the integrated phase of the last frame still matches to float32 precision
    n_bins, n_frames = 8, 103_000
    phase = head.integrate_phase(torch.full((1, n_bins, n_frames), 0.75))[0, :, -1]
    centre_advance = 2 * math.pi * torch.arange(n_bins, dtype=torch.float64) * hop / head.n_fft
    exact = math.pi * torch.arange(n_bins) + (centre_advance + 0.75) * n_frames
    err = torch.remainder(phase.double() - exact + math.pi, 2 * math.pi) - math.pi
    assert err.abs().max() < 1e-3


def test_istft_head_constant_features_give_a_steady_tone_at_any_pitch():
    """A held note gives the same features every frame (a convolutional backbone on a stationary mel).
    With integrated phases a constant advance is a clean sinusoid at an off-bin pitch; absolute phases
    repeated every frame would have left only multiples of sr/hop (86 Hz) standing."""
    vocoder = Vocoder(_istft_config())
    head, hop, rate = vocoder.head, 512, 44100
    n_frames = 64
    t = torch.arange(hop * n_frames) / rate
    tone = 0.5 * torch.sin(2 * math.pi * 440.0 * t)[None]
    features = _head_features(head, vocoder.mel_transform.stft(tone))
    held = features[..., n_frames // 2 : n_frames // 2 + 1].expand(-1, -1, n_frames)  # one frame, held
    out = head.render(held)[0, 0, hop * 8 : -hop * 8]
    spectrum = torch.fft.rfft(out * torch.hann_window(out.numel()))
    freqs = torch.fft.rfftfreq(out.numel(), 1 / rate)
    peak_hz = float(freqs[spectrum.abs().argmax()])
    assert abs(peak_hz - 440.0) < 2.0, peak_hz
    comb = spectrum.abs()[(freqs - 430.6).abs() < 1.0].max()  # 5 x 86.13 Hz, the nearest comb tooth
    assert comb < 0.01 * spectrum.abs().max()
    assert_close(out.std(), tone.std(), rtol=0.05, name="held tone level")


def test_istft_vocoder_shapes_config_and_receptive_field():
    from songflow.models.acestep_v1.codec import vocoder_receptive_radius_mel_frames

    cfg = _istft_config()
    assert VocoderConfig.from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    vocoder = Vocoder(cfg)
    assert not any(k.endswith("weight_g") for k in vocoder.state_dict())
    with torch.no_grad():  # a refiner that does something (it starts as the identity)
        vocoder.head.phase_refiner[-1].weight.normal_()
    n_frames, centre, hop = 40, 20, cfg.hop_length
    x = torch.randn(1, 128, n_frames, requires_grad=True)
    wav = vocoder(x)
    assert wav.shape == (1, 1, hop * n_frames) and wav.abs().max() <= 1.0
    # the frame features are local (the phase integration after them is global): windowed vocoding cuts there
    features = vocoder.head.frame_features(vocoder.backbone(x), x)
    (grad,) = torch.autograd.grad(features[0, :, centre].sum(), x)
    hit = grad.abs().sum(1)[0].nonzero()[:, 0]
    radius = max(centre - int(hit.min()), int(hit.max()) - centre)
    assert radius <= vocoder_receptive_radius_mel_frames(cfg) <= radius + 4


def test_istft_codec_windowed_vocoding_equals_full():
    from songflow.models.acestep_v1.codec import MusicCodec
    from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig

    torch.manual_seed(1)
    voc = Vocoder(_istft_config())
    with torch.no_grad():
        for p in voc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    codec = MusicCodec(DCAE(DCAEConfig.tiny()), voc).eval()
    logmel = torch.randn(1, 2, 128, 90) - 4
    with torch.no_grad():
        full = voc(logmel[0])[:, 0]
    overlap = codec.vocoder_overlap_mel_frames()
    chunked = codec.vocode_chunked(logmel, window_mel_frames=25, overlap_mel_frames=overlap)[0]
    assert full.abs().max() > 1e-3
    assert_close(chunked, full, rtol=1e-5, name="windowed istft vocoding")
    # the phase refiner corrects exactly the deviations of the lowest phase_refiner_bins bins
    head, n_freqs = voc.head, voc.config.n_fft // 2 + 1
    with torch.no_grad():
        hidden = voc.backbone(logmel[0])
        refined = head.frame_features(hidden, logmel[0])
        head.phase_refiner[-1].weight.zero_()
        head.phase_refiner[-1].bias.zero_()
        plain = head.frame_features(hidden, logmel[0])
    changed = (refined != plain).any(-1).any(0).nonzero()[:, 0]
    assert changed.min() == n_freqs and changed.max() == n_freqs + head.refine_bins - 1


def test_istft_head_type_is_checked():
    with pytest.raises(ConfigError, match="head_type"):
        _istft_config(head_type="wavenet")
