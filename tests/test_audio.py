"""Audio layer: file I/O, torchaudio-compatible resampling, and the log-mel front end.

Parity tests read the official fixtures in ``golden/acestep_v1/audio`` (48 kHz <-> 44.1 kHz resampling,
log-mel of the padded clip) and the mel buffers stored in the tiny vocoder checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from conftest import assert_close, load_tensors
from songflow.audio.io import SUPPORTED_FORMATS, load_audio, save_audio, to_stereo
from songflow.audio.mel import LogMelSpectrogram, slaney_mel_filterbank
from songflow.audio.resample import resample, resample_hq
from songflow.errors import AudioError

PAD_MULTIPLE_SAMPLES = 4096  # the codec pads the 44.1 kHz audio to whole latent frames before the mel


@pytest.fixture(scope="module")
def audio_golden(golden_dir):
    return load_tensors(golden_dir / "audio" / "audio.safetensors")


@pytest.fixture(scope="module")
def vocoder_buffers(golden_models_dir):
    weights = load_tensors(golden_models_dir / "music_vocoder" / "diffusion_pytorch_model.safetensors")
    return {k: v for k, v in weights.items() if k.startswith("mel_transform.")}


def _tones(sample_rate_hz: int, n_samples: int, freqs_hz=(997.0, 5003.3), amps=(0.5, 0.3)) -> np.ndarray:
    t = np.arange(n_samples) / sample_rate_hz
    return sum(a * np.sin(2 * np.pi * f * t) for f, a in zip(freqs_hz, amps, strict=True))


def _snr_db(actual: np.ndarray, reference: np.ndarray) -> float:
    return 10 * math.log10(np.sum(reference**2) / np.sum((actual - reference) ** 2))


# ------------------------------------------------------------------------------------------ resample


def test_resample_48k_to_44k_matches_golden(audio_golden):
    out = resample(audio_golden["input_48k"], 48000, 44100)
    err = assert_close(out, audio_golden["enc_48k/resampled_44k"][0], rtol=1e-6, name="resampled_44k")
    print(f"resample 48k->44.1k max abs err {err:.3e}")


def test_resample_44k_to_48k_matches_golden(audio_golden):
    out = resample(audio_golden["dec/wav_44k"], 44100, 48000)
    err = assert_close(out, audio_golden["dec/wav_48k"], rtol=1e-6, name="wav_48k")
    print(f"resample 44.1k->48k max abs err {err:.3e}")


def test_resample_identity_and_shapes():
    wav = torch.randn(2, 3, 1001)
    assert resample(wav, 44100, 44100) is wav
    assert resample(wav, 88200, 88200) is wav
    for n in (1, 7, 160, 1001):
        for orig, new in ((48000, 44100), (44100, 48000), (16000, 44100), (44100, 22050)):
            out = resample(wav[..., :n], orig, new)
            assert out.shape == (2, 3, math.ceil(n * new / orig))
            assert out.dtype == wav.dtype
    # batch items are independent
    out = resample(wav, 48000, 44100)
    assert torch.allclose(out[1, 2], resample(wav[1, 2], 48000, 44100), atol=1e-6)
    assert resample(wav.double(), 48000, 44100).dtype == torch.float64
    with pytest.raises(AudioError):
        resample(wav, 0, 44100)


@pytest.mark.parametrize(
    "orig_hz,new_hz,min_snr_db", [(48000, 44100, 60), (44100, 48000, 60), (16000, 44100, 45)]
)
def test_resample_agrees_with_scipy_resample_poly(orig_hz, new_hz, min_snr_db):
    from scipy.signal import resample_poly

    x = _tones(orig_hz, orig_hz).astype(np.float32)
    ours = resample(torch.from_numpy(x), orig_hz, new_hz).numpy().astype(np.float64)
    g = math.gcd(orig_hz, new_hz)
    theirs = resample_poly(x.astype(np.float64), new_hz // g, orig_hz // g)[: len(ours)]
    ideal = _tones(new_hz, len(ours))
    inner = slice(len(ours) // 10, -len(ours) // 10)  # both methods treat the edges differently
    assert _snr_db(ours[inner], theirs[inner]) > min_snr_db
    assert _snr_db(ours[inner], ideal[inner]) > min_snr_db


def test_resample_removes_content_above_new_nyquist():
    # The Hann-windowed sinc of width 6 has a wide transition band (torchaudio's default is soft), so
    # probe the stop band well past the 0.99 * 11025 Hz cut-off of a 48 kHz -> 22.05 kHz conversion.
    for freq_hz in (14000.0, 16000.0, 20000.0):
        x = torch.from_numpy(_tones(48000, 48000, freqs_hz=(freq_hz,), amps=(0.5,)).astype(np.float32))
        out = resample(x, 48000, 22050)[2205:-2205]
        assert out.abs().max() < 0.5 * 10 ** (-50 / 20), freq_hz  # >= 50 dB attenuation of the alias


def test_resample_hq_is_accurate():
    x = torch.from_numpy(_tones(48000, 48000).astype(np.float32))[None].repeat(2, 1)
    out = resample_hq(x, 48000, 44100)
    assert out.shape == (2, 44100) and out.dtype == torch.float32
    ideal = _tones(44100, 44100)
    assert _snr_db(out[0, 4410:-4410].double().numpy(), ideal[4410:-4410]) > 100
    assert resample_hq(x, 44100, 44100) is x


# ------------------------------------------------------------------------------------------ mel


def _numpy_slaney_filterbank(n_freqs, n_mels, sr, f_min, f_max) -> np.ndarray:
    """Independent float64 Slaney filterbank: triangles between mel-spaced edges, area-normalised."""

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(
            f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1e-12) / 1000.0) / np.log(6.4)
        )

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * 6.4 ** ((m - 15.0) / 27.0))

    bins_hz = np.linspace(0.0, sr // 2, n_freqs)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    fb = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (bins_hz - lo) / (mid - lo)
        down = (hi - bins_hz) / (hi - mid)
        fb[:, m] = np.maximum(0.0, np.minimum(up, down)) * 2.0 / (hi - lo)
    return fb


def test_filterbank_matches_golden_buffer_and_numpy(vocoder_buffers):
    fb = slaney_mel_filterbank(1025, 128, 44100, 40.0, 16000.0)
    assert fb.shape == (1025, 128) and fb.dtype == torch.float32
    golden = vocoder_buffers["mel_transform.mel_scale.fb"]
    err = assert_close(fb, golden, rtol=1e-7, name="fb")
    print(f"fb vs golden max abs err {err:.3e}")
    reference = torch.from_numpy(_numpy_slaney_filterbank(1025, 128, 44100, 40.0, 16000.0))
    assert (fb.double() - reference).abs().max() < 1e-5 * reference.abs().max()
    # other sizes agree with the NumPy version too
    small = slaney_mel_filterbank(257, 40, 16000, 0.0, 8000.0).double()
    reference = torch.from_numpy(_numpy_slaney_filterbank(257, 40, 16000, 0.0, 8000.0))
    assert (small - reference).abs().max() < 1e-5 * reference.abs().max()


def test_log_mel_buffers_and_keys(vocoder_buffers):
    mel = LogMelSpectrogram()
    assert set(mel.state_dict()) == {"spectrogram.window", "mel_scale.fb"}
    assert torch.equal(mel.spectrogram.window, vocoder_buffers["mel_transform.spectrogram.window"])
    periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)
    assert np.abs(mel.spectrogram.window.double().numpy() - periodic_hann).max() < 1e-6


@pytest.mark.parametrize("case,source", [("enc_44k", "input_44k"), ("enc_48k", "enc_48k/resampled_44k")])
def test_log_mel_matches_golden(audio_golden, case, source):
    wav = audio_golden[source].reshape(2, -1)  # one row per stereo channel
    pad = -wav.shape[-1] % PAD_MULTIPLE_SAMPLES
    wav = F.pad(wav, (0, pad))
    logmel = LogMelSpectrogram()(wav)
    err = assert_close(logmel, audio_golden[f"{case}/logmel"][0], rtol=1e-5, name=f"{case}/logmel")
    print(f"{case} logmel max abs err {err:.3e}")


def test_log_mel_shapes_and_dtypes():
    mel = LogMelSpectrogram(
        sample_rate_hz=16000, n_fft=256, win_length=256, hop_samples=64, f_max_hz=8000.0, n_mels=20
    )
    for n in (64 * 3, 1000, 4096):
        assert mel(torch.randn(3, n)).shape == (3, 20, n // 64)
    out = mel(torch.randn(1, 1024, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert mel(torch.zeros(1, 1024)).min() >= math.log(1e-5) - 1e-6
    with pytest.raises(ValueError):
        mel(torch.randn(1, 2, 1024))


# ------------------------------------------------------------------------------------------ io


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_save_load_round_trip(tmp_path, fmt):
    sr = 44100
    wav = torch.from_numpy(_tones(sr, sr // 2, freqs_hz=(440.0,), amps=(0.5,)).astype(np.float32))[
        None
    ].repeat(2, 1)
    wav[1] *= 0.5
    path = tmp_path / f"clip.{fmt}"
    save_audio(path, wav, sr)
    loaded, loaded_sr = load_audio(path)
    assert loaded_sr == sr and loaded.dtype == torch.float32 and loaded.shape[0] == 2
    assert list(tmp_path.iterdir()) == [path]  # the temporary file is gone
    if fmt == "wav":
        assert torch.equal(loaded, wav)
    elif fmt == "flac":
        assert (loaded - wav).abs().max() < 2**-22
    else:  # lossy: the level of each channel survives
        n = min(loaded.shape[1], wav.shape[1])
        rms = loaded[:, :n].pow(2).mean(1).sqrt() / wav[:, :n].pow(2).mean(1).sqrt()
        assert torch.allclose(rms, torch.ones(2), atol=0.1)


def test_save_format_override_and_clipping(tmp_path):
    loud = torch.tensor([[2.0, -3.0, 0.5, 0.25] * 100])
    path = tmp_path / "clip.bin"
    save_audio(path, loud, 8000, format="FLAC")
    assert sf.info(str(path)).format == "FLAC"
    data, _ = load_audio(path)
    assert data.max() <= 1.0 and data.min() >= -1.0
    save_audio(tmp_path / "float.wav", loud, 8000)  # float WAV keeps the out-of-range values
    data, _ = load_audio(tmp_path / "float.wav")
    assert torch.equal(data, loud)


def test_save_errors(tmp_path):
    wav = torch.zeros(2, 100)
    with pytest.raises(AudioError, match="supported formats: wav"):
        save_audio(tmp_path / "clip.aiff", wav, 44100)
    with pytest.raises(AudioError):
        save_audio(tmp_path / "clip.wav", torch.zeros(2, 0), 44100)
    with pytest.raises(AudioError, match="NaN"):
        save_audio(tmp_path / "clip.wav", torch.full((1, 10), float("nan")), 44100)
    with pytest.raises(AudioError):
        save_audio(tmp_path / "clip.wav", wav, 0)
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError):
        load_audio(tmp_path)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(garbage)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 2), dtype=np.float32), 44100)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(empty)
    bad = tmp_path / "nan.wav"
    sf.write(str(bad), np.array([[0.0], [np.nan], [np.inf]], dtype=np.float32), 44100, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(bad)


def test_to_stereo():
    mono = torch.randn(1, 50)
    stereo = to_stereo(mono)
    assert stereo.shape == (2, 50) and torch.equal(stereo[0], mono[0]) and torch.equal(stereo[1], mono[0])
    assert to_stereo(torch.randn(50)).shape == (2, 50)
    multi = torch.randn(6, 50)
    assert torch.equal(to_stereo(multi), multi[:2])
    two = torch.randn(2, 50)
    assert torch.equal(to_stereo(two), two)
    with pytest.raises(AudioError):
        to_stereo(torch.randn(0, 50))
