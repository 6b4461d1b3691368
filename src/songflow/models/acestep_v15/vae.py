"""ACE-Step 1.5 audio VAE: diffusers ``AutoencoderOobleck`` behind a time-major latent API.

Stereo waveform at **48 000 Hz** <-> latents ``[B, T, C]`` at **25 frames/s**: one latent frame covers
**1920 samples** (the product of the downsampling ratios ``[2, 4, 4, 6, 10]``), C = 64 in the release
(8 in the tiny fixtures). diffusers works channel-major ``[B, C, T]``; this wrapper transposes at its edges.
The encoder output (2C channels) is split into ``mean`` and ``scale`` halves, ``std = softplus(scale) +
1e-4``; a latent sample is ``mean + std * noise`` with standard-normal ``noise`` (diffusers'
``OobleckDiagonalGaussianDistribution``). No latent scaling factor is applied (SPEC §6).

Chunked encode and decode follow the official handler exactly (facts: SPEC §5; ``H/vae_decode*.py``,
``H/vae_encode.py``):

* **decode** (:meth:`OobleckVAE.decode_tiled`): items are decoded one at a time. Latents of at most
  ``chunk_frames`` (256) frames are decoded in one call; longer ones in windows whose *core* advances by
  ``stride = chunk - 2 * overlap`` (128) frames and which extend ``overlap`` (64) frames on each side (cut
  at the ends); each window's audio is trimmed back to its core (``added_frames * 1920`` samples) and the
  cores are concatenated. Each window is an independent decode, so the result depends on the layout (it is
  not the plain decode). When ``chunk - 2 * overlap <= 0`` the overlap is halved while above 4, then raised
  to at least 4 (official rule). :meth:`OobleckVAE.decode_streaming` gives the same samples but writes
  each core into one preallocated ``[B, 2, T * 1920]`` tensor (which may live on another device, e.g.
  CPU), so at most one window's activations exist at a time: memory stays flat for 600 s songs.
* **encode** (:meth:`OobleckVAE.encode_tiled`, the official ``tiled_encode`` used for source and reference
  audio): waveforms of at most ``chunk_samples`` are encoded in one call; longer ones in windows of core
  ``chunk - 2 * overlap`` samples plus ``overlap`` on each side, trimmed by ``round(added / f)`` latent
  frames where ``f`` = first window's samples per latent frame. The official chunk is 15 s on CPU and on
  GPUs with at most 8 GB, 30 s above that; the overlap is 2 s. **Every window draws its own noise** (the
  official ``latent_dist.sample()`` per window); pass the draws as ``noise`` (one ``[B, T_window, C]``
  tensor per window, see :meth:`OobleckVAE.encode_windows`) to reproduce a run, or a generator.

Input checks live here, at the network boundary: :meth:`OobleckVAE.encode` refuses non-stereo, wrongly
sampled, non-finite or too short waveforms with :class:`~songflow.errors.AudioError` (converting mono or
resampling is the audio layer's job: ``songflow.audio.io.to_stereo``, ``songflow.audio.resample``), and the
decoders refuse latents of the wrong width with :class:`~songflow.errors.ConfigError`.

Weights: ``OobleckVAE.autoencoder`` is the diffusers module whose state dict matches the release's
``vae/diffusion_pytorch_model.safetensors``; build the wrapper (e.g. inside
``checkpoint.strict.init_empty_weights()``) from :meth:`OobleckConfig.from_dict` of ``vae/config.json``
and fill ``vae.autoencoder`` with ``load_state_dict_strict``. This module reads no files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from songflow.errors import AudioError, ConfigError

SAMPLE_RATE_HZ = 48000
"""Waveform rate of the 1.5 VAE."""

HOP_SAMPLES = 1920
"""Waveform samples per latent frame (2·4·4·6·10); 25 latent frames per second."""

DECODE_CHUNK_FRAMES = 256
"""Official tiled-decode window (latent frames, 10.24 s)."""

DECODE_OVERLAP_FRAMES = 64
"""Official tiled-decode overlap on each side of a window's core (latent frames)."""

MIN_DECODE_OVERLAP_FRAMES = 4
"""Floor of the official overlap reduction for small windows."""

