"""The training skeleton every trainer runs on: DDP setup, the step loop, logging, saving and resuming.

A trainer subclasses :class:`TrainingLoop` and supplies only what is its own: :meth:`~TrainingLoop.run_step`
(the micro-batches, losses and optimiser steps of one step; :func:`accumulate_gradients` and
:func:`clip_and_step` do the generic parts), :meth:`~TrainingLoop.log_row` (the CSV row of a logged step)
and :meth:`~TrainingLoop.save_checkpoint` (its state file and exported weights). The loop owns the rest:

* steps ``start .. max_steps`` with a tqdm bar on the main rank (``progress``);
* a CSV row every ``log_every`` steps and at the last one (:class:`CsvLog`);
* a checkpoint every ``save_every`` steps and at the last one, then pruning of ``checkpoints/step=N``
  folders down to the newest ``keep_last`` (0: the trainer keeps one state file in place, nothing to prune).

Resume is exact when a step's random draws and data are pure functions of its step number (both trainers
seed them so) and the state file holds the models, optimisers and schedulers: a resumed run then repeats
the uninterrupted one. :func:`setup_distributed` starts DDP under ``torchrun`` (``WORLD_SIZE`` > 1).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from songflow.errors import ConfigError

STATE_NAME = "trainer_state.pt"
CHECKPOINTS_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step=(\d+)$")


# ---------------------------------------------------------------------------------------------------------
# processes


@dataclass
class DistInfo:
    rank: int
    world: int
    device: torch.device
    owns_group: bool = False  # this process started the process group (and ends it in shutdown)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Single process, or DDP when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    from songflow.checkpoint.device import resolve_device

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
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev, owns)


def single_process(device: str) -> DistInfo:
    """One process on ``device`` (``auto`` resolves as for inference), whatever the environment says."""
    from songflow.checkpoint.device import resolve_device

    return DistInfo(0, 1, resolve_device(device))


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    """End the process group :func:`setup_distributed` started (a no-op otherwise)."""
    if info.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        info.owns_group = False


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """``module`` itself in one process, else a ``DistributedDataParallel`` around it."""
    if info.world <= 1:
        return module
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=True,
    )


# ---------------------------------------------------------------------------------------------------------
# gradients


def accumulate_gradients(
    model: nn.Module,
    micro_batches: int,
    info: DistInfo,
    loss_terms: Callable[[int], Mapping[str, Tensor]],
    keys: Iterable[str],
) -> dict[str, float]:
    """Backward ``loss_terms(micro)["loss"] / micro_batches`` for each micro-batch (DDP syncs gradients
    only on the last); returns the mean of each of ``keys`` over micro-batches and ranks."""
    totals = dict.fromkeys(keys, 0.0)
    for micro in range(micro_batches):
        sync = micro == micro_batches - 1 or info.world == 1
        ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]
        with ctx:
            terms = loss_terms(micro)
            (terms["loss"] / micro_batches).backward()
        for k in totals:
            totals[k] += float(terms[k].detach()) / micro_batches
    if info.world > 1:  # the mean over ranks, not this rank's share
        import torch.distributed as dist

        mean = torch.tensor([totals[k] for k in totals], device=info.device)
        dist.all_reduce(mean)
        totals = dict(zip(totals, (mean / info.world).tolist(), strict=True))
    return totals


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the gradients' global norm to ``max_norm``; returns the norm before clipping (NaN when
    ``max_norm <= 0``: no clipping, norm not measured)."""
    if max_norm > 0:
        return float(nn.utils.clip_grad_norm_(list(params), max_norm))
    return float("nan")


def clip_and_step(
    optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], max_norm: float, scheduler: Any = None
) -> float:
    """:func:`clip_gradients`, then one optimiser (and scheduler) step; returns the pre-clip norm."""
    norm = clip_gradients(params, max_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return norm


# ---------------------------------------------------------------------------------------------------------
# state files and checkpoint folders


def save_state_file(path: Path, state: dict[str, Any]) -> Path:
    """``torch.save`` of ``state`` to ``path``, atomically (a crash leaves the previous file)."""
    from songflow.fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """``<output_dir>/checkpoints/step=N`` folders holding a state file, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / STATE_NAME).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def checkpoint_folder(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"step={step}"


def prune_checkpoints(output_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``max(1, keep)`` checkpoint folders; returns the deleted ones."""
    folders = checkpoint_folders(output_dir)
    old = folders[: max(0, len(folders) - max(1, keep))]
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)
    return old


