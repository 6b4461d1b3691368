"""``train(cfg) -> Path``: the training loop (single CPU / single GPU / DDP under ``torchrun``).

A plain PyTorch loop behind one function (no Lightning): gradient accumulation, clipping, AdamW with
linear warm-up then linear decay to 0 at ``max_steps``, CSV metrics + a tqdm bar (loss, steps/s, clips/s),
periodic resumable checkpoints, and an export the engine loads:

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

import contextlib
import csv
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from songflow.errors import ConfigError
from songflow.training.config import TrainConfig
from songflow.training.data import INDEX_NAME, LatentCache, collate, preprocess
from songflow.training.module import FlowMatchingModule, step_generator

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
METRICS_NAME = "metrics.csv"
_STEP_RE = re.compile(r"^step=(\d+)$")
_FIELDS = ["step", "loss", "fm", "repa", "lr", "grad_norm", "steps_per_s", "clips_per_s"]


@dataclass
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Single process, or DDP when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    from songflow.checkpoint.weights import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, resolve_device(device))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev)


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


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


def find_checkpoint(output_dir: Path, resume_from: str) -> Path | None:
    if not resume_from:
        return None
    if resume_from != "last":
        path = Path(resume_from)
        if not (path / STATE_NAME).is_file():
            raise ConfigError(f"resume_from={resume_from!r}: no {STATE_NAME} in that folder")
        return path
    folders = _checkpoints(output_dir)
    return folders[-1] if folders else None


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / STATE_NAME).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _load_model(cfg: TrainConfig, device: torch.device):
    from songflow.checkpoint.weights import load_transformer

    if not cfg.model.checkpoint_dir:
        raise ConfigError("model.checkpoint_dir is required (the base checkpoint folder)")
    folder = Path(cfg.model.checkpoint_dir) / "ace_step_transformer"
    return load_transformer(folder, torch.float32, device, with_projectors=cfg.repa.enabled)


def _cache_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.output_dir) / "cache"


def ensure_cache(cfg: TrainConfig, info: DistInfo) -> Path:
    """The preprocessed cache, built from ``data.dataset_path`` on rank 0 when missing."""
    cache = _cache_dir(cfg)
    if not (cache / INDEX_NAME).is_file():
        if not cfg.data.dataset_path:
            raise ConfigError(f"no cache at {cache} and data.dataset_path is empty")
        if info.main:
            report = preprocess(
                cfg.data.dataset_path,
                cfg.model.checkpoint_dir,
                cache,
                ssl_models=cfg.repa.ssl_models if cfg.repa.enabled else (),
                min_seconds=cfg.data.min_seconds,
                max_seconds=cfg.data.max_seconds,
                shard_size=cfg.data.shard_size,
                device=str(info.device),
                progress=cfg.progress,
            )
            logger.info("preprocessed: %s", report.to_dict())
        _barrier(info)
    return cache


def save_training_state(folder: Path, module: FlowMatchingModule, optimizer, scheduler, step: int) -> None:
    from songflow.fileio import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "params": {n: p.detach().cpu() for n, p in module.trainable()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    with atomic_path(folder / STATE_NAME) as tmp:
        torch.save(state, tmp)


def load_training_state(folder: Path, module: FlowMatchingModule, optimizer, scheduler) -> int:
    state = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
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
    from songflow.checkpoint.weights import save_component

    save_component(transformer, transformer.config, folder / "ace_step_transformer")
    transformer.lyric_config.to_file(folder / "ace_step_transformer" / "lyric_encoder_config.json")
    base = Path(cfg.model.checkpoint_dir).resolve()
    for name in ("music_dcae_f8c8", "music_vocoder", "umt5-base", "vocab.json"):
        link = folder / name
        if (base / name).exists() and not link.exists():
            link.symlink_to(base / name)
    return folder


class _CsvLog:
    def __init__(self, path: Path, start_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.is_file():  # drop rows past the resume point so the log matches the run
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=_FIELDS).writerow(row)


def _prune(output_dir: Path, keep: int) -> None:
    folders = _checkpoints(output_dir)
    for old in folders[: max(0, len(folders) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)


def train(cfg: TrainConfig, on_export: Callable[[Path, int], None] | None = None) -> Path:
    """Run training to ``optim.max_steps``; returns the exported weights folder (see module doc).

    ``on_export(folder, step)`` runs on the main rank after every periodic and final export (the CLI renders
    ``cfg.samples`` with it; the engine lives above this layer)."""
    info = setup_distributed(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if info.main:
        cfg.to_file(out / "train_config.json")
    dataset = LatentCache(ensure_cache(cfg, info), n_ssl=len(cfg.repa.ssl_models) if cfg.repa.enabled else 0)

    module = FlowMatchingModule(_load_model(cfg, info.device), cfg)
    params = [p for _, p in module.trainable()]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup_steps, o.max_steps))
    start = 0
    ckpt = find_checkpoint(out, cfg.resume_from)
    if ckpt is not None:
        start = load_training_state(ckpt, module, optimizer, scheduler)
        logger.info("resumed from %s at step %d", ckpt, start)

    model: nn.Module = module
    if info.world > 1:
        model = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    sampler = ResumableBatches(
        len(dataset),
        cfg.data.batch_size,
        world=info.world,
        rank=info.rank,
        seed=cfg.seed,
        shuffle=cfg.data.shuffle,
        start=start * o.accumulate,
    )
    loader = iter(
        torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
        )
    )
    log = _CsvLog(out / "logs" / METRICS_NAME, start) if info.main else None
    bar = None
    if info.main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=o.max_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    for step in range(start, o.max_steps):
        t0 = time.perf_counter()
        totals = {"loss": 0.0, "fm": 0.0, "repa": 0.0}
        for micro in range(o.accumulate):
            batch = next(loader)
            sync = micro == o.accumulate - 1 or info.world == 1
            ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]
            with ctx:
                terms = model(batch, step_generator(cfg.seed, step, micro * info.world + info.rank))
                (terms["loss"] / o.accumulate).backward()
            for k in totals:
                totals[k] += float(terms[k].detach()) / o.accumulate
        if info.world > 1:  # log the mean over ranks, not rank 0's share
            import torch.distributed as dist

            mean = torch.tensor([totals[k] for k in totals], device=info.device)
            dist.all_reduce(mean)
            totals = dict(zip(totals, (mean / info.world).tolist(), strict=True))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        dt = max(time.perf_counter() - t0, 1e-9)
        done = step + 1
        if log is not None and (done % max(1, cfg.log_every) == 0 or done == o.max_steps):
            log.write(
                {
                    "step": done,
                    **{k: f"{v:.6g}" for k, v in totals.items()},
                    "lr": f"{lr:.6g}",
                    "grad_norm": f"{grad_norm:.6g}",
                    "steps_per_s": f"{1 / dt:.4g}",
                    "clips_per_s": f"{cfg.data.batch_size * o.accumulate * info.world / dt:.4g}",
                }
            )
        if bar is not None:
            clips = cfg.data.batch_size * o.accumulate * info.world / dt
            bar.set_postfix(loss=f"{totals['loss']:.4f}", clips_s=f"{clips:.2f}")
            bar.update(1)
        if info.main and (done % max(1, cfg.save_every) == 0 or done == o.max_steps):
            folder = out / "checkpoints" / f"step={done}"
            save_training_state(folder, module, optimizer, scheduler, done)
            export_weights(cfg, module, folder / ("lora" if cfg.lora.enabled else "weights"))
            _prune(out, cfg.keep_last)
            if on_export is not None:
                on_export(folder / ("lora" if cfg.lora.enabled else "weights"), done)
    if bar is not None:
        bar.close()
    final = out / ("final_lora" if cfg.lora.enabled else "final")
    if info.main:
        export_weights(cfg, module, final)
        if on_export is not None and o.max_steps % max(1, cfg.save_every):
            on_export(final, o.max_steps)
    _barrier(info)
    return final
