"""Music codec (``songflow.models.acestep_v1.codec``): golden end-to-end parity, exact windowed decoding,
shapes, errors.

Run: ``python -m pytest tests/test_codec.py -q -s`` (``-s`` prints the measured errors and receptive fields).

The receptive-field tests measure, DAC-style, which inputs one output depends on by backpropagating a
one-hot gradient; the windowed decoder's default overlaps must cover what they find.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from safetensors.torch import load_file

import songflow.models.acestep_v1.codec as codec_module
from conftest import assert_close, load_tensors
from songflow.audio.geometry import LatentGeometry
from songflow.errors import ConfigError
from songflow.models.acestep_v1.codec import CodecInputError, MusicCodec, vocoder_receptive_radius_mel_frames
from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig
from songflow.models.acestep_v1.vocoder import Vocoder, VocoderConfig


def _load(module: torch.nn.Module, path) -> torch.nn.Module:
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    module.load_state_dict(state, strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def golden_codec(golden_models_dir) -> MusicCodec:
    dcae_dir, voc_dir = golden_models_dir / "music_dcae_f8c8", golden_models_dir / "music_vocoder"
    dcae = _load(
        DCAE(DCAEConfig.from_json(dcae_dir / "config.json")), dcae_dir / "diffusion_pytorch_model.safetensors"
    )
    voc = _load(
        Vocoder(VocoderConfig.from_json(voc_dir / "config.json")),
        voc_dir / "diffusion_pytorch_model.safetensors",
    )
    return MusicCodec(dcae, voc).eval()


@pytest.fixture(scope="module")
def audio_tensors(golden_dir):
    return load_tensors(golden_dir / "audio" / "audio.safetensors")


TINY_GEOMETRY = LatentGeometry(sample_rate_hz=16000, hop_samples=64, downsample=8)


@pytest.fixture(scope="module")
def tiny_codec() -> MusicCodec:
    """No fixtures needed: tiny DC-AE + tiny 16 kHz vocoder (a different receptive field than the release),
    random weights moved away from their init so the outputs are far from constant."""
    torch.manual_seed(0)
    dcae, voc = DCAE(DCAEConfig.tiny()), Vocoder(VocoderConfig.tiny())
    with torch.no_grad():
        for p in [*dcae.parameters(), *voc.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    return MusicCodec(dcae, voc, TINY_GEOMETRY).eval()


# ----------------------------------------------------------------------------------------------------------
# golden end-to-end parity (official MusicDCAE.encode / decode, float32 CPU)


@pytest.mark.parametrize("rate_hz, key", [(48000, "48k"), (44100, "44k")])
def test_encode_matches_golden(golden_codec, audio_tensors, rate_hz, key):
    latents = golden_codec.encode(audio_tensors[f"input_{key}"][None], rate_hz)
    err = assert_close(latents, audio_tensors[f"enc_{key}/latents"], rtol=1e-5, name=f"latents {key}")
    print(f"encode {key}: max abs err {err:.2e}")
    n_in = audio_tensors[f"input_{key}"].shape[-1]
    assert golden_codec.latent_frames_for(n_in, rate_hz) == audio_tensors[f"enc_{key}/latent_lengths"].item()


@pytest.mark.parametrize("rate_hz, key", [(None, "wav_44k"), (48000, "wav_48k")])
def test_decode_matches_golden(golden_codec, audio_tensors, rate_hz, key):
    wav = golden_codec.decode(audio_tensors["enc_48k/latents"], rate_hz)
    err = assert_close(wav[0], audio_tensors[f"dec/{key}"], rtol=1e-5, name=key)
    print(f"decode {key}: max abs err {err:.2e}")


def test_vocoder_channels_batched_match_separate_calls(golden_codec, audio_tensors):
    """The official wrapper vocodes each stereo channel alone; we batch the two (same result to 1e-5)."""
    mel = audio_tensors["dec/vocoder_in_mel"]
    with torch.no_grad():
        separate = torch.cat([golden_codec.vocoder(mel[c : c + 1])[:, 0] for c in range(2)])
        batched = golden_codec.vocoder(mel)[:, 0]
    err = assert_close(batched, separate, rtol=1e-5, name="batched vocoder")
    print(f"vocoder stereo batched vs per channel: max abs err {err:.2e}")


# ----------------------------------------------------------------------------------------------------------
# receptive fields (one-hot gradient, as DAC's diagnostic)


def _input_extent(output: torch.Tensor, x: torch.Tensor) -> tuple[int, int]:
    """First and last index along x's last axis with a non-zero gradient of ``output`` (a scalar)."""
    (grad,) = torch.autograd.grad(output, x, retain_graph=True)
    hit = grad.abs().flatten(0, -2).sum(0).nonzero()[:, 0]
    return int(hit.min()), int(hit.max())


