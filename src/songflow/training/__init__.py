"""Training (LAYER 5'): DiT flow-matching fine-tuning (full or LoRA, optional REPA).

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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'songflow.training' has no attribute {name!r}")
