"""Codec trainer configs: ``VocoderTrainConfig`` and ``DCAETrainConfig``, loaded like the DiT's.

Both are frozen dataclasses on :class:`~songflow.training.config.ConfigBase`, so YAML/JSON files and
``--set key=value`` overrides go through the same code as :class:`~songflow.training.config.TrainConfig`;
:class:`CodecTrainConfig` holds the fields they share, and :meth:`CodecTrainConfig.loop_settings` maps them
onto the training skeleton (:mod:`songflow.training.loop`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from songflow.errors import ConfigError
from songflow.models.acestep_v1.dcae import DCAEConfig
from songflow.models.acestep_v1.vocoder import VocoderConfig
from songflow.training.codec_losses import DEFAULT_STFT_RESOLUTIONS
from songflow.training.config import ConfigBase, apply_overrides
from songflow.training.discriminators import DEFAULT_PERIOD_CHANNELS, DEFAULT_PERIODS
from songflow.training.loop import LoopSettings


def vocoder_preset(name: str) -> VocoderConfig:
    from songflow.checkpoint.random_checkpoint import tiny_configs

    presets = {"official": VocoderConfig, "tiny": lambda: tiny_configs()[3], "test": VocoderConfig.tiny}
    if name not in presets:
        raise ConfigError(
            f"unknown vocoder preset {name!r}; valid: {sorted(presets)} or a music_vocoder folder"
        )
    return presets[name]()


def dcae_preset(name: str) -> DCAEConfig:
    presets = {"official": DCAEConfig, "tiny": DCAEConfig.tiny}
    if name not in presets:
        raise ConfigError(
            f"unknown DC-AE preset {name!r}; valid: {sorted(presets)} or a music_dcae_f8c8 folder"
        )
    return presets[name]()


def is_folder(spec: str) -> bool:
    return "/" in spec or Path(spec).is_dir()


@dataclass(frozen=True)
class CodecTrainConfig(ConfigBase):
    """Settings both codec trainers share (the training skeleton's: ``steps``, ``log_every``,
    ``ckpt_every``, ``resume``, ``out_dir``; and the GAN recipe's)."""

    out_dir: str = "runs/codec"
    data: str = "synthetic"
    dataset_split: str = "train"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    lr_disc: float = 2e-4
    betas: tuple[float, float] = (0.8, 0.99)
    lr_decay_per_step: float = 1.0
    grad_clip: float = 100.0
    adv_loss: Literal["lsgan", "hinge"] = "lsgan"
    lambda_adv: float = 1.0
    lambda_fm: float = 2.0
    log_every: int = 10
    ckpt_every: int = 500
    seed: int = 0
    device: str = "auto"
    resume: bool = True

    def _check_common(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.log_every < 1 or self.ckpt_every < 1:
            raise ConfigError("need steps >= 0, batch_size >= 1, log_every >= 1, ckpt_every >= 1")
        if self.adv_loss not in ("lsgan", "hinge"):
            raise ConfigError(f"adv_loss must be 'lsgan' or 'hinge', got {self.adv_loss!r}")
        if self.lr <= 0 or self.lr_disc <= 0 or not 0 < self.lr_decay_per_step <= 1:
            raise ConfigError("need lr > 0, lr_disc > 0 and 0 < lr_decay_per_step <= 1")

    def loop_settings(self) -> LoopSettings:
        """The skeleton's settings: one state file in ``out_dir`` (no step folders to prune)."""
        return LoopSettings(
            max_steps=self.steps, log_every=self.log_every, save_every=self.ckpt_every, keep_last=0
        )


@dataclass(frozen=True)
class VocoderTrainConfig(CodecTrainConfig):
    """Vocoder training settings (JSON/YAML; unknown keys are rejected).

    ``model``: ``"tiny"`` (small widths, official 44.1 kHz/hop 512/128-mel geometry), ``"official"`` (the
    released architecture), ``"test"`` (``VocoderConfig.tiny()``, 16 kHz) or a ``music_vocoder`` folder to
    fine-tune; ``model_overrides`` replaces fields of a preset. ``init_gain`` sets every head weight-norm gain
    ``g`` of a fresh model (the default init decays to silence over the upsampling stages). ``crop_frames``
    mel frames (``·hop`` samples) per item; stereo files give one item per channel.
    """

    model: str = "tiny"
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    init_gain: float | None = 1.3
    crop_frames: int = 32
    lambda_mel: float = 15.0
    lambda_stft: float = 1.0
    stft_resolutions: tuple[tuple[int, int, int], ...] = DEFAULT_STFT_RESOLUTIONS
    gan_start_step: int = 2000
    # istft head only: weight of the spectral consistency term ``|STFT(ISTFT(S)) - S| / |S|``; phases that
    # disagree between overlapping frames cancel into a buzz at the frame rate, this term penalises them
    lambda_consistency: float = 0.0
    # istft head only, against the real audio's STFT on the head's framing: weight of the L1 distance of
    # log-magnitudes (the predicted spectrum itself, not only what its overlap-add sounds like) and of
    # :func:`phase_advance_loss` (radians)
    lambda_log_magnitude: float = 0.0
    lambda_phase_advance: float = 0.0
    mpd_periods: tuple[int, ...] = DEFAULT_PERIODS
    mpd_channels: tuple[int, ...] = DEFAULT_PERIOD_CHANNELS
    mrd_channels: int = 32

    def __post_init__(self) -> None:
        self._check_common()
        if self.crop_frames < 1:
            raise ConfigError("crop_frames must be >= 1")

    def vocoder_config(self) -> VocoderConfig:
        if is_folder(self.model):
            return VocoderConfig.from_json(Path(self.model) / "config.json")
        base = vocoder_preset(self.model)
        return dataclasses.replace(base, **dict(self.model_overrides)) if self.model_overrides else base


@dataclass(frozen=True)
class DCAETrainConfig(CodecTrainConfig):
    """DC-AE training settings (JSON/YAML; unknown keys are rejected).

    ``model``: ``"tiny"``/``"official"`` DC-AE preset or a ``music_dcae_f8c8`` folder; ``mel``: the vocoder
    preset or ``music_vocoder`` folder whose mel front end defines the input (only its ``mel_transform`` is
    used). ``crop_latent_frames`` latent frames per item (``·8`` mel frames). Phase 2 (encoder frozen,
    PatchGAN) starts at ``phase2_start_step``.
    """

    model: str = "tiny"
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    mel: str = "tiny"
    crop_latent_frames: int = 8
    lr: float = 1e-4
    lr_disc: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lambda_adv: float = 0.1
    lambda_fm: float = 1.0
    # phase 1: weight of ``mean(latent)^2 + (std(latent) - 1)^2``, which pulls the DiT latents (after
    # the official fixed shift/scale of ``CodecConstants``) towards zero mean and unit variance
    lambda_latent_moments: float = 0.0
    phase2_start_step: int = 100_000
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self) -> None:
        self._check_common()
        if self.crop_latent_frames < 1:
            raise ConfigError("crop_latent_frames must be >= 1")

    def dcae_config(self) -> DCAEConfig:
        if is_folder(self.model):
            return DCAEConfig.from_json(Path(self.model) / "config.json")
        base = dcae_preset(self.model)
        return dataclasses.replace(base, **dict(self.model_overrides)) if self.model_overrides else base


def load_train_config(
    kind: str, path: str | Path | None, overrides: Iterable[str] | Mapping[str, Any] | None = None
) -> CodecTrainConfig:
    """``VocoderTrainConfig``/``DCAETrainConfig`` from a JSON or YAML file (or the defaults when ``path`` is
    None) with ``overrides`` applied: ``--set`` strings or ``{dotted key: value}``, exactly as
    :meth:`TrainConfig.from_file <songflow.training.config.ConfigBase.from_file>` does."""
    classes: dict[str, type[CodecTrainConfig]] = {"vocoder": VocoderTrainConfig, "dcae": DCAETrainConfig}
    if kind not in classes:
        raise ConfigError(f"unknown codec component {kind!r}; valid: {sorted(classes)}")
    cls = classes[kind]
    if path is None:
        return apply_overrides(cls(), overrides or [])
    return cls.from_file(path, overrides)


__all__ = [
    "CodecTrainConfig",
    "DCAETrainConfig",
    "VocoderTrainConfig",
    "is_folder",
    "load_train_config",
    "vocoder_preset",
]
