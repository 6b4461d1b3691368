"""One training step of the DiT: full fine-tune or LoRA, optional REPA.

:class:`FlowMatchingModule` owns the transformer (and the LoRA adapter when enabled) and computes the loss of
a collated batch. All randomness of a step (timesteps, noise, condition dropout) comes from a CPU generator
seeded by ``(seed, step, micro-batch, rank)``, so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from songflow.checkpoint import device as device_caps
from songflow.errors import ConfigError
from songflow.models.acestep_v1.transformer import ACEStepTransformer
from songflow.nn import lora as nn_lora
from songflow.sampling.schedules import legacy_train_sigmas
from songflow.training.config import TrainConfig
from songflow.training.losses import (
    ConditionInputs,
    apply_condition_dropout,
    flow_matching_loss,
    noisy_latents,
    repa_loss,
    sample_timesteps,
)


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The CPU generator of one micro-batch: a pure function of (seed, step, micro), where ``micro`` is the
    micro-batch's index in the step's global batch (``accumulation index × world size + rank``), so N ranks
    draw what one process accumulating N micro-batches draws."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 10_007 + micro * 101) % (2**63 - 1))
    return g


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG (CPU, and ``device`` when CUDA) seeded from one draw of
    ``generator``, inside a forked RNG state: modules that draw from the global RNG (dropout) stay a pure
    function of ``generator``, and the caller's global RNG is left untouched."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


logger = logging.getLogger(__name__)


def bf16_autocast_enabled(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` autocasts to bf16 on ``device``: on CUDA, and on a CPU only where it computes
    bf16 natively (AVX512-BF16/AMX); elsewhere bf16 is emulated, many times slower: fp32 and a warning."""
    if precision != "bf16-mixed" or device.type not in ("cuda", "cpu"):
        return False
    if device.type == "cpu" and not device_caps.cpu_has_native_bf16():
        logger.warning(device_caps.cpu_bf16_fallback_message("model.precision bf16-mixed falls back to fp32"))
        return False
    return True


class FlowMatchingModule(nn.Module):
    """Wraps :class:`ACEStepTransformer` for training.

    Args:
        transformer: the DiT (built ``with_projectors=True`` when REPA is on).
        cfg: the training config (``lora``, ``repa``, ``schedule``, ``model`` sections are used).
    """

    grid: Tensor

    def __init__(self, transformer: ACEStepTransformer, cfg: TrainConfig):
        super().__init__()
        self.transformer = transformer
        self.cfg = cfg
        grid = legacy_train_sigmas(cfg.schedule.shift, sigma_max=cfg.schedule.sigma_max)
        self.register_buffer("grid", grid, persistent=False)
        n_blocks = len(transformer.transformer_blocks)
        if cfg.repa.enabled:
            if transformer.projectors is None:
                raise ConfigError("repa.enabled needs a transformer built with_projectors=True")
            if not 0 <= cfg.repa.block < n_blocks:
                raise ConfigError(f"repa.block={cfg.repa.block} out of range: the DiT has {n_blocks} blocks")
            if len(cfg.repa.ssl_models) > len(transformer.projectors):
                raise ConfigError(
                    f"{len(cfg.repa.ssl_models)} SSL models but only {len(transformer.projectors)} projectors"
                )
        transformer.gradient_checkpointing = cfg.model.gradient_checkpointing
        if cfg.lora.enabled:
            nn_lora.inject(
                transformer,
                list(cfg.lora.target_modules),
                name=cfg.lora.name,
                r=cfg.lora.r,
                alpha=cfg.lora.alpha,
                use_rslora=cfg.lora.use_rslora,
                dropout=cfg.lora.dropout,
            )
            nn_lora.trainable_parameters(transformer, cfg.lora.name)
        else:
            transformer.requires_grad_(True)
            if transformer.projectors is not None and not cfg.repa.enabled:
                transformer.projectors.requires_grad_(False)
        transformer.train()
        self._bf16: dict[torch.device, bool] = {}  # bf16_autocast_enabled per device, decided and logged once

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.transformer.named_parameters() if p.requires_grad]

    def _autocast(self, device: torch.device):
        if device not in self._bf16:
            self._bf16[device] = bf16_autocast_enabled(self.cfg.model.precision, device)
        if self._bf16[device]:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """Loss terms of one batch: ``{"loss", "fm", "repa"}`` (``repa`` is 0 when disabled).

        The model's own dropout (the lyric encoder's, active in training as in the official trainer) draws
        from the global RNG; it is seeded from ``generator`` inside a forked RNG state, so the step stays a
        pure function of ``generator`` and the global RNG is left untouched.
        """
        with seeded_global_rng(generator, self.transformer.device):
            return self._loss(batch, generator)

    def _loss(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        model = self.transformer
        device = model.device
        sched = self.cfg.schedule
        x0 = batch["latents"].to(device)
        b = x0.shape[0]
        sigma = sample_timesteps(b, generator, self.grid.cpu(), mean=sched.logit_mean, std=sched.logit_std)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        cond, _ = apply_condition_dropout(
            ConditionInputs(
                batch["text_states"],
                batch["text_mask"],
                batch["speaker_embeds"],
                batch["lyric_ids"],
                batch["lyric_mask"],
            ),
            generator,
            p_text=sched.p_text_dropout,
            p_lyric=sched.p_lyric_dropout,
            p_speaker=sched.p_speaker_dropout,
        )
        sigma = sigma.to(device)
        x_sigma = noisy_latents(x0, noise, sigma)
        latent_mask = batch.get("latent_mask")
        latent_mask = latent_mask.to(device) if latent_mask is not None else None
        use_repa = self.cfg.repa.enabled and bool(batch.get("ssl"))
        with self._autocast(device):
            ctx = model.encode(
                cond.text_states.to(device),
                cond.text_mask.to(device),
                cond.speaker_embeds.to(device),
                cond.lyric_ids.to(device),
                cond.lyric_mask.to(device),
            )
            out = model(
                x_sigma,
                sigma,
                ctx,
                latent_mask=latent_mask,
                return_hidden_at=self.cfg.repa.block if use_repa else None,
            )
        velocity, hidden = out if use_repa else (out, None)
        fm = flow_matching_loss(velocity, x0, noise, sigma, latent_mask)
        repa = torch.zeros((), device=device)
        if use_repa:
            terms = []
            for j, (feats, mask) in enumerate(batch["ssl"][: len(self.cfg.repa.ssl_models)]):
                with self._autocast(device):
                    projected = model.projectors[j](hidden)
                terms.append(repa_loss(projected, feats.to(device), mask.to(device)))
            repa = torch.stack(terms).mean()
        loss = fm + self.cfg.repa.coeff * repa
        return {"loss": loss, "fm": fm.detach(), "repa": repa.detach()}
