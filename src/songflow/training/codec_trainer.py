"""Training the music codec: the vocoder (log-mel -> waveform) and the DC-AE (mel autoencoder).

The official recipes are not released; the ACE-Step report says the DC-AE was trained with MSE
first, then adversarially with the encoder frozen. This module implements that in **plain torch loops**
(no Lightning: two optimisers with alternating GAN steps are simpler to read as a loop).

* :func:`train_vocoder` — mel -> waveform, HiFi-GAN style: ``λ_mel·mel L1 + λ_stft·MR-STFT`` from step 0,
  plus ``λ_adv·adversarial + λ_fm·feature matching`` against multi-period + multi-resolution
  discriminators from ``gan_start_step`` on (a reconstruction-only warm-up).
* :func:`train_dcae` — phase 1 (steps ``< phase2_start_step``): reconstruction (MSE) of the *normalised*
  log-mel (``CodecConstants.normalize_mel``, the DC-AE's input space) through encoder and decoder.
  Phase 2: the encoder is frozen (no gradients, never stepped, so the latent space the DiT was trained on
  stays fixed) and the decoder trains on ``MSE + λ_adv·adversarial + λ_fm·feature matching`` against a
  PatchGAN on mel images.

Data (``data`` field): ``"synthetic"`` (sines + noise, for smoke runs), a folder of audio files (searched
recursively), or a ``datasets.save_to_disk`` folder in the official format (column ``filename``; relative
paths resolve against the dataset folder). Files are resampled to the model's rate, random crops are cut
per step from a generator seeded by ``(seed, step)`` so a resumed run sees the same crops.

Outputs in ``out_dir``: the model in the official component layout (``music_vocoder/`` or
``music_dcae_f8c8/``, via :func:`songflow.checkpoint.acestep_v1.save_component`;
:func:`songflow.checkpoint.acestep_v1.load_codec` reads
them), ``trainer_state.pt`` (models, discriminators, optimisers, step; loaded with ``weights_only=True``),
``log.csv`` (one row per logged step, appended on resume) and ``train_config.json``.

:func:`compare_to_griffin_lim` measures a codec against the Griffin-Lim baseline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from songflow.audio.mel import LogMelSpectrogram
from songflow.errors import ConfigError
from songflow.models.acestep_v1.codec import CodecConstants, MusicCodec
from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig
from songflow.models.acestep_v1.vocoder import ISTFTHead, Vocoder, VocoderConfig
from songflow.training.codec_config import (
    CodecTrainConfig,
    DCAETrainConfig,
    VocoderTrainConfig,
    is_folder,
    load_train_config,
    vocoder_preset,
)
from songflow.training.codec_losses import (
    DEFAULT_STFT_RESOLUTIONS,
    MultiResolutionSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_l1,
    phase_advance_loss,
)
from songflow.training.data import is_saved_dataset, load_saved_dataset
from songflow.training.discriminators import MelPatchDiscriminator, VocoderDiscriminator
from songflow.training.griffin_lim import griffin_lim_from_logmel
from songflow.training.loop import (
    STATE_NAME,
    CsvLog,
    TrainingLoop,
    clip_and_step,
    load_state_file,
    save_state_file,
    single_process,
)

LOG_NAME = "log.csv"
VOCODER_FOLDER = "music_vocoder"
DCAE_FOLDER = "music_dcae_f8c8"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


# ---------------------------------------------------------------------------------------------------------
# data


def synthetic_audio(n_items: int, n_samples: int, sample_rate_hz: int, generator: torch.Generator) -> Tensor:
    """``[n_items, n_samples]`` test audio: 1-3 decaying harmonic tones (60-2000 Hz) plus faint noise."""
    t = torch.arange(n_samples) / sample_rate_hz
    out = torch.zeros(n_items, n_samples)
    for i in range(n_items):
        n_tones = int(torch.randint(1, 4, (1,), generator=generator))
        for _ in range(n_tones):
            f0 = 60.0 * (2000.0 / 60.0) ** float(torch.rand((), generator=generator))
            amp = 0.1 + 0.2 * float(torch.rand((), generator=generator))
            decay = 0.5 + 4 * float(torch.rand((), generator=generator))
            for h in range(1, 4):
                if f0 * h < sample_rate_hz / 2:
                    out[i] += amp / h * torch.sin(2 * math.pi * f0 * h * t + h) * torch.exp(-decay * t)
        out[i] += 0.003 * torch.randn(n_samples, generator=generator)
    return out.clamp(-1, 1)


class AudioCrops:
    """Random crops ``[B, C, n_samples]`` from ``data`` (``"synthetic"``, an audio folder or an HF dataset).

    Files are loaded lazily, resampled to ``sample_rate_hz`` and made stereo; the last ``cache_size`` files
    stay in memory. Items shorter than a crop are zero-padded.
    """

    def __init__(self, data: str, sample_rate_hz: int, split: str = "train", cache_size: int = 64):
        self.data = data
        self.sample_rate_hz = sample_rate_hz
        self.cache_size = cache_size
        self._cache: dict[str, Tensor] = {}
        self.files: list[Path] = [] if data == "synthetic" else self._list_files(Path(data), split)
        if data != "synthetic" and not self.files:
            raise ConfigError(f"no audio files found in {data}")

    @staticmethod
    def _list_files(root: Path, split: str) -> list[Path]:
        if not root.exists():
            raise ConfigError(f"training data {root} does not exist")
        if is_saved_dataset(root):
            ds = load_saved_dataset(root, split)
            if "filename" not in ds.column_names:
                raise ConfigError(f"dataset {root} has no 'filename' column (official format)")
            return [p if p.is_absolute() else root / p for p in map(Path, ds["filename"])]
        return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)

    def _load(self, path: Path) -> Tensor:
        key = str(path)
        if key not in self._cache:
            from songflow.audio.io import load_audio, to_stereo
            from songflow.audio.resample import resample

            wav, rate = load_audio(path)
            wav = resample(to_stereo(wav), rate, self.sample_rate_hz)
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = wav
        return self._cache[key]

    def batch(self, n_items: int, n_samples: int, channels: int, generator: torch.Generator) -> Tensor:
        if self.data == "synthetic":
            return synthetic_audio(n_items * channels, n_samples, self.sample_rate_hz, generator).reshape(
                n_items, channels, n_samples
            )
        out = torch.zeros(n_items, channels, n_samples)
        for i in range(n_items):
            wav = self._load(self.files[int(torch.randint(len(self.files), (1,), generator=generator))])
            start = int(torch.randint(max(1, wav.shape[-1] - n_samples + 1), (1,), generator=generator))
            piece = wav[:channels, start : start + n_samples]
            out[i, : piece.shape[0], : piece.shape[1]] = piece
        return out


# ---------------------------------------------------------------------------------------------------------
# the trainers' shared part, on the training skeleton


class _Trainer(TrainingLoop):
    """Shared parts: device, seeding, the state file, the CSV log and :meth:`run` (the skeleton's loop)."""

    component_folder: str
    log_fields: tuple[str, ...] = ()
    cfg: CodecTrainConfig

    def __init__(self, cfg: CodecTrainConfig):
        self.out_dir = self.output_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.info = single_process(cfg.device)
        self.device = self.info.device
        self.step = 0
        self.settings = cfg.loop_settings()
        self.log = CsvLog(self.out_dir / LOG_NAME, ["step", "sec_per_step", *self.log_fields])
        self._exported: Path | None = None
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

    # subclasses fill these
    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def sample_batch(self, step: int) -> Tensor:
        raise NotImplementedError

    def train_step(self, wav: Tensor) -> dict[str, float]:
        raise NotImplementedError

    def export(self) -> Path:
        raise NotImplementedError

    def _schedulers_step(self) -> None:
        for opt in self.optimizers().values():
            for group in opt.param_groups:
                group["lr"] *= self.cfg.lr_decay_per_step

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_NAME

    def save_state(self) -> Path:
        state = {
            "step": self.step,
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
        }
        return save_state_file(self.state_path, state)

    def load_state(self) -> bool:
        """Restore from ``trainer_state.pt`` in ``out_dir``; False when there is none."""
        if not self.state_path.is_file():
            return False
        state = load_state_file(self.state_path, self.device)
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        self.step = int(state["step"])
        return True

    # the skeleton's hooks
    def run_step(self, step: int) -> dict[str, Any]:
        losses = self.train_step(self.sample_batch(step))
        self._schedulers_step()
        return losses

    def save_checkpoint(self, done: int) -> None:
        self.save_state()
        self._exported = self.export()

    def run(self) -> Path:
        """Train to ``cfg.steps`` (resuming when allowed); save state and component; return its folder."""
        self.cfg.to_file(self.out_dir / "train_config.json")
        if self.cfg.resume:
            self.load_state()
        if self.run_steps(self.step) == 0:  # nothing left to train: still save what there is
            self.save_checkpoint(self.step)
        assert self._exported is not None
        return self._exported


# ---------------------------------------------------------------------------------------------------------
# vocoder


class VocoderTrainer(_Trainer):
    """Vocoder + :class:`VocoderDiscriminator` with AdamW each; one :meth:`train_step` per batch."""

    component_folder = VOCODER_FOLDER
    cfg: VocoderTrainConfig
    log_fields = (
        "loss",
        "mel_l1",
        "stft_sc",
        "stft_mag",
        "loss_adv",
        "loss_fm",
        "loss_disc",
        "grad_norm",
        "consistency",
        "log_magnitude",
        "phase_advance",
    )

    def __init__(self, cfg: VocoderTrainConfig):
        super().__init__(cfg)
        self.cfg = cfg
        if is_folder(cfg.model):
            from songflow.checkpoint.acestep_v1 import load_vocoder

            vocoder = load_vocoder(cfg.model, device=self.device)
        else:
            vocoder = Vocoder(cfg.vocoder_config())
            if cfg.init_gain is not None:
                with torch.no_grad():
                    for name, param in vocoder.head.named_parameters():
                        if name.endswith("weight_g"):
                            param.fill_(cfg.init_gain)
        vocoder.unfold_weight_norm()
        self.vocoder = vocoder.to(self.device).train().requires_grad_(True)
        self.vocoder.mel_transform.requires_grad_(False)
        self.disc = VocoderDiscriminator(
            cfg.mpd_periods, cfg.mpd_channels, cfg.stft_resolutions, cfg.mrd_channels
        )
        self.disc.to(self.device).train()
        self.stft_loss = MultiResolutionSTFTLoss(cfg.stft_resolutions).to(self.device)
        self.opt_g = torch.optim.AdamW(self.vocoder.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr_disc, betas=cfg.betas)
        self.data = AudioCrops(cfg.data, self.vocoder.config.sampling_rate, cfg.dataset_split)

    def modules(self) -> dict[str, nn.Module]:
        return {"vocoder": self.vocoder, "discriminator": self.disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vocoder": self.opt_g, "discriminator": self.opt_d}

    def sample_batch(self, step: int) -> Tensor:
        """``[B, crop_frames·hop]`` mono crops (both stereo channels are items)."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        n = self.cfg.crop_frames * self.vocoder.config.hop_length
        n_files = max(1, self.cfg.batch_size // 2)
        wav = self.data.batch(n_files, n, 2, gen).reshape(-1, n)[: self.cfg.batch_size]
        return wav.to(self.device)

    def train_step(self, wav: Tensor) -> dict[str, float]:
        """One generator (+ discriminator once ``step >= gan_start_step``) update on ``wav`` ``[B, T]``."""
        cfg = self.cfg
        use_gan = self.step >= cfg.gan_start_step
        mel_fn = cast(LogMelSpectrogram, self.vocoder.mel_transform)
        with torch.no_grad():
            mel = mel_fn(wav)  # (B, M, F)
        spectral: dict[str, Tensor] = {}  # istft head: terms on the spectrum it synthesises
        spectral_terms = (
            cfg.lambda_consistency > 0 or cfg.lambda_log_magnitude > 0 or cfg.lambda_phase_advance > 0
        )
        if self.vocoder.config.head_type == "istft" and spectral_terms:
            head = cast(ISTFTHead, self.vocoder.head)
            spec = head.spectrum(self.vocoder.backbone(mel), mel)
            raw = head.synthesize(spec)[:, 0]
            if cfg.lambda_log_magnitude > 0 or cfg.lambda_phase_advance > 0:
                target = mel_fn.stft(wav)[..., : spec.shape[-1]]  # the head synthesises on this framing
            if cfg.lambda_consistency > 0:
                reanalysed = mel_fn.stft(raw)
                spectral["consistency"] = (reanalysed - spec).abs().mean() / spec.abs().mean().clamp_min(1e-8)
            if cfg.lambda_log_magnitude > 0:
                floor = 1e-5
                spectral["log_magnitude"] = mel_l1(
                    spec.abs().clamp_min(floor).log(), target.abs().clamp_min(floor).log()
                )
            if cfg.lambda_phase_advance > 0:
                spectral["phase_advance"] = phase_advance_loss(spec, target)
            fake = raw.clamp(-1.0, 1.0)
        else:
            fake = self.vocoder(mel)[:, 0]  # (B, F·hop)
        wav = wav[..., : fake.shape[-1]]
        out: dict[str, float] = {}
        # 1. discriminator
        if use_gan:
            loss_d = discriminator_loss(self.disc(wav), self.disc(fake.detach()), cfg.adv_loss)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            clip_and_step(self.opt_d, self.disc.parameters(), cfg.grad_clip)
            out["loss_disc"] = float(loss_d.detach())
        # 2. generator
        loss_mel = mel_l1(mel_fn(fake), mel)
        sc, mag = self.stft_loss(fake, wav)
        loss = cfg.lambda_mel * loss_mel + cfg.lambda_stft * (sc + mag)
        for name, term in spectral.items():
            loss = loss + getattr(cfg, f"lambda_{name}") * term
            out[name] = float(term.detach())
        if use_gan:
            real_out = self.disc(wav)
            fake_out = self.disc(fake)
            adv = generator_adversarial_loss(fake_out, cfg.adv_loss)
            fm = feature_matching_loss(real_out, fake_out)
            loss = loss + cfg.lambda_adv * adv + cfg.lambda_fm * fm
            out.update(loss_adv=float(adv.detach()), loss_fm=float(fm.detach()))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.disc.zero_grad(set_to_none=True)  # generator pass left grads on D; not used
        out["grad_norm"] = clip_and_step(self.opt_g, self.vocoder.parameters(), cfg.grad_clip)
        out.update(
            loss=float(loss.detach()),
            mel_l1=float(loss_mel.detach()),
            stft_sc=float(sc.detach()),
            stft_mag=float(mag.detach()),
        )
        return out

    def export(self) -> Path:
        from songflow.checkpoint.acestep_v1 import save_component

        return save_component(self.vocoder, self.vocoder.config, self.out_dir / VOCODER_FOLDER)


def train_vocoder(cfg: VocoderTrainConfig | Mapping[str, Any]) -> Path:
    """Train (or resume) a vocoder; returns the ``out_dir/music_vocoder`` folder (official layout)."""
    if not isinstance(cfg, VocoderTrainConfig):
        cfg = VocoderTrainConfig.from_dict(dict(cfg), source="vocoder train config")
    return VocoderTrainer(cfg).run()


# ---------------------------------------------------------------------------------------------------------
# DC-AE


class DCAETrainer(_Trainer):
    """DC-AE with separate encoder/decoder optimisers and a :class:`MelPatchDiscriminator`."""

    component_folder = DCAE_FOLDER
    cfg: DCAETrainConfig
    log_fields = (
        "phase",
        "loss",
        "recon_mse",
        "loss_adv",
        "loss_fm",
        "loss_disc",
        "grad_norm",
        "latent_mean",
        "latent_std",
    )

    def __init__(self, cfg: DCAETrainConfig):
        super().__init__(cfg)
        self.cfg = cfg
        if is_folder(cfg.model):
            from songflow.checkpoint.acestep_v1 import load_dcae

            dcae = load_dcae(cfg.model, device=self.device)
        else:
            dcae = DCAE(cfg.dcae_config())
        self.dcae = dcae.to(self.device).train().requires_grad_(True)
        self.dcae_config: DCAEConfig = dcae.config
        mel_cfg = VocoderConfig.from_json(Path(cfg.mel) / "config.json") if is_folder(cfg.mel) else None
        mel_cfg = mel_cfg or vocoder_preset(cfg.mel)
        self.mel_transform = Vocoder(mel_cfg).mel_transform.to(self.device)
        self.hop = mel_cfg.hop_length
        self.constants = CodecConstants()
        self.disc = MelPatchDiscriminator(self.dcae_config.in_channels, cfg.disc_channels, cfg.disc_layers)
        self.disc.to(self.device).train()
        self.opt_enc = torch.optim.AdamW(self.dcae.encoder.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_dec = torch.optim.AdamW(self.dcae.decoder.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr_disc, betas=cfg.betas)
        self.data = AudioCrops(cfg.data, mel_cfg.sampling_rate, cfg.dataset_split)

    def modules(self) -> dict[str, nn.Module]:
        return {"dcae": self.dcae, "discriminator": self.disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"encoder": self.opt_enc, "decoder": self.opt_dec, "discriminator": self.opt_d}

    @property
    def in_phase2(self) -> bool:
        return self.step >= self.cfg.phase2_start_step

    def sample_batch(self, step: int) -> Tensor:
        """``[B, C, crop_latent_frames·8·hop]`` crops (C = DC-AE input channels, 2 for stereo)."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        n = self.cfg.crop_latent_frames * self.dcae.spatial_downsample * self.hop
        return self.data.batch(self.cfg.batch_size, n, self.dcae_config.in_channels, gen).to(self.device)

    def normalized_mel(self, wav: Tensor) -> Tensor:
        """``[B, C, T]`` audio -> ``[B, C, M, T/hop]`` normalised log-mel (the DC-AE's input space)."""
        b, c, t = wav.shape
        logmel = self.mel_transform(wav.reshape(b * c, t))
        return self.constants.normalize_mel(logmel.reshape(b, c, *logmel.shape[1:]))

    def train_step(self, wav: Tensor) -> dict[str, float]:
        """Phase 1: MSE through encoder+decoder. Phase 2: frozen encoder, decoder on MSE + GAN."""
        cfg = self.cfg
        with torch.no_grad():
            x = self.normalized_mel(wav)
        out: dict[str, float] = {}
        phase2 = self.in_phase2
        if phase2:
            self.dcae.encoder.eval().requires_grad_(False)
            with torch.no_grad():
                z = self.dcae.encoder(x)
        else:
            z = self.dcae.encoder(x)
        recon = self.dcae.decoder(z)
        if phase2:
            loss_d = discriminator_loss(self.disc(x), self.disc(recon.detach()), cfg.adv_loss)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            clip_and_step(self.opt_d, self.disc.parameters(), cfg.grad_clip)
            out["loss_disc"] = float(loss_d.detach())
        loss_rec = (recon.float() - x.float()).square().mean()
        loss = loss_rec
        if not phase2 and cfg.lambda_latent_moments > 0:
            lat = self.constants.latents_from_code(z.float())
            moments = lat.mean().square() + (lat.std() - 1.0).square()
            loss = loss + cfg.lambda_latent_moments * moments
        if phase2:
            real_out, fake_out = self.disc(x), self.disc(recon)
            adv = generator_adversarial_loss(fake_out, cfg.adv_loss)
            fm = feature_matching_loss(real_out, fake_out)
            loss = loss + cfg.lambda_adv * adv + cfg.lambda_fm * fm
            out.update(loss_adv=float(adv.detach()), loss_fm=float(fm.detach()))
        self.opt_enc.zero_grad(set_to_none=True)
        self.opt_dec.zero_grad(set_to_none=True)
        loss.backward()
        self.disc.zero_grad(set_to_none=True)
        trainable = [p for p in self.dcae.parameters() if p.requires_grad]
        out["grad_norm"] = clip_and_step(self.opt_dec, trainable, cfg.grad_clip)
        if not phase2:
            self.opt_enc.step()
        latents = self.constants.latents_from_code(z.detach().float())
        out.update(
            loss=float(loss.detach()),
            recon_mse=float(loss_rec.detach()),
            phase=2.0 if phase2 else 1.0,
            latent_mean=float(latents.mean()),
            latent_std=float(latents.std()),
        )
        return out

    def export(self) -> Path:
        from songflow.checkpoint.acestep_v1 import save_component

        return save_component(self.dcae, self.dcae_config, self.out_dir / DCAE_FOLDER)


def train_dcae(cfg: DCAETrainConfig | Mapping[str, Any]) -> Path:
    """Train (or resume) the DC-AE; returns the ``out_dir/music_dcae_f8c8`` folder (official layout)."""
    if not isinstance(cfg, DCAETrainConfig):
        cfg = DCAETrainConfig.from_dict(dict(cfg), source="DC-AE train config")
    return DCAETrainer(cfg).run()


# ---------------------------------------------------------------------------------------------------------
# benchmark


@torch.no_grad()
def compare_to_griffin_lim(
    codec: MusicCodec, wavs: Tensor, n_iter: int = 64, stft_resolutions=DEFAULT_STFT_RESOLUTIONS
) -> dict[str, dict[str, float]]:
    """Codec round trip vs Griffin-Lim from the *true* log-mel, on ``wavs`` ``[B, 2, T]`` at the codec rate.

    The codec path is ``encode -> decode`` (DC-AE + vocoder); the baseline inverts the input's own log-mel
    (pseudo-inverse filterbank + ``n_iter`` fast Griffin-Lim iterations), so it has no autoencoder loss at
    all. Both outputs are compared with the input over the common length. Returns
    ``{"codec": {...}, "griffin_lim": {...}}`` with ``mrstft`` (spectral convergence + log magnitude), and
    ``mel_l1`` (natural-log mel L1 against the input's mel); lower is better.
    """
    mel_fn = codec.vocoder.mel_transform
    stft = MultiResolutionSTFTLoss(stft_resolutions).to(wavs.device)
    rate = codec.geometry.sample_rate_hz
    b, c, t = wavs.shape
    mono = wavs.float().reshape(b * c, t)
    logmel = mel_fn(mono)
    decoded = codec.decode(codec.encode(wavs, rate)).reshape(b * c, -1).to(wavs.device)
    gl = griffin_lim_from_logmel(logmel, mel_fn, n_iter=n_iter)

    def score(y: Tensor) -> dict[str, float]:
        n = min(y.shape[-1], mono.shape[-1]) // codec.geometry.hop_samples * codec.geometry.hop_samples
        sc, mag = stft(y[..., :n], mono[..., :n])
        return {"mrstft": float(sc + mag), "mel_l1": float(mel_l1(mel_fn(y[..., :n]), mel_fn(mono[..., :n])))}

    return {"codec": score(decoded), "griffin_lim": score(gl)}


__all__ = [
    "AudioCrops",
    "CodecTrainConfig",
    "DCAETrainConfig",
    "DCAETrainer",
    "VocoderTrainConfig",
    "VocoderTrainer",
    "compare_to_griffin_lim",
    "load_train_config",
    "synthetic_audio",
    "train_dcae",
    "train_vocoder",
]