def find_checkpoint(output_dir: Path, resume_from: str) -> Path | None:
    """The folder to resume from: none for ``""``, the newest for ``"last"`` (none yet: None), or the named
    folder (which must hold a state file)."""
    if not resume_from:
        return None
    if resume_from != "last":
        path = Path(resume_from)
        if not (path / STATE_NAME).is_file():
            raise ConfigError(f"resume_from={resume_from!r}: no {STATE_NAME} in that folder")
        return path
    folders = checkpoint_folders(output_dir)
    return folders[-1] if folders else None


# ---------------------------------------------------------------------------------------------------------
# CSV log


class CsvLog:
    """A CSV of logged steps. Strings are written as given, numbers as ``.6g``, missing columns as ``nan``.

    ``resume_step`` set: the file is rewritten at once with its rows up to that step (a resumed run's log
    then matches the uninterrupted run's). None: rows are appended to an existing file, in its columns.
    """

    def __init__(self, path: Path, fields: Iterable[str], resume_step: int | None = None):
        self.path = path
        self.fields = list(fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            return
        rows = []
        if path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Mapping[str, Any]) -> None:
        new = not self.path.exists()
        if not new:  # keep an existing file's columns
            with self.path.open(newline="") as f:
                self.fields = next(csv.reader(f), []) or self.fields
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k, float("nan"))) for k in self.fields})


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:.6g}"


# ---------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class LoopSettings:
    """What the skeleton needs from a trainer's config."""

    max_steps: int
    log_every: int = 1
    save_every: int = 1000
    keep_last: int = 0  # checkpoint folders kept; 0: the trainer saves in place, nothing is pruned
    progress: bool = False
    progress_desc: str = "train"


@dataclass
class StepTiming:
    seconds: float  # this step
    mean_seconds: float  # per step, over the steps since the previous logged row


class TrainingLoop:
    """Base of every trainer; see the module doc. ``step`` is the number of the step being run (during
    :meth:`run_step`) or of completed steps (outside it)."""

    settings: LoopSettings
    info: DistInfo
    output_dir: Path
    log: CsvLog | None = None
    step: int = 0

    def run_step(self, step: int) -> dict[str, Any]:
        """One optimiser step (all its micro-batches); returns its metrics."""
        raise NotImplementedError

    def log_row(self, done: int, metrics: dict[str, Any], timing: StepTiming) -> dict[str, Any]:
        """The CSV row after ``done`` steps (default: step, sec_per_step and the metrics)."""
        return {"step": done, "sec_per_step": timing.mean_seconds, **metrics}

    def progress_postfix(self, metrics: dict[str, Any], timing: StepTiming) -> dict[str, str]:
        loss = metrics.get("loss")
        return {} if loss is None else {"loss": f"{float(loss):.4f}"}

    def save_checkpoint(self, done: int) -> None:
        """Write the resumable state (and weights) after ``done`` steps; main rank only."""
        raise NotImplementedError

    def after_save(self, done: int) -> None:
        """Runs on the main rank after every save and prune (e.g. sample renders)."""

    def run_steps(self, start: int) -> int:
        """Run steps ``start .. max_steps``; returns how many ran."""
        s = self.settings
        main = self.info.main
        bar = None
        if main and s.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=s.max_steps, initial=start, desc=s.progress_desc, unit="step", dynamic_ncols=True
            )
        since_log, t_since_log = 0, 0.0
        for step in range(start, s.max_steps):
            self.step = step
            t0 = time.perf_counter()
            metrics = self.run_step(step)
            dt = max(time.perf_counter() - t0, 1e-9)
            done = self.step = step + 1
            since_log, t_since_log = since_log + 1, t_since_log + dt
            last = done == s.max_steps
            if main and self.log is not None and (done % max(1, s.log_every) == 0 or last):
                self.log.write(self.log_row(done, metrics, StepTiming(dt, t_since_log / since_log)))
                since_log, t_since_log = 0, 0.0
            if bar is not None:
                bar.set_postfix(**self.progress_postfix(metrics, StepTiming(dt, dt)))
                bar.update(1)
            if main and (done % max(1, s.save_every) == 0 or last):
                self.save_checkpoint(done)
                if s.keep_last > 0:
                    prune_checkpoints(self.output_dir, s.keep_last)
                self.after_save(done)
        if bar is not None:
            bar.close()
        return max(0, s.max_steps - start)