def test_vocoder_receptive_field_is_covered(golden_codec):
    """The golden tiny vocoder keeps the release's depths, kernels and rates, so its receptive field is
    the release's: measured 89 mel frames either side."""
    vocoder, hop = golden_codec.vocoder, golden_codec.geometry.hop_samples
    n_frames, centre = 240, 120
    x = torch.randn(1, 128, n_frames, requires_grad=True)
    wav = vocoder(x)[0, 0]
    radius = 0.0
    for sample in (centre * hop, centre * hop + hop // 2, centre * hop + hop - 1):
        first, last = _input_extent(wav[sample], x)
        assert 0 < first and last < n_frames - 1, "probe too close to the edges"
        radius = max(radius, sample / hop - first, last - sample / hop)
    bound = vocoder_receptive_radius_mel_frames(vocoder.config)
    print(f"vocoder receptive radius: measured {radius:.2f} mel frames, bound {bound:.2f}")
    assert radius <= bound <= radius + 8
    assert golden_codec.vocoder_overlap_mel_frames() >= math.ceil(radius)


def test_dcae_decoder_receptive_field_is_covered(golden_codec):
    """With the attention summaries held fixed the decoder is local: measured 17 latent frames either
    side for the released structure. Without them every output depends on every frame (global attention),
    which is why windowed decoding injects the summaries."""
    decoder = golden_codec.dcae.decoder
    n_frames, centre = 48, 24
    z = torch.randn(1, 8, 16, n_frames)
    with torch.no_grad():
        summaries: list[torch.Tensor] = []
        for layer in range(decoder.n_attention_layers):
            summaries.append(decoder.attention_summary(z, layer, summaries))
    z.requires_grad_(True)
    local = decoder(z, summaries)
    radius = 0.0
    for column in range(8 * centre, 8 * centre + 8):  # the 8 mel columns of latent frame `centre`
        first, last = _input_extent(local[0, :, :, column].sum(), z)
        radius = max(radius, column / 8 - first, last - column / 8)
    bound = decoder.local_receptive_radius_frames()
    print(f"dcae decoder local receptive radius: measured {radius:.3f} latent frames, bound {bound:.3f}")
    assert radius <= bound <= radius + 1
    assert golden_codec.dcae_overlap_frames() >= math.ceil(radius)
    glob = decoder(z)
    assert _input_extent(glob[0, :, :, 8 * centre].sum(), z) == (0, n_frames - 1)


# ----------------------------------------------------------------------------------------------------------
# windowed decoding


def test_chunked_decode_equals_full_decode(golden_codec):
    """Exact up to float32 rounding: attention summaries are global sums, the rest has a finite receptive
    field covered by the overlaps. Measured max abs error ~4e-6 on a waveform of peak ~1 (float32
    summation order in the summaries; vocoder convolutions run on different lengths)."""
    torch.manual_seed(1)
    latents = torch.randn(1, 8, 16, 48)
    full = golden_codec.decode(latents, chunked=False)
    chunked = golden_codec.decode_chunked(latents, window_frames=14)  # 4 windows, the last one short
    err = assert_close(chunked, full, rtol=2e-5, name="chunked decode")
    print(f"chunked vs full decode: max abs err {err:.2e}")


def test_chunked_mel_equals_full_mel(golden_codec):
    torch.manual_seed(2)
    latents = torch.randn(2, 8, 16, 40)
    z = golden_codec.constants.code_from_latents(latents)
    with torch.no_grad():
        full = golden_codec.constants.denormalize_mel(golden_codec.dcae.decoder(z))
    overlap = golden_codec.dcae_overlap_frames()
    chunked = golden_codec.decode_mel_chunked(latents, window_frames=8, overlap_frames=overlap)
    err = assert_close(chunked, full, rtol=1e-5, name="chunked mel")
    # too little context is visibly wrong, so the comparison can tell
    rough = golden_codec.decode_mel_chunked(latents, window_frames=8, overlap_frames=3)
    rough_err = (rough - full).abs().max().item()
    print(
        f"chunked vs full DC-AE mel: max abs err {err:.2e} (overlap 3 instead of {overlap}: {rough_err:.2e})"
    )
    assert rough_err > 1e-2


def test_chunked_vocoder_equals_full_vocoder(golden_codec, audio_tensors):
    logmel = audio_tensors["dec/vocoder_in_mel"][None]  # (1, 2, 128, 264) a real decoded mel
    with torch.no_grad():
        full = golden_codec.vocoder(logmel[0])[:, 0]
    overlap = golden_codec.vocoder_overlap_mel_frames()
    chunked = golden_codec.vocode_chunked(logmel, window_mel_frames=100, overlap_mel_frames=overlap)[0]
    err = assert_close(chunked, full, rtol=1e-5, name="chunked vocoder")
    rough = golden_codec.vocode_chunked(logmel, window_mel_frames=100, overlap_mel_frames=16)[0]
    rough_err = (rough - full).abs().max().item()
    print(
        f"chunked vs full vocoder: max abs err {err:.2e} (overlap 16 instead of {overlap}: {rough_err:.2e})"
    )
    assert rough_err > 1e-4


def test_chunked_decode_other_architecture(tiny_codec):
    """A different vocoder structure (its own receptive-field bound). Latent height is 2 here, so at 13
    frames the plain decoder's attention has H*W = 26 <= 32 positions and takes the quadratic branch, while
    the windowed decoder always uses the linear form with injected summaries; 37 frames is linear in both."""
    torch.manual_seed(3)
    for n_frames in (13, 37):
        latents = torch.randn(1, 8, 2, n_frames)
        full = tiny_codec.decode(latents, chunked=False)
        chunked = tiny_codec.decode_chunked(latents, window_frames=5)
        scale = full.abs().max().item()
        assert scale > 0.05
        assert (chunked - full).abs().max().item() <= 1e-5 * scale


def test_decode_auto_selects_chunked(golden_codec, monkeypatch):
    calls = []
    original = MusicCodec.decode_chunked

    def spy(self, latents, **kwargs):
        calls.append(latents.shape[-1])
        return original(self, latents, **kwargs)

    monkeypatch.setattr(MusicCodec, "decode_chunked", spy)
    monkeypatch.setattr(codec_module, "AUTO_CHUNK_FRAMES", 4)
    latents = torch.randn(1, 8, 16, 5)
    golden_codec.decode(latents[..., :4])
    golden_codec.decode(latents)
    assert calls == [5]


# ----------------------------------------------------------------------------------------------------------
# shapes and batching


def test_round_trip_lengths(tiny_codec):
    rng = random.Random(0)
    g = tiny_codec.geometry
    for _ in range(6):
        rate_hz = rng.choice([16000, 22050, 48000])
        n_samples = rng.randrange(1, 5 * g.samples_per_frame)
        wav = torch.randn(2, 2, n_samples) * 0.1
        latents = tiny_codec.encode(wav, rate_hz)
        n_at_model_rate = math.ceil(n_samples * g.sample_rate_hz / rate_hz)
        assert latents.shape == (2, 8, 2, math.ceil(n_at_model_rate / g.samples_per_frame))
        out = tiny_codec.decode(latents, rate_hz)
        frame_at_rate = g.samples_per_frame * rate_hz / g.sample_rate_hz
        assert out.shape[:2] == (2, 2) and 0 <= out.shape[-1] - n_samples < frame_at_rate + 1
        assert tiny_codec.latent_frames_for(n_samples, rate_hz) <= latents.shape[-1]


def test_round_trip_lengths_official_geometry(golden_codec):
    for n_samples, rate_hz in [(1, 44100), (4096, 44100), (4097, 48000), (10000, 32000)]:
        latents = golden_codec.encode(torch.randn(1, 2, n_samples) * 0.1, rate_hz)
        n_44k = math.ceil(n_samples * 44100 / rate_hz)
        assert latents.shape == (1, 8, 16, math.ceil(n_44k / 4096))
        out = golden_codec.decode(latents, rate_hz)
        assert 0 <= out.shape[-1] - n_samples < 4096 * rate_hz / 44100 + 1
    assert golden_codec.latent_frames_for(4095, 44100) == 0
    assert golden_codec.latent_frames_for(4096, 44100) == 1
    assert golden_codec.latent_frames_for(240 * 48000, 48000) == 2583


def test_batch_equals_singles(tiny_codec):
    torch.manual_seed(4)
    wav = torch.randn(3, 2, 3000) * 0.1
    latents = tiny_codec.encode(wav, 16000)
    singles = torch.cat([tiny_codec.encode(wav[i : i + 1], 16000) for i in range(3)])
    assert torch.equal(latents, singles)
    out = tiny_codec.decode(latents)
    assert torch.equal(out, torch.cat([tiny_codec.decode(latents[i : i + 1]) for i in range(3)]))


# ----------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "latents, message",
    [
        (torch.randn(1, 8, 16), r"\[B, 8, 16, L\]"),
        (torch.randn(1, 4, 16, 3), r"\[B, 8, 16, L\]"),
        (torch.randn(1, 8, 8, 3), r"\[B, 8, 16, L\]"),
        (torch.randn(1, 8, 16, 0), "at least one"),
        (torch.zeros(1, 8, 16, 3, dtype=torch.int64), "floating point"),
        (torch.full((1, 8, 16, 3), float("nan")), "NaN"),
    ],
)
def test_decode_rejects_bad_latents(golden_codec, latents, message):
    with pytest.raises(CodecInputError, match=message):
        golden_codec.decode(latents)
    with pytest.raises(CodecInputError, match=message):
        golden_codec.decode_chunked(latents)


