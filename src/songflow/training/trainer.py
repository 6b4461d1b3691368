"""``train(cfg) -> Path``: the training loop (single CPU / single GPU / DDP under ``torchrun``).

:class:`DiTTrainer` on the shared skeleton (:class:`songflow.training.loop.TrainingLoop`: no Lightning), which
runs the steps, CSV metrics + a tqdm bar (loss, steps/s, clips/s), periodic resumable checkpoints with
pruning; this module adds the flow-matching step (gradient accumulation, clipping, AdamW with the
``optim.lr_schedule``: linear warm-up then linear decay to 0 at ``max_steps``, or the official 1.5 warm-up +
cosine) and an export the engine loads. An ACE-Step 1.5 ``model.checkpoint_dir`` trains a LoRA with
:class:`songflow.training.v15.V15Trainer` (same loop; its own cache, step and PEFT-layout export):

* full fine-tune: ``<output_dir>/final/`` is a checkpoint folder (new ``ace_step_transformer`` + links to the
  base codec, text encoder and vocab), so ``load_checkpoint(<output_dir>/final)`` works;
* LoRA: ``<output_dir>/final_lora/pytorch_lora_weights.safetensors`` + ``adapter_config.json``
  (``songflow.checkpoint.lora.load_lora``).

Resume is exact: every random draw of a step is seeded by its step number and the data order by the
micro-batch count, so ``resume_from`` reproduces the uninterrupted run (same losses, same weights).
DDP: run ``torchrun --nproc_per_node N -m songflow train CONFIG``; each rank takes its share of each
global batch and draws its share of the step's random numbers, so N ranks of batch B train exactly like one
process accumulating N micro-batches of B (tested).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from songflow.errors import ConfigError
from songflow.training.config import OptimConfig, TrainConfig, V15Config
from songflow.training.data import INDEX_NAME, LatentCache, collate, preprocess
from songflow.training.loop import (
    STATE_NAME,
    CsvLog,
    DistInfo,
    LoopSettings,
    StepTiming,
    TrainingLoop,
    accumulate_gradients,
    barrier,
    checkpoint_folder,
    clip_and_step,
    find_checkpoint,
    load_state_file,
    save_state_file,
    setup_distributed,
    shutdown_distributed,
    wrap_ddp,
)
from songflow.training.module import FlowMatchingModule, step_generator

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.csv"
_FIELDS = ["step", "loss", "fm", "repa", "lr", "grad_norm", "steps_per_s", "clips_per_s"]
_LOSS_TERMS = ("loss", "fm", "repa")


class ResumableBatches(torch.utils.data.Sampler):
    """Infinite batch sampler: micro-batch ``m`` of rank ``r`` is a pure function of (seed, m, r).

    Each epoch is a seeded permutation; a global batch (``batch_size × world``) is split across ranks.
    """

    def __init__(
        self, n: int, batch_size: int, *, world: int, rank: int, seed: int, shuffle: bool, start: int
    ):
        self.n, self.bs, self.world, self.rank = n, batch_size, world, rank
        self.seed, self.shuffle, self.start = seed, shuffle, start
        self.per_epoch = max(1, n // (batch_size * world))

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + 7919 * epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        m = self.start
        while True:
            epoch, j = divmod(m, self.per_epoch)
            order = self._order(epoch)
            first = (j * self.world + self.rank) * self.bs
            yield [order[(first + k) % self.n] for k in range(self.bs)]
            m += 1


def lr_lambda(warmup: int, max_steps: int):
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``max_steps``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return f


def cosine_lr_lambda(warmup: int, max_steps: int):
    """The official 1.5 LoRA schedule: ``LinearLR`` from 0.1 to 1 over ``w = min(warmup, max(1,
    max_steps // 10))`` steps, then ``CosineAnnealingWarmRestarts(T_0 = max(1, max_steps - w),
    eta_min = 0.01 lr)`` (a factor of the base lr per step)."""
    w = min(warmup, max(1, max_steps // 10))
    period = max(1, max_steps - w)

    def f(step: int) -> float:
        if step < w:
            return 0.1 + 0.9 * step / w
        k = (step - w) % period
        return 0.01 + 0.99 * (1 + math.cos(math.pi * k / period)) / 2

    return f


def schedule_lambda(optim: OptimConfig):
    """The per-step lr factor of ``optim.lr_schedule`` (``linear``: :func:`lr_lambda`, ``cosine``:
    :func:`cosine_lr_lambda`)."""
    if optim.lr_schedule == "cosine":
        return cosine_lr_lambda(optim.warmup_steps, optim.max_steps)
    return lr_lambda(optim.warmup_steps, optim.max_steps)


def _load_model(cfg: TrainConfig, device: torch.device):
    from songflow.checkpoint.acestep_v1 import load_transformer

    if not cfg.model.checkpoint_dir:
        raise ConfigError("model.checkpoint_dir is required (the base checkpoint folder)")
    folder = Path(cfg.model.checkpoint_dir) / "ace_step_transformer"
    return load_transformer(folder, torch.float32, device, with_projectors=cfg.repa.enabled)


def cache_dir(cfg: TrainConfig) -> Path:
    """``data.cache_dir``, default ``<output_dir>/cache``."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.output_dir) / "cache"


def preprocess_options(cfg: TrainConfig, device: str) -> dict[str, Any]:
    """The ``data.*`` options every family's preprocessing takes."""
    return {
        "min_seconds": cfg.data.min_seconds,
        "max_seconds": cfg.data.max_seconds,
        "shard_size": cfg.data.shard_size,
        "device": device,
        "progress": cfg.progress,
    }


def ensure_cache(
    cfg: TrainConfig, info: DistInfo, build: Callable[[TrainConfig, Path, str], Any] | None = None
) -> Path:
    """The preprocessed cache (:func:`cache_dir`), built on rank 0 when missing by ``build(cfg, cache,
    device) -> report`` (default: the v1 preprocessing of ``data.dataset_path``)."""
    cache = cache_dir(cfg)
    if not (cache / INDEX_NAME).is_file():
        if not cfg.data.dataset_path:
            raise ConfigError(f"no cache at {cache} and data.dataset_path is empty")
        if info.main:
            report = (build or _preprocess_v1)(cfg, cache, str(info.device))
            logger.info("preprocessed: %s", report.to_dict())
        barrier(info)
    return cache


def _preprocess_v1(cfg: TrainConfig, cache: Path, device: str) -> Any:
    ssl_models = cfg.repa.ssl_models if cfg.repa.enabled else ()
    options = preprocess_options(cfg, device)
    data, ckpt = cfg.data.dataset_path, cfg.model.checkpoint_dir
    return preprocess(data, ckpt, cache, ssl_models=ssl_models, **options)


def save_training_state(folder: Path, module: FlowMatchingModule, optimizer, scheduler, step: int) -> None:
    state = {
        "step": step,
        "params": {n: p.detach().cpu() for n, p in module.trainable()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    save_state_file(folder / STATE_NAME, state)


def load_training_state(folder: Path, module: FlowMatchingModule, optimizer, scheduler) -> int:
    state = load_state_file(folder / STATE_NAME)
    params = dict(module.trainable())
    if set(state["params"]) != set(params):
        raise ConfigError(f"{folder}: its trainable parameters do not match this config (full vs LoRA?)")
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def export_weights(cfg: TrainConfig, module: FlowMatchingModule, folder: Path) -> Path:
    """Engine-loadable weights: a LoRA adapter folder, or a checkpoint folder with the new DiT."""
    transformer = module.transformer
    if cfg.lora.enabled:
        from songflow.checkpoint.lora import save_lora

        return save_lora(
            transformer,
            cfg.lora.name,
            folder,
            config={"target_modules": list(cfg.lora.target_modules)},
        )
    from songflow.checkpoint.acestep_v1 import save_component

    save_component(transformer, transformer.config, folder / "ace_step_transformer")
    transformer.lyric_config.to_file(folder / "ace_step_transformer" / "lyric_encoder_config.json")
    base = Path(cfg.model.checkpoint_dir).resolve()
    for name in ("music_dcae_f8c8", "music_vocoder", "umt5-base", "vocab.json"):
        link = folder / name
        if (base / name).exists() and not link.exists():
            link.symlink_to(base / name)
    return folder


class DiTTrainer(TrainingLoop):
    """The flow-matching module, AdamW + warm-up/decay schedule and the resumable batch stream of one run;
    :meth:`run` trains from ``start`` (the resumed step) to ``optim.max_steps``."""

    def __init__(
        self,
        cfg: TrainConfig,
        info: DistInfo,
        on_export: Callable[[Path, int], None] | None = None,
        load_host: Callable[[str | Path, str], Any] | None = None,
    ):
        self.cfg, self.info, self.on_export, self.load_host = cfg, info, on_export, load_host
        self.output_dir = Path(cfg.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if info.main:
            cfg.to_file(self.output_dir / "train_config.json")
        self.dataset, self.module = self.build()
        self.params = [p for _, p in self.module.trainable()]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule_lambda(o))
        self.settings = LoopSettings(
            max_steps=o.max_steps,
            log_every=cfg.log_every,
            save_every=cfg.save_every,
            keep_last=cfg.keep_last,
            progress=cfg.progress,
        )
        self.weights_name = "lora" if cfg.lora.enabled else "weights"

    def build(self) -> tuple[Any, Any]:
        """The cached dataset and the training module of this family (v1 here)."""
        cfg, info = self.cfg, self.info
        n_ssl = len(cfg.repa.ssl_models) if cfg.repa.enabled else 0
        dataset = LatentCache(ensure_cache(cfg, info), n_ssl=n_ssl)
        return dataset, FlowMatchingModule(_load_model(cfg, info.device), cfg)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items)

    def export(self, folder: Path) -> Path:
        """The engine-loadable weights of the current module (:func:`export_weights`)."""
        return export_weights(self.cfg, self.module, folder)

    def resume(self) -> int:
        """Load ``resume_from`` (if any); returns the step to start at."""
        ckpt = find_checkpoint(self.output_dir, self.cfg.resume_from)
        if ckpt is None:
            return 0
        start = load_training_state(ckpt, self.module, self.optimizer, self.scheduler)
        logger.info("resumed from %s at step %d", ckpt, start)
        return start

    def _batches(self, start: int) -> Iterator[dict[str, Any]]:
        cfg, info = self.cfg, self.info
        sampler = ResumableBatches(
            len(self.dataset),
            cfg.data.batch_size,
            world=info.world,
            rank=info.rank,
            seed=cfg.seed,
            shuffle=cfg.data.shuffle,
            start=start * cfg.optim.accumulate,
        )
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, collate_fn=self.collate, num_workers=cfg.data.num_workers
        )
        return iter(loader)

    def run(self, start: int) -> Path:
        info = self.info
        self.model = wrap_ddp(self.module, info)
        self.loader = self._batches(start)
        self.log = CsvLog(self.output_dir / "logs" / METRICS_NAME, _FIELDS, start) if info.main else None
        self.run_steps(start)
        final = self.output_dir / ("final_lora" if self.cfg.lora.enabled else "final")
        if info.main:
            self.export(final)
            max_steps, every = self.settings.max_steps, max(1, self.cfg.save_every)
            if self.on_export is not None and max_steps % every:
                self.on_export(final, max_steps)
        barrier(info)
        return final

    def run_step(self, step: int) -> dict[str, Any]:
        cfg, info = self.cfg, self.info

        def loss_terms(micro: int) -> dict[str, torch.Tensor]:
            batch = next(self.loader)
            return self.model(batch, step_generator(cfg.seed, step, micro * info.world + info.rank))

        totals = accumulate_gradients(self.model, cfg.optim.accumulate, info, loss_terms, _LOSS_TERMS)
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = clip_and_step(self.optimizer, self.params, cfg.optim.grad_clip, self.scheduler)
        self.optimizer.zero_grad(set_to_none=True)
        return {**totals, "lr": lr, "grad_norm": grad_norm}

    def _clips_per_s(self, seconds: float) -> float:
        return self.cfg.data.batch_size * self.cfg.optim.accumulate * self.info.world / seconds

    def log_row(self, done: int, metrics: dict[str, Any], timing: StepTiming) -> dict[str, Any]:
        return {
            "step": str(done),
            **{k: f"{metrics[k]:.6g}" for k in (*_LOSS_TERMS, "lr", "grad_norm")},
            "steps_per_s": f"{1 / timing.seconds:.4g}",
            "clips_per_s": f"{self._clips_per_s(timing.seconds):.4g}",
        }

    def progress_postfix(self, metrics: dict[str, Any], timing: StepTiming) -> dict[str, str]:
        return {"loss": f"{metrics['loss']:.4f}", "clips_s": f"{self._clips_per_s(timing.seconds):.2f}"}

    def save_checkpoint(self, done: int) -> None:
        folder = checkpoint_folder(self.output_dir, done)
        save_training_state(folder, self.module, self.optimizer, self.scheduler, done)
        self.export(folder / self.weights_name)

    def after_save(self, done: int) -> None:
        if self.on_export is not None:
            self.on_export(checkpoint_folder(self.output_dir, done) / self.weights_name, done)


def trainer_class(cfg: TrainConfig) -> type[DiTTrainer]:
    """The trainer of ``model.checkpoint_dir``'s family: :class:`songflow.training.v15.V15Trainer` for an
    ACE-Step 1.5 folder (its config checked), else :class:`DiTTrainer`, which refuses a changed ``v15``
    section (those settings would be silently ignored)."""
    from songflow.training.v15 import is_v15_checkpoint

    if cfg.model.checkpoint_dir and is_v15_checkpoint(cfg.model.checkpoint_dir):
        from songflow.training.v15 import V15Trainer, check_v15_config

        check_v15_config(cfg)
        return V15Trainer
    if cfg.v15 != V15Config():
        raise ConfigError(
            f"the v15 section only applies to ACE-Step 1.5 checkpoints, and {cfg.model.checkpoint_dir!r} is "
            "not one; remove the v15 settings (or point model.checkpoint_dir at a 1.5 folder)"
        )
    return DiTTrainer


def train(
    cfg: TrainConfig,
    on_export: Callable[[Path, int], None] | None = None,
    load_host: Callable[[str | Path, str], Any] | None = None,
) -> Path:
    """Run training to ``optim.max_steps``; returns the exported weights folder (see module doc).

    ``on_export(folder, step)`` runs on the main rank after every periodic and final export (the CLI renders
    ``cfg.samples`` with it; the engine lives above this layer). ``load_host(checkpoint, device)``: the
    loaded pipeline whose condition code builds an ACE-Step 1.5 cache (:func:`songflow.training.v15_data.
    preprocess_v15`; v1 does not use it)."""
    trainer_cls = trainer_class(cfg)
    info = setup_distributed(cfg.device)
    try:
        trainer = trainer_cls(cfg, info, on_export, load_host)
        return trainer.run(trainer.resume())
    finally:
        shutdown_distributed(info)
