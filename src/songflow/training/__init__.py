"""Training (LAYER 5'): DiT flow-matching fine-tuning (full or LoRA, optional REPA) and the codec trainers.

Every trainer runs on one skeleton (:mod:`songflow.training.loop`: steps, accumulation, clipping, DDP, CSV
log, save + prune, exact resume) and loads its config through one mechanism (:mod:`songflow.training.config`:
YAML/JSON + ``--set a.b=value``).

Imports models, sampling.schedules and nn.lora; never imported by inference code. Public API (imported
lazily so ``import songflow.training`` stays cheap)::

    from songflow.training import TrainConfig, apply_overrides, train, preprocess
    cfg = TrainConfig.from_file("configs/train/tiny_full.yaml", ["optim.lr=3e-4"])
    weights_folder = train(cfg)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "songflow.training.config",
    "apply_overrides": "songflow.training.config",
    "preprocess": "songflow.training.data",
    "LatentCache": "songflow.training.data",
    "collate": "songflow.training.data",
    "FlowMatchingModule": "songflow.training.module",
    "train": "songflow.training.trainer",
    "ConfigBase": "songflow.training.config",
    "TrainingLoop": "songflow.training.loop",
    "VocoderTrainConfig": "songflow.training.codec_config",
    "DCAETrainConfig": "songflow.training.codec_config",
    "load_train_config": "songflow.training.codec_config",
    "train_vocoder": "songflow.training.codec_trainer",
    "train_dcae": "songflow.training.codec_trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'songflow.training' has no attribute {name!r}")