@pytest.mark.parametrize(
    "wav, rate_hz, message",
    [
        (torch.randn(1, 1, 4096), 44100, "duplicate a mono"),
        (torch.randn(2, 4096), 44100, "duplicate a mono"),
        (torch.randn(1, 2, 0), 44100, "at least one"),
        (torch.full((1, 2, 100), float("inf")), 44100, "NaN or infinite"),
        (torch.randn(1, 2, 100), 0, "positive integer"),
        (torch.randn(1, 2, 100), 44100.5, "positive integer"),
    ],
)
def test_encode_rejects_bad_audio(golden_codec, wav, rate_hz, message):
    with pytest.raises(CodecInputError, match=message):
        golden_codec.encode(wav, rate_hz)


@pytest.mark.parametrize("rate_hz", [0, -48000, 48000.5, "48k", float("nan"), True])
def test_decode_rejects_bad_rates_before_decoding(golden_codec, rate_hz):
    latents = torch.zeros(1, 8, 16, 2)
    with pytest.raises(CodecInputError, match="positive integer"):
        golden_codec.decode(latents, rate_hz)
    with pytest.raises(CodecInputError, match="positive integer"):
        golden_codec.latent_frames_for(4096, rate_hz)


def test_geometry_must_match_networks():
    with pytest.raises(ConfigError, match="geometry"):
        MusicCodec(DCAE(DCAEConfig.tiny()), Vocoder(VocoderConfig.tiny()))