ENCODE_CHUNK_S = 15
"""Official tiled-encode chunk on CPU and GPUs with <= 8 GB (30 s on larger GPUs)."""

ENCODE_CHUNK_S_LARGE_GPU = 30

ENCODE_OVERLAP_S = 2
"""Official tiled-encode overlap on each side of a chunk's core (seconds)."""

_DIFFUSERS_META_KEYS = frozenset({"_class_name", "_diffusers_version", "_name_or_path"})


@dataclass(frozen=True)
class OobleckConfig:
    """The ``AutoencoderOobleck`` constructor arguments (``vae/config.json``); defaults = the release."""

    encoder_hidden_size: int = 128
    downsampling_ratios: tuple[int, ...] = (2, 4, 4, 6, 10)
    channel_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    decoder_channels: int = 128
    decoder_input_channels: int = 64
    audio_channels: int = 2
    sampling_rate: int = SAMPLE_RATE_HZ

    @property
    def hop_samples(self) -> int:
        """Waveform samples per latent frame (product of the downsampling ratios)."""
        return math.prod(self.downsampling_ratios)

    @property
    def latent_channels(self) -> int:
        """C of the latents ``[B, T, C]`` (the decoder's input width)."""
        return self.decoder_input_channels

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OobleckConfig:
        """Read a diffusers ``config.json`` dict; unknown keys are a :class:`ConfigError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - _DIFFUSERS_META_KEYS)
        if unknown:
            raise ConfigError(f"VAE config: unknown keys {unknown} (expected {sorted(names)})")
        if data.get("_class_name", "AutoencoderOobleck") != "AutoencoderOobleck":
            raise ConfigError(f"VAE config: _class_name {data['_class_name']!r} is not AutoencoderOobleck")
        values: dict[str, Any] = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names
        }
        config = cls(**values)
        if len(config.downsampling_ratios) != len(config.channel_multiples):
            raise ConfigError("VAE config: downsampling_ratios and channel_multiples differ in length")
        return config

    def to_dict(self) -> dict[str, Any]:
        """The diffusers ``config.json`` content (lists for tuples)."""
        out: dict[str, Any] = {"_class_name": "AutoencoderOobleck"}
        out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()})
        return out

    @classmethod
    def tiny(cls) -> OobleckConfig:
        """The tiny test configuration of the fixtures (same hop, 8 latent channels)."""
        return cls(
            encoder_hidden_size=16,
            channel_multiples=(1, 2, 2, 4, 4),
            decoder_channels=8,
            decoder_input_channels=8,
        )


@dataclass(frozen=True)
class Window:
    """One overlap-discard window: ``[win_start, win_end)`` is processed, ``[core_start, core_end)`` kept."""

    core_start: int
    core_end: int
    win_start: int
    win_end: int

    @property
    def added_start(self) -> int:
        return self.core_start - self.win_start

    @property
    def added_end(self) -> int:
        return self.win_end - self.core_end


def plan_windows(length: int, chunk: int, overlap: int) -> list[Window]:
    """The official window layout over ``length`` units (frames or samples).

    One window covering everything when ``length <= chunk``; otherwise cores of ``chunk - 2 * overlap``
    units, each extended by ``overlap`` on both sides and cut at the ends.
    """
    if length <= chunk:
        return [Window(0, length, 0, length)]
    stride = chunk - 2 * overlap
    if stride <= 0:
        raise ConfigError(f"chunk {chunk} must be larger than 2 * overlap ({2 * overlap})")
    out = []
    for i in range(math.ceil(length / stride)):
        core_start, core_end = i * stride, min((i + 1) * stride, length)
        out.append(
            Window(core_start, core_end, max(0, core_start - overlap), min(length, core_end + overlap))
        )
    return out


def decode_overlap(chunk_frames: int, overlap_frames: int) -> int:
    """The overlap the official decoder really uses for ``chunk_frames`` (halved until it fits, >= 4)."""
    overlap = overlap_frames
    while chunk_frames - 2 * overlap <= 0 and overlap > MIN_DECODE_OVERLAP_FRAMES:
        overlap //= 2
    if overlap < MIN_DECODE_OVERLAP_FRAMES <= overlap_frames:
        overlap = MIN_DECODE_OVERLAP_FRAMES
    return overlap


def _snake_inplace(self: nn.Module, hidden_states: Tensor) -> Tensor:
    """diffusers' ``Snake1d.forward`` (``x + 1/(beta + 1e-9) * sin(alpha * x)^2``, log-scale parameters)
    with one temporary instead of five: the same operations in the same order, so the same bits; on CPU
    the activations of the 48 kHz layers are large and every fresh temporary costs page faults."""
    shape = hidden_states.shape
    alpha = torch.exp(self.alpha) if self.logscale else self.alpha
    beta = torch.exp(self.beta) if self.logscale else self.beta
    x = hidden_states.reshape(shape[0], shape[1], -1)
    out = alpha * x
    out.sin_().pow_(2).mul_((beta + 1e-9).reciprocal()).add_(x)
    return out.reshape(shape)


def build_autoencoder(config: OobleckConfig) -> Any:
    """A diffusers ``AutoencoderOobleck`` for ``config`` (random init; lazy diffusers import), its Snake
    activations computed in place (:func:`_snake_inplace`; identical results, less memory traffic)."""
    import types

    from diffusers import AutoencoderOobleck
    from diffusers.models.autoencoders.autoencoder_oobleck import Snake1d

    module = AutoencoderOobleck(**{k: v for k, v in config.to_dict().items() if not k.startswith("_")})
    for sub in module.modules():
        if isinstance(sub, Snake1d):
            sub.forward = types.MethodType(_snake_inplace, sub)  # type: ignore[method-assign]
    return module


class OobleckVAE(nn.Module):
    """Waveform ``[B, 2, N]`` at 48 kHz <-> latents ``[B, T, C]`` (T = N // 1920), official tiling.

    Args:
        config: the VAE configuration (default: the release).
        autoencoder: an existing diffusers ``AutoencoderOobleck``; built from ``config`` when None.
    """

    autoencoder: Any  # diffusers AutoencoderOobleck (its state dict = the release's safetensors keys)

    def __init__(self, config: OobleckConfig | None = None, autoencoder: nn.Module | None = None):
        super().__init__()
        self.config = config or OobleckConfig()
        self.autoencoder = autoencoder if autoencoder is not None else build_autoencoder(self.config)

    # ---------------------------------------------------------------- geometry and checks

    @property
    def hop_samples(self) -> int:
        return self.config.hop_samples

    @property
    def sample_rate_hz(self) -> int:
        return self.config.sampling_rate

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def _param(self) -> Tensor:
        return next(self.autoencoder.parameters())

    def frames_for_samples(self, n_samples: int) -> int:
        """Latent frames the encoder gives for ``n_samples`` (each strided conv floors: ``N // 1920``)."""
        n = n_samples
        for stride in self.config.downsampling_ratios:
            pad = math.ceil(stride / 2)
            n = (n + 2 * pad - 2 * stride) // stride + 1
        return max(n, 0)

    def _check_waveform(self, wav: Tensor, sample_rate_hz: int | None) -> None:
        rate = self.sample_rate_hz
        if sample_rate_hz is not None and int(sample_rate_hz) != rate:
            raise AudioError(
                f"the 1.5 VAE encodes {rate} Hz audio, got {sample_rate_hz} Hz; resample first "
                "(songflow.audio.resample)"
            )
        channels = self.config.audio_channels
        if wav.dim() != 3 or wav.shape[1] != channels:
            raise AudioError(
                f"the 1.5 VAE encodes waveforms [B, {channels}, N] (stereo), got shape {tuple(wav.shape)}; "
                "make mono audio stereo first (songflow.audio.io.to_stereo)"
            )
        if not wav.is_floating_point():
            raise AudioError(f"waveform must be floating point in [-1, 1], got dtype {wav.dtype}")
        if wav.shape[-1] < self.hop_samples:
            raise AudioError(
                f"waveform of {wav.shape[-1]} samples is shorter than one latent frame "
                f"({self.hop_samples} samples = {self.hop_samples / rate * 1000:.0f} ms)"
            )
        if not bool(torch.isfinite(wav).all()):
            raise AudioError("waveform holds NaN or infinite samples")

    def _check_latents(self, latents: Tensor) -> None:
        if latents.dim() != 3 or latents.shape[-1] != self.latent_channels:
            raise ConfigError(
                f"latents must be [B, T, {self.latent_channels}] (time-major), "
                f"got shape {tuple(latents.shape)}"
            )

    # ---------------------------------------------------------------- encode

    def encode(self, wav: Tensor, *, sample_rate_hz: int | None = None) -> tuple[Tensor, Tensor]:
        """Posterior of a stereo waveform in one pass (no tiling).

        Args:
            wav: ``[B, 2, N]`` float samples in [-1, 1] at 48 kHz.
            sample_rate_hz: the waveform's rate when known; anything but 48000 is an AudioError.

        Returns:
            ``(mean, std)``, each ``[B, N // 1920, C]`` in the module's dtype.
        """
        from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDiagonalGaussianDistribution

        self._check_waveform(wav, sample_rate_hz)
        param = self._param()
        moments = self.autoencoder.encoder(wav.to(device=param.device, dtype=param.dtype))
        posterior = OobleckDiagonalGaussianDistribution(moments)
        return posterior.mean.transpose(1, 2), posterior.std.transpose(1, 2)

    @staticmethod
    def sample(mean: Tensor, std: Tensor, noise: Tensor) -> Tensor:
        """A latent draw ``mean + std * noise`` (all ``[B, T, C]``; ``noise`` standard normal)."""
        if noise.shape != mean.shape:
            raise ConfigError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(mean.shape)}")
        return mean + std * noise.to(device=mean.device, dtype=mean.dtype)

    def encode_windows(
        self, n_samples: int, *, chunk_samples: int | None = None, overlap_samples: int | None = None
    ) -> list[Window]:
        """The windows :meth:`encode_tiled` uses for ``n_samples`` (in samples).

        Window ``i`` needs noise of shape ``[B, frames_for_samples(w.win_end - w.win_start), C]``.
        """
        chunk = ENCODE_CHUNK_S * self.sample_rate_hz if chunk_samples is None else chunk_samples
        overlap = ENCODE_OVERLAP_S * self.sample_rate_hz if overlap_samples is None else overlap_samples
        return plan_windows(n_samples, chunk, overlap)

    def _window_noise(
        self, i: int, like: Tensor, noise: Sequence[Tensor] | None, generator: torch.Generator | None
    ) -> Tensor:
        if noise is not None:
            return noise[i]
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def encode_tiled(
        self,
        wav: Tensor,
        *,
        noise: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        chunk_samples: int | None = None,
        overlap_samples: int | None = None,
        sample_rate_hz: int | None = None,
    ) -> Tensor:
        """Sampled latents of a waveform, chunked as the official ``tiled_encode`` (module doc).

        Args:
            wav: ``[B, 2, N]`` at 48 kHz.
            noise: one standard-normal ``[B, T_i, C]`` tensor per window of :meth:`encode_windows` (a
                ``[1, 2, N]`` waveform with ``[B, ...]`` noise is encoded once and sampled B times; the
                official draws, e.g. the fixtures' ``noise/vae_sample_NNN`` transposed); None draws fresh
                noise from ``generator`` (or torch's global RNG), window by window.
            chunk_samples: window size (default 15 s, the official CPU / <= 8 GB value; 30 s on larger GPUs).
            overlap_samples: overlap on each side (default 2 s).

        Returns:
            latents ``[B, T, C]`` (T = sum of the window cores), in the module's dtype, on its device.
        """
        self._check_waveform(wav, sample_rate_hz)
        windows = self.encode_windows(
            wav.shape[-1], chunk_samples=chunk_samples, overlap_samples=overlap_samples
        )
        if noise is not None and len(noise) != len(windows):
            raise ConfigError(
                f"encode_tiled needs {len(windows)} noise tensors (one per window), got {len(noise)}"
            )
        pieces: list[Tensor] = []
        samples_per_frame: float | None = None
        for i, w in enumerate(windows):
            mean, std = self.encode(wav[:, :, w.win_start : w.win_end])
            draw = self._window_noise(i, mean, noise, generator)
            if mean.shape[0] == 1 and draw.shape[0] > 1:  # one waveform, one draw per batch item
                mean, std = mean.expand_as(draw), std.expand_as(draw)
            latent = self.sample(mean, std, draw)
            if samples_per_frame is None:
                samples_per_frame = (w.win_end - w.win_start) / latent.shape[1]
            trim_start = int(round(w.added_start / samples_per_frame))
            trim_end = int(round(w.added_end / samples_per_frame))
            pieces.append(latent[:, trim_start : latent.shape[1] - trim_end])
        return torch.cat(pieces, dim=1)

    # ---------------------------------------------------------------- decode

    def decode(self, latents: Tensor) -> Tensor:
        """Waveform of latents in one pass: ``[B, T, C]`` -> ``[B, 2, T * 1920]`` (module dtype/device)."""
        self._check_latents(latents)
        param = self._param()
        z = latents.to(device=param.device, dtype=param.dtype).transpose(1, 2)
        return self.autoencoder.decoder(z)

    def _decode_layout(self, n_frames: int, chunk_frames: int, overlap_frames: int) -> list[Window]:
        return plan_windows(n_frames, chunk_frames, decode_overlap(chunk_frames, overlap_frames))

    def _decode_core(self, latents: Tensor, w: Window) -> Tensor:
        """The audio of window ``w``'s core: decode the window, drop ``added * 1920`` samples each side."""
        audio = self.decode(latents[:, w.win_start : w.win_end])
        upsample = audio.shape[-1] / (w.win_end - w.win_start)
        trim_start = int(round(w.added_start * upsample))
        trim_end = int(round(w.added_end * upsample))
        return audio[:, :, trim_start : audio.shape[-1] - trim_end]

    @torch.no_grad()
    def decode_tiled(
        self,
        latents: Tensor,
        chunk_frames: int = DECODE_CHUNK_FRAMES,
        overlap_frames: int = DECODE_OVERLAP_FRAMES,
    ) -> Tensor:
        """The official tiled decode (module doc): ``[B, T, C]`` -> ``[B, 2, T * 1920]``, item by item."""
        self._check_latents(latents)
        windows = self._decode_layout(latents.shape[1], chunk_frames, overlap_frames)
        items = []
        for b in range(latents.shape[0]):
            item = latents[b : b + 1]
            items.append(torch.cat([self._decode_core(item, w) for w in windows], dim=-1))
        return torch.cat(items, dim=0)

    @torch.no_grad()
    def decode_streaming(
        self,
        latents: Tensor,
        chunk_frames: int = DECODE_CHUNK_FRAMES,
        overlap_frames: int = DECODE_OVERLAP_FRAMES,
        *,
        out: Tensor | None = None,
        out_device: torch.device | str | None = None,
    ) -> Tensor:
        """:meth:`decode_tiled`'s samples written window by window into one preallocated tensor.

        Args:
            latents: ``[B, T, C]``.
            out: optional destination ``[B, 2, T * 1920]`` (any device and float dtype); allocated on
                ``out_device`` (default: the module's device) in the module's dtype when None.

        Returns:
            ``out``, filled. Peak memory: the output plus one window's activations.
        """
        self._check_latents(latents)
        batch, n_frames = latents.shape[:2]
        shape = (batch, self.config.audio_channels, n_frames * self.hop_samples)
        if out is None:
            param = self._param()
            out = torch.empty(shape, dtype=param.dtype, device=out_device or param.device)
        elif tuple(out.shape) != shape:
            raise ConfigError(f"decode_streaming: out has shape {tuple(out.shape)}, expected {shape}")
        windows = self._decode_layout(n_frames, chunk_frames, overlap_frames)
        for b in range(batch):
            pos = 0
            for w in windows:
                core = self._decode_core(latents[b : b + 1], w)
                out[b : b + 1, :, pos : pos + core.shape[-1]] = core.to(out.device, out.dtype)
                pos += core.shape[-1]
                del core
        return out
