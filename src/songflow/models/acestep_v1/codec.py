"""Music codec: stereo waveform <-> ACE-Step latents ``[B, 8, 16, L]`` (official ``MusicDCAE``).

Output lengths and re-encoding follow the official arithmetic (docs/reference_behaviour.md#r19).

Encode: resample to 44.1 kHz, right-pad to whole latent frames (4096 samples), log-mel per stereo channel
(the vocoder's analysis transform), normalise the mel into [-1, 1], DC-AE encoder, latent shift/scale.
Decode: undo the latent scaling, DC-AE decoder, denormalise, vocoder on both stereo channels, optional
resampling. All the wrapper's magic numbers live in :class:`CodecConstants`.

Long songs: the DC-AE decoder's EfficientViT attention is global over the whole song, so a plain decode
holds the whole song's activations at once (GBs for 4 minutes). :meth:`MusicCodec.decode_chunked` bounds
memory by decoding windows while staying *exact*: it first accumulates each attention layer's global
summary (a ``[d+1, d]`` matrix per head group; sums over positions are additive, so windows can
contribute their own positions), then decodes every window with those summaries injected, which leaves
only the finite receptive field of the convolutions; each window carries enough context on both sides to
cover it, and only its centre is kept. The vocoder is fully convolutional and is windowed the same way. The
result equals the plain decode up to float32 summation order. (The official ``decode_overlap`` instead
decodes 512-frame windows independently, so its output depends on the window layout; we do not copy that.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from songflow.audio.geometry import OFFICIAL_GEOMETRY, LatentGeometry
from songflow.audio.resample import resample
from songflow.errors import ConfigError, SongflowError
from songflow.models.acestep_v1.dcae import DCAE
from songflow.models.acestep_v1.vocoder import ISTFTHead, Vocoder, VocoderConfig

DEFAULT_WINDOW_FRAMES = 256
"""Latent frames decoded per window by :meth:`MusicCodec.decode_chunked` (23.8 s of audio)."""

AUTO_CHUNK_FRAMES = 512
"""``decode(chunked=None)`` switches to the windowed decoder above this many latent frames (47.6 s; the
official pipeline switches to its overlapped decoder above 48 s)."""


class CodecInputError(SongflowError, ValueError):
    """Audio or latents handed to the codec have the wrong shape, dtype, rate or non-finite values."""


@dataclass(frozen=True)
class CodecConstants:
    """Constants hard-coded in the official ``MusicDCAE`` wrapper (not part of any config.json).

    ``latent = (z - latent_shift) * latent_scale`` maps the DC-AE code ``z`` to the DiT's latent space;
    log-mels are mapped from ``[mel_min, mel_max]`` to ``[-1, 1]`` (no clamping) before the DC-AE.
    ``default_source_rate_hz`` is the rate the official encoder assumes when none is given.
    """

    latent_shift: float = -1.9091
    latent_scale: float = 0.1786
    mel_min: float = -11.0
    mel_max: float = 3.0
    default_source_rate_hz: int = 48000

    def normalize_mel(self, logmel: Tensor) -> Tensor:
        """Natural-log mel -> DC-AE input units: ``((m - min)/(max - min) - 0.5)/0.5``."""
        return ((logmel - self.mel_min) / (self.mel_max - self.mel_min) - 0.5) / 0.5

    def denormalize_mel(self, mel_norm: Tensor) -> Tensor:
        """DC-AE output units -> natural-log mel: ``(m·0.5 + 0.5)·(max - min) + min``."""
        return (mel_norm * 0.5 + 0.5) * (self.mel_max - self.mel_min) + self.mel_min

    def latents_from_code(self, z: Tensor) -> Tensor:
        """DC-AE encoder output -> DiT latents."""
        return (z - self.latent_shift) * self.latent_scale

    def code_from_latents(self, latents: Tensor) -> Tensor:
        """DiT latents -> DC-AE decoder input."""
        return latents / self.latent_scale + self.latent_shift


def vocoder_receptive_radius_mel_frames(config: VocoderConfig) -> float:
    """Upper bound on how far (in mel frames, either side) one vocoder output sample looks into its input.

    Sum of the half-widths of every convolution on the path, each in mel frames: the ConvNeXt stem (kernel
    7) and one depthwise conv per block, ``conv_pre``, each transposed conv (at most
    ``kernel/stride`` input steps), the widest ResBlock1 of each stage, ``conv_post`` (the ``istft`` head:
    the synthesis window's half-width instead of the upsampling path; its phase integration runs over the
    whole song, so for it this bounds the frame features, which is where windowed vocoding cuts).
    Released vocoder: 92.6 frames; the gradient measurement in ``tests/test_codec.py`` finds 89.5.
    """
    radius = 3.0 + (config.kernel_sizes[0] // 2) * sum(config.depths)
    if config.head_type == "istft":  # 1x1 conv, then frames whose synthesis windows cover the sample
        return radius + config.n_fft / (2 * config.hop_length)
    radius += config.pre_conv_kernel_size // 2
    samples_per_frame = 1
    for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True):
        radius += kernel / rate / samples_per_frame  # in units of this stage's input steps
        samples_per_frame *= rate
        widest = max(
            sum((k - 1) // 2 * d + (k - 1) // 2 for d in dilations)
            for k, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
        )
        radius += widest / samples_per_frame
    return radius + (config.post_conv_kernel_size // 2) / samples_per_frame


def _windows(n: int, window: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Cut ``range(n)`` into cores of ``window`` steps with ``overlap`` steps of context on both sides.

    Returns ``(context_start, context_stop, core_start, core_stop)`` tuples; cores tile ``range(n)``.
    """
    out = []
    for core_start in range(0, n, window):
        core_stop = min(core_start + window, n)
        out.append((max(0, core_start - overlap), min(n, core_stop + overlap), core_start, core_stop))
    return out


