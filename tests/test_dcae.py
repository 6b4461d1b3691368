"""DC-AE (``songflow.models.acestep_v1.dcae``): config round trip, official key layout, golden parity,
diffusers parity.

Run: ``python -m pytest tests/test_dcae.py -q``. The golden tests use the tiny random-weight checkpoint
``models/music_dcae_f8c8`` (released structure at 1/16 width) and the tensors the official ``MusicDCAE``
recorded in ``audio/audio.safetensors``; diffusers (test-only) builds an independent ``AutoencoderDC``.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_close, load_tensors
from songflow.errors import ConfigError
from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig

MEL_MIN, MEL_MAX = -11.0, 3.0  # official wrapper constants (only to undo the golden normalisation here)


def _load_dcae(models_dir) -> DCAE:
    folder = models_dir / "music_dcae_f8c8"
    model = DCAE(DCAEConfig.from_json(folder / "config.json"))
    state = {k: v.float() for k, v in load_file(str(folder / "diffusion_pytorch_model.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def golden_dcae(golden_models_dir) -> DCAE:
    return _load_dcae(golden_models_dir)


@pytest.fixture(scope="module")
def audio_tensors(golden_dir):
    return load_tensors(golden_dir / "audio" / "audio.safetensors")


# ----------------------------------------------------------------------------------------------------------
# config


def test_default_config_is_the_release():
    c = DCAEConfig()
    assert (c.in_channels, c.latent_channels, c.attention_head_dim) == (2, 8, 32)
    assert c.encoder_block_out_channels == c.decoder_block_out_channels == (128, 256, 512, 1024)
    assert c.encoder_layers_per_block == (2, 2, 3, 3) and c.decoder_layers_per_block == (3, 3, 3, 3)
    assert c.encoder_qkv_multiscales == c.decoder_qkv_multiscales == ((), (), (5,), (5,))
    assert (c.downsample_block_type, c.upsample_block_type) == ("Conv", "interpolate")
    assert c.spatial_downsample == 8
    assert c.to_dict()["_class_name"] == "AutoencoderDC"


def test_config_reads_official_json_and_round_trips(golden_models_dir, tmp_path):
    path = golden_models_dir / "music_dcae_f8c8" / "config.json"
    official = json.loads(path.read_text())
    config = DCAEConfig.from_json(path)
    assert config == DCAEConfig.tiny()
    # every official key is a field, and nothing else
    assert set(config.to_dict()) == {k for k in official if k != "_diffusers_version"}
    config.to_json(tmp_path / "config.json")
    assert DCAEConfig.from_json(tmp_path / "config.json") == config


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(encoder_block_types=("ResBlock", "ResBlock", "ResBlock", "ViT")), "block type"),
        (dict(decoder_norm_types="batch_norm"), "norm type"),
        (dict(decoder_act_fns="relu7"), "activation"),
        (dict(encoder_layers_per_block=(2, 2, 3)), "encoder_layers_per_block"),
        (dict(decoder_layers_per_block=(0, 3, 3, 3)), "layers_per_block"),
        (dict(attention_head_dim=48), "attention_head_dim"),
        (dict(latent_channels=7), "latent_channels"),
        (dict(upsample_block_type="bilinear"), "upsample_block_type"),
        (dict(downsample_block_type="avgpool"), "downsample_block_type"),
    ],
)
def test_config_rejects_unsupported_values(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(DCAEConfig(), **change)


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key"):
        DCAEConfig.from_dict({"in_channels": 2, "num_layers": 3})


# ----------------------------------------------------------------------------------------------------------
# structure


def test_full_size_keys_and_shapes_match_official(golden_dir):
    expected = json.loads((golden_dir / "keys" / "dcae_full.json").read_text())
    with torch.device("meta"):
        model = DCAE(DCAEConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected)  # same keys, same order
    assert ours == expected  # same shapes
    assert sum(v.numel() for v in model.state_dict().values()) == sum(
        torch.Size(s).numel() for s in expected.values()
    )


def test_tiny_keys_match_tiny_checkpoint(golden_models_dir):
    state = load_file(str(golden_models_dir / "music_dcae_f8c8" / "diffusion_pytorch_model.safetensors"))
    ours = DCAE(DCAEConfig.tiny()).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in state.items()}


def test_shapes_and_input_checks():
    model = DCAE(DCAEConfig.tiny()).eval()
    with torch.no_grad():
        z = model.encoder(torch.randn(1, 2, 128, 40))
        assert z.shape == (1, 8, 16, 5)
        assert model.decoder(z).shape == (1, 2, 128, 40)
        with pytest.raises(ValueError, match="multiples of 8"):
            model.encoder(torch.randn(1, 2, 128, 36))


# ----------------------------------------------------------------------------------------------------------
# golden parity (official MusicDCAE, float32 CPU)


def test_encoder_matches_golden(golden_dcae, audio_tensors):
    with torch.no_grad():
        z = golden_dcae.encoder(audio_tensors["enc_48k/dcae_encoder_in"])
        err = assert_close(z, audio_tensors["enc_48k/dcae_encoder_out"], rtol=1e-5, name="encoder 48k")
        # the 44.1 kHz clip: normalise its recorded log-mel ourselves
        mel_norm = ((audio_tensors["enc_44k/logmel"] - MEL_MIN) / (MEL_MAX - MEL_MIN) - 0.5) / 0.5
        z44 = golden_dcae.encoder(mel_norm)
        err44 = assert_close(z44, audio_tensors["enc_44k/dcae_encoder_out"], rtol=1e-5, name="encoder 44k")
    print(f"dcae encoder max abs err: 48k {err:.2e}, 44k {err44:.2e}")


def test_decoder_matches_golden(golden_dcae, audio_tensors):
    with torch.no_grad():
        mel_norm = golden_dcae.decoder(audio_tensors["dec/dcae_decoder_in"])
    mel = (mel_norm * 0.5 + 0.5) * (MEL_MAX - MEL_MIN) + MEL_MIN
    err = assert_close(mel[0], audio_tensors["dec/vocoder_in_mel"], rtol=1e-5, name="decoder mel")
    print(f"dcae decoder (denormalised mel) max abs err: {err:.2e}")


def test_injected_attention_summaries_reproduce_the_plain_decoder(golden_dcae):
    """The summary path used by windowed decoding is the same computation when fed the whole input."""
    torch.manual_seed(3)
    z = torch.randn(2, 8, 16, 9)
    decoder = golden_dcae.decoder
    with torch.no_grad():
        summaries: list[torch.Tensor] = []
        for layer in range(decoder.n_attention_layers):
            summaries.append(decoder.attention_summary(z, layer, summaries))
        # summaries are additive over frames
        halves = decoder.attention_summary(z, 1, summaries[:1], slice(0, 4)) + decoder.attention_summary(
            z, 1, summaries[:1], slice(4, None)
        )
        assert_close(halves, summaries[1], rtol=1e-6, name="split summary")
        assert_close(decoder(z, summaries), decoder(z), rtol=1e-6, name="injected summaries")
    assert decoder.n_attention_layers == 3


# ----------------------------------------------------------------------------------------------------------
# diffusers AutoencoderDC as an independent reference (random inputs)


def _diffusers_twin(model: DCAE):
    diffusers = pytest.importorskip("diffusers")
    kwargs = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    ref = diffusers.AutoencoderDC(**kwargs)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()


@pytest.mark.parametrize("n_mel_frames", [8, 16, 24, 88])  # latent widths 1, 2 (quadratic attention), 3, 11
def test_matches_diffusers_golden_weights(golden_dcae, n_mel_frames):
    ref = _diffusers_twin(golden_dcae)
    gen = torch.Generator().manual_seed(n_mel_frames)
    x = torch.randn(2, 2, 128, n_mel_frames, generator=gen)
    z = torch.randn(2, 8, 16, n_mel_frames // 8, generator=gen)
    with torch.no_grad():
        enc_err = assert_close(golden_dcae.encoder(x), ref.encoder(x), rtol=1e-5, name="encoder")
        dec_err = assert_close(golden_dcae.decoder(z), ref.decoder(z), rtol=1e-5, name="decoder")
    print(f"vs diffusers, {n_mel_frames} mel frames: encoder {enc_err:.2e}, decoder {dec_err:.2e}")


def test_matches_diffusers_other_block_variants():
    """pixel_unshuffle / pixel_shuffle steps, two multiscale kernels, per-stage decoder options."""
    config = dataclasses.replace(
        DCAEConfig.tiny(),
        encoder_block_out_channels=(16, 32, 64),
        decoder_block_out_channels=(16, 32, 64),
        encoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_layers_per_block=(1, 1, 2),
        decoder_layers_per_block=(1, 2, 1),
        encoder_qkv_multiscales=((), (3,), (3, 5)),
        decoder_qkv_multiscales=((), (), (5,)),
        downsample_block_type="pixel_unshuffle",
        upsample_block_type="pixel_shuffle",
        decoder_act_fns=("silu", "gelu", "relu"),
        encoder_out_shortcut=False,
        decoder_in_shortcut=False,
    )
    torch.manual_seed(0)
    model = DCAE(config).eval()
    with torch.no_grad():  # move every weight away from its init so all paths matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = _diffusers_twin(model)
    x = torch.randn(1, 2, 32, 48)
    z = torch.randn(1, 8, 8, 12)
    with torch.no_grad():
        assert_close(model.encoder(x), ref.encoder(x), rtol=1e-5, name="encoder variant")
        assert_close(model.decoder(z), ref.decoder(z), rtol=1e-5, name="decoder variant")