class MusicCodec(nn.Module):
    """Waveform <-> latent codec = log-mel front end + :class:`DCAE` + :class:`Vocoder`.

    Args:
        dcae: the mel autoencoder (``in_channels`` = audio channels, 2 for ACE-Step).
        vocoder: mel -> waveform model; its ``mel_transform`` is the encoder's front end.
        geometry: sample rate, hop and downsampling; must agree with the two networks.
        constants: the wrapper's normalisation constants.
    """

    def __init__(
        self,
        dcae: DCAE,
        vocoder: Vocoder,
        geometry: LatentGeometry = OFFICIAL_GEOMETRY,
        constants: CodecConstants = CodecConstants(),  # noqa: B008 (frozen, immutable)
    ):
        super().__init__()
        self.dcae = dcae
        self.vocoder = vocoder
        self.geometry = geometry
        self.constants = constants
        voc = vocoder.config
        if voc.sampling_rate != geometry.sample_rate_hz or voc.hop_length != geometry.hop_samples:
            raise ConfigError(
                f"vocoder runs at {voc.sampling_rate} Hz with hop {voc.hop_length}, but the latent geometry "
                f"expects {geometry.sample_rate_hz} Hz with hop {geometry.hop_samples}"
            )
        if dcae.spatial_downsample != geometry.downsample:
            raise ConfigError(
                f"DC-AE downsamples by {dcae.spatial_downsample}, "
                f"latent geometry expects {geometry.downsample}"
            )
        if voc.n_mels % dcae.spatial_downsample:
            raise ConfigError(f"{voc.n_mels} mel bands are not divisible by {dcae.spatial_downsample}")

    # ---------------------------------------------------------------------------------------------------
    # shapes and validation

    @property
    def n_audio_channels(self) -> int:
        """Audio channels the codec takes and returns (2: stereo, left and right kept separate)."""
        return self.dcae.config.in_channels

    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(channels, height)`` of one latent frame: ``(8, 16)`` for ACE-Step."""
        return self.dcae.config.latent_channels, self.vocoder.config.n_mels // self.dcae.spatial_downsample

    def latent_frames_for(self, n_samples: int, sample_rate_hz: int) -> int:
        """Whole latent frames in ``n_samples`` at ``sample_rate_hz`` (the official ``latent_lengths``).

        ``floor(n / sr · 44100 / 512 / 8)``; :meth:`encode` itself returns ``ceil`` of that (it pads).
        """
        sample_rate_hz = self._check_rate(sample_rate_hz)
        g = self.geometry
        return int(n_samples / sample_rate_hz * g.sample_rate_hz / g.hop_samples / g.downsample)

    def _param(self) -> Tensor:
        return next(self.dcae.parameters())

    @staticmethod
    def _check_rate(sample_rate_hz: int) -> int:
        try:
            valid = not isinstance(sample_rate_hz, bool) and int(sample_rate_hz) == sample_rate_hz > 0
        except (TypeError, ValueError, OverflowError):
            valid = False
        if not valid:
            raise CodecInputError(f"sample rate must be a positive integer in Hz, got {sample_rate_hz!r}")
        return int(sample_rate_hz)

    def _check_latents(self, latents: Tensor) -> None:
        channels, height = self.latent_shape
        if (
            not isinstance(latents, Tensor)
            or latents.ndim != 4
            or tuple(latents.shape[1:3]) != (channels, height)
        ):
            shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise CodecInputError(f"latents must be [B, {channels}, {height}, L]; got {shape}")
        if latents.shape[0] == 0 or latents.shape[3] == 0:
            raise CodecInputError(
                f"latents must hold at least one item and one frame; got {tuple(latents.shape)}"
            )
        if not latents.is_floating_point():
            raise CodecInputError(f"latents must be floating point, got {latents.dtype}")
        if not torch.isfinite(latents).all():
            raise CodecInputError("latents contain NaN or infinite values (the sampler diverged?)")

    # ---------------------------------------------------------------------------------------------------
    # encode

    @torch.no_grad()
    def encode(self, wav: Tensor, sample_rate_hz: int | None = None) -> Tensor:
        """Encode audio to latents (official ``MusicDCAE.encode``).

        Args:
            wav: ``[B, 2, N]`` float audio in [-1, 1] (stereo; duplicate mono first).
            sample_rate_hz: rate of ``wav``; ``None`` means ``constants.default_source_rate_hz`` (48000), as
                in the official code.
        Returns:
            ``[B, 8, 16, L]`` float32 latents, ``L = ceil(N' / 4096)`` with ``N'`` the length at 44.1 kHz.
            The last frame is partly padding; :meth:`latent_frames_for` gives the official truncated count.
        """
        rate_hz = self._check_rate(
            self.constants.default_source_rate_hz if sample_rate_hz is None else sample_rate_hz
        )
        if not isinstance(wav, Tensor) or wav.ndim != 3 or wav.shape[1] != self.n_audio_channels:
            shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
            raise CodecInputError(
                f"audio must be [B, {self.n_audio_channels}, samples] (duplicate a mono channel); got {shape}"
            )
        if wav.shape[0] == 0 or wav.shape[2] == 0:
            raise CodecInputError(f"audio must hold at least one item and one sample; got {tuple(wav.shape)}")
        if not wav.is_floating_point():
            raise CodecInputError(f"audio must be floating point, got {wav.dtype}")
        if not torch.isfinite(wav).all():
            raise CodecInputError("audio contains NaN or infinite samples")
        param = self._param()
        g = self.geometry
        wav = resample(wav.to(device=param.device, dtype=torch.float32), rate_hz, g.sample_rate_hz)
        n_samples = wav.shape[-1]
        wav = nn.functional.pad(wav, (0, g.padded_samples(n_samples) - n_samples))
        b, c, n_padded = wav.shape
        logmel = self.vocoder.mel_transform(wav.reshape(b * c, n_padded))  # (B·C, M, F)
        mel_norm = self.constants.normalize_mel(logmel.reshape(b, c, *logmel.shape[1:])).to(param.dtype)
        z = torch.cat([self.dcae.encoder(mel_norm[i : i + 1]) for i in range(b)])  # per item, as official
        return self.constants.latents_from_code(z.float())

    # ---------------------------------------------------------------------------------------------------
    # decode

    def _to_rate(self, wav: Tensor, sample_rate_hz: int | None) -> Tensor:
        if sample_rate_hz is None:
            return wav
        return resample(wav, self.geometry.sample_rate_hz, self._check_rate(sample_rate_hz))

    def _vocode(self, logmel: Tensor) -> Tensor:
        """``[2, M, F]`` log-mel of one item -> ``[2, hop·F]`` float32 (both channels as one batch)."""
        return self.vocoder(logmel.to(self._vocoder_dtype()))[:, 0].float()

    def _vocoder_dtype(self) -> torch.dtype:
        return next(self.vocoder.parameters()).dtype

    @torch.no_grad()
    def decode(
        self, latents: Tensor, sample_rate_hz: int | None = None, *, chunked: bool | None = None
    ) -> Tensor:
        """Decode latents to audio (official ``MusicDCAE.decode``, or the exact windowed decoder).

        Args:
            latents: ``[B, 8, 16, L]`` finite latents.
            sample_rate_hz: output rate; ``None`` keeps the vocoder's 44.1 kHz. Other rates use the
                torchaudio-compatible sinc resampler (official: 48000, length ``ceil(4096·L·48000/44100)``).
            chunked: ``True`` uses :meth:`decode_chunked` (bounded memory, same result to float32 rounding),
                ``False`` decodes the whole song at once, ``None`` chooses chunked above
                ``AUTO_CHUNK_FRAMES`` latent frames.
        Returns:
            ``[B, 2, 4096·L]`` float32 at 44.1 kHz, or resampled to ``sample_rate_hz``.
        """
        self._check_latents(latents)
        if sample_rate_hz is not None:
            self._check_rate(sample_rate_hz)
        if chunked is None:
            chunked = latents.shape[-1] > AUTO_CHUNK_FRAMES
        if chunked:
            return self.decode_chunked(latents, sample_rate_hz=sample_rate_hz)
        param = self._param()
        z = self.constants.code_from_latents(latents.to(device=param.device, dtype=param.dtype))
        wavs = []
        for i in range(z.shape[0]):  # one item at a time, as the official wrapper (bounds memory by B)
            logmel = self.constants.denormalize_mel(self.dcae.decoder(z[i : i + 1]))[0]  # (2, M, F)
            wavs.append(self._vocode(logmel))
        return self._to_rate(torch.stack(wavs), sample_rate_hz)

    def dcae_overlap_frames(self) -> int:
        """Context (latent frames per side) that makes windowed DC-AE decoding exact."""
        return math.ceil(self.dcae.decoder.local_receptive_radius_frames()) + 1

    def vocoder_overlap_mel_frames(self) -> int:
        """Context (mel frames per side) that makes windowed vocoding exact."""
        return math.ceil(vocoder_receptive_radius_mel_frames(self.vocoder.config)) + 1

    @torch.no_grad()
    def decode_mel_chunked(self, latents: Tensor, *, window_frames: int, overlap_frames: int) -> Tensor:
        """Log-mel ``[B, 2, M, 8L]`` of ``latents`` ``[B, 8, 16, L]``, decoded in windows (see module doc).

        Pass 1 (once per attention layer ``l``): every window computes its input to layer ``l`` (earlier
        layers using the summaries found so far) and adds the summary of its core frames. Pass 2: every
        window decodes with all summaries injected; its core's mel columns are kept. Exact when
        ``overlap_frames >= dcae_overlap_frames() - 1``. Peak memory ~ one window of ``window_frames +
        2·overlap_frames`` frames; compute ~ (1 + overhead of the layer-prefix passes and the overlaps).
        """
        self._check_latents(latents)
        decoder = self.dcae.decoder
        param = self._param()
        scale = self.dcae.spatial_downsample
        windows = _windows(latents.shape[-1], window_frames, overlap_frames)
        mels = []
        for i in range(latents.shape[0]):
            z = self.constants.code_from_latents(
                latents[i : i + 1].to(device=param.device, dtype=param.dtype)
            )
            if len(windows) == 1:  # nothing to stitch: a plain decode is the same computation
                mels.append(self.constants.denormalize_mel(decoder(z))[0])
                continue
            summaries: list[Tensor] = []
            for layer in range(decoder.n_attention_layers):
                total = None
                for c0, c1, k0, k1 in windows:
                    part = decoder.attention_summary(z[..., c0:c1], layer, summaries, slice(k0 - c0, k1 - c0))
                    total = part if total is None else total + part
                summaries.append(total)
            cores = []
            for c0, c1, k0, k1 in windows:
                mel_norm = decoder(z[..., c0:c1], summaries)
                cores.append(mel_norm[..., (k0 - c0) * scale : (k1 - c0) * scale])
            mels.append(self.constants.denormalize_mel(torch.cat(cores, dim=-1))[0])
        return torch.stack(mels)

    @torch.no_grad()
    def vocode_chunked(self, logmel: Tensor, *, window_mel_frames: int, overlap_mel_frames: int) -> Tensor:
        """Waveform ``[B, 2, hop·F]`` (float32) of log-mel ``[B, 2, M, F]``, vocoded in windows.

        Each window of ``window_mel_frames`` carries ``overlap_mel_frames`` of context per side (clipped at
        the song's ends, where the vocoder's own edge padding then applies exactly as in a full pass); the
        samples of its core are kept. Exact when ``overlap_mel_frames >= vocoder_overlap_mel_frames() - 1``.
        """
        hop = self.geometry.hop_samples
        head = self.vocoder.head
        frame_local = isinstance(head, ISTFTHead)  # its phases integrate over the whole song: cut before
        wavs = []
        for item in logmel:
            cores = []
            for c0, c1, k0, k1 in _windows(item.shape[-1], window_mel_frames, overlap_mel_frames):
                window = item[..., c0:c1].to(self._vocoder_dtype())
                if frame_local:
                    features = head.frame_features(self.vocoder.backbone(window), window)
                    cores.append(features[..., k0 - c0 : k1 - c0])
                else:
                    cores.append(self._vocode(window)[:, (k0 - c0) * hop : (k1 - c0) * hop])
            joined = torch.cat(cores, dim=-1)
            wavs.append(head.render(joined)[:, 0] if frame_local else joined)
        return torch.stack(wavs)

    @torch.no_grad()
    def decode_chunked(
        self,
        latents: Tensor,
        *,
        window_frames: int = DEFAULT_WINDOW_FRAMES,
        overlap_frames: int | None = None,
        vocoder_overlap_mel_frames: int | None = None,
        sample_rate_hz: int | None = None,
    ) -> Tensor:
        """Decode long latents with bounded memory; equals :meth:`decode` up to float32 rounding.

        Args:
            latents: ``[B, 8, 16, L]`` finite latents.
            window_frames: latent frames per window core (the vocoder uses ``8·window_frames`` mel frames).
            overlap_frames: latent context per side for the DC-AE; ``None`` = :meth:`dcae_overlap_frames`
                (19 for the released architecture, from its receptive field). Smaller trades exactness.
            vocoder_overlap_mel_frames: mel context per side for the vocoder; ``None`` =
                :meth:`vocoder_overlap_mel_frames` (94 for the released vocoder).
            sample_rate_hz: output rate as in :meth:`decode`.
        Returns:
            ``[B, 2, 4096·L]`` float32 at 44.1 kHz, or resampled to ``sample_rate_hz``.
        """
        self._check_latents(latents)
        if sample_rate_hz is not None:
            self._check_rate(sample_rate_hz)
        if window_frames < 1 or (overlap_frames is not None and overlap_frames < 0):
            raise CodecInputError(
                f"need window_frames >= 1 and overlap_frames >= 0; got {window_frames}, {overlap_frames}"
            )
        if vocoder_overlap_mel_frames is not None and vocoder_overlap_mel_frames < 0:
            raise CodecInputError(
                f"vocoder_overlap_mel_frames must be >= 0, got {vocoder_overlap_mel_frames}"
            )
        overlap = self.dcae_overlap_frames() if overlap_frames is None else overlap_frames
        voc_overlap = (
            self.vocoder_overlap_mel_frames()
            if vocoder_overlap_mel_frames is None
            else vocoder_overlap_mel_frames
        )
        logmel = self.decode_mel_chunked(latents, window_frames=window_frames, overlap_frames=overlap)
        wav = self.vocode_chunked(
            logmel,
            window_mel_frames=window_frames * self.dcae.spatial_downsample,
            overlap_mel_frames=voc_overlap,
        )
        return self._to_rate(wav, sample_rate_hz)
