"""LoRA training (or, with ``lora.enabled=false``, a full fine-tune of the decoder) of an ACE-Step 1.5 DiT on
songflow's trainer (chosen when ``model.checkpoint_dir`` is a 1.5 folder; see
:func:`songflow.training.trainer.train`).

One step, as the official LoRA trainer / the model's own training forward (docs/acestep_v15.md#training):

* the condition encoder is frozen: its states are cached once (:mod:`songflow.training.v15_data`), only the
  decoder's attention projections carry the adapter (official targets ``q_proj, k_proj, v_proj, o_proj``
  of self- and cross-attention); a full fine-tune trains every decoder weight instead;
* ``t`` from ``v15.timesteps`` (``turbo``: uniform over the 8 turbo timesteps of ``schedule.shift``, the
  official LoRA trainer; ``logit_normal``: the max of two ``sigmoid(N(mu, sigma))`` draws, the model's
  forward), ``x_t = t * noise + (1 - t) * x0``, the decoder called with ``r = t``;
* a share ``p_condition_dropout`` of rows has its encoder states replaced by ``null_condition_emb``;
* loss = MSE of the velocity against ``noise - x0`` over the valid frames
  (:func:`songflow.training.losses.velocity_loss`).

Adapters are written in the official PEFT layout (``PeftModel.save_pretrained`` of the decoder):
``adapter_model.safetensors`` with keys ``base_model.model.layers.N.self_attn.q_proj.lora_A.weight`` and an
``adapter_config.json`` (``peft_type LORA``, ``task_type FEATURE_EXTRACTION``, r, lora_alpha, ...), so a
1.5 request loads them with ``loras=(LoraRef(folder, weight),)``, and so does PEFT. A full fine-tune writes
``<output_dir>/final``: a ``checkpoints/`` root whose DiT folder holds the new weights, the other folders
linked to the base's (:func:`songflow.checkpoint.acestep_v15.save_v15_dit`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from songflow.errors import ConfigError
from songflow.models.acestep_v15.model import AceStep15DiT
from songflow.training.config import TrainConfig
from songflow.training.data import INDEX_NAME
from songflow.training.losses import noisy_latents, velocity_loss
from songflow.training.module import bf16_autocast_enabled, seeded_global_rng
from songflow.training.trainer import DiTTrainer, cache_dir, ensure_cache, preprocess_options

logger = logging.getLogger(__name__)

#: ``acestep/training/configs.py`` ``LoRAConfig.target_modules`` (PEFT suffix matching on the decoder)
V15_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_KEY_PREFIX = "base_model.model."  # PeftModel.save_pretrained of the decoder
P_DROPOUT_LOGIT_NORMAL = 0.15  # the model's training forward (cfg_ratio)


def is_v15_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is (meant to be) an ACE-Step 1.5 folder: a ``vae/`` beside the DiT folders, or a
    DiT folder itself (no v1 checkpoint has either; the full check is ``validate_v15``)."""
    from songflow.checkpoint import acestep_v15 as ck

    root = Path(path).expanduser()
    return (root / ck.VAE_FOLDER).is_dir() or ck.is_dit_folder(root)


def target_modules(cfg: TrainConfig) -> list[str]:
    """``lora.target_modules``; the v1 default list (left unchanged) means the official 1.5 targets."""
    from songflow.checkpoint.lora import OFFICIAL_TARGET_MODULES

    given = list(cfg.lora.target_modules)
    return list(V15_TARGET_MODULES) if given == list(OFFICIAL_TARGET_MODULES) else given


def check_v15_config(cfg: TrainConfig) -> None:
    """What 1.5 training cannot do, refused before anything loads."""
    if cfg.repa.enabled:
        raise ConfigError("repa is a v1 (ACE-Step v1, songflow-tiny) feature; set repa.enabled=false for 1.5")
    if cfg.model.gradient_checkpointing:
        raise ConfigError("model.gradient_checkpointing is not available for 1.5 yet; set it to false")


def resolved_timesteps(cfg: TrainConfig, variant: str) -> tuple[str, float]:
    """``(timestep kind, p_condition_dropout)`` with ``auto`` and None resolved for a ``variant`` DiT."""
    kind = cfg.v15.timesteps
    if kind == "auto":
        kind = "turbo" if variant == "turbo" else "logit_normal"
    p = cfg.v15.p_condition_dropout
    if p is None:
        p = 0.0 if kind == "turbo" else P_DROPOUT_LOGIT_NORMAL
    return kind, float(p)


def sample_v15_timesteps(
    batch: int, generator: torch.Generator, kind: str, *, turbo: Tensor, mu: float, sigma: float
) -> Tensor:
    """``t [B]`` (float32, CPU): uniform over ``turbo`` (the table's values), or the max of two
    ``sigmoid(N(mu, sigma²))`` draws (``logit_normal``, the official ``sample_t_r`` with r = t)."""
    if kind == "turbo":
        return turbo.to(torch.float32)[torch.randint(0, turbo.numel(), (batch,), generator=generator)]
    t = torch.sigmoid(torch.randn(batch, generator=generator) * sigma + mu)
    r = torch.sigmoid(torch.randn(batch, generator=generator) * sigma + mu)
    return torch.maximum(t, r)


def inject_adapter(decoder: nn.Module, cfg: TrainConfig) -> None:
    """``cfg.lora``'s adapter on ``decoder``'s target projections, its parameters the only trainable ones."""
    from songflow.nn import lora as nn_lora

    try:
        nn_lora.inject(
            decoder,
            target_modules(cfg),
            name=cfg.lora.name,
            r=cfg.lora.r,
            alpha=cfg.lora.alpha,
            use_rslora=cfg.lora.use_rslora,
            dropout=cfg.lora.dropout,
        )
    except ValueError as exc:
        raise ConfigError(
            f"lora.target_modules {target_modules(cfg)}: {exc}; the 1.5 decoder's attention "
            f"projections are {list(V15_TARGET_MODULES)}"
        ) from exc
    nn_lora.trainable_parameters(decoder, cfg.lora.name)


class V15Module(nn.Module):
    """An ``AceStep15DiT`` with a LoRA adapter on its decoder (or, without ``lora.enabled``, a trainable
    decoder); :meth:`forward` is one batch's loss terms.

    All random draws of a step (timesteps, noise, condition dropout, LoRA dropout via the forked global
    RNG) come from the step's generator, so a resumed run repeats the uninterrupted one.
    """

    def __init__(self, dit: AceStep15DiT, cfg: TrainConfig):
        super().__init__()
        from songflow.sampling.turbo import snap_turbo_shift, turbo_table

        self.dit, self.cfg = dit, cfg
        config = dit.config
        self.kind, self.p_drop = resolved_timesteps(cfg, config.variant)
        mu, sigma = cfg.v15.timestep_mu, cfg.v15.timestep_sigma
        self.mu = float(config.timestep_mu if mu is None else mu)
        self.sigma = float(config.timestep_sigma if sigma is None else sigma)
        self.turbo = torch.tensor(turbo_table(snap_turbo_shift(cfg.schedule.shift)), dtype=torch.float64)
        dit.requires_grad_(False)
        if cfg.lora.enabled:
            inject_adapter(dit.decoder, cfg)
        else:
            dit.decoder.requires_grad_(True)
        dit.eval()
        dit.decoder.train()  # LoRA dropout on; the decoder has no other dropout
        self._bf16: bool | None = None
        logger.info(
            "1.5 %s: %d trainable parameters, timesteps %s, condition dropout %.2f",
            "LoRA" if cfg.lora.enabled else "decoder fine-tune", sum(p.numel() for _, p in self.trainable()),
            self.kind, self.p_drop,
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.dit.null_condition_emb.device

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.dit.named_parameters() if p.requires_grad]

    def _autocast(self) -> Any:
        import contextlib

        if self._bf16 is None:
            self._bf16 = bf16_autocast_enabled(self.cfg.model.precision, self.device)
        if self._bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """``{"loss", "fm", "repa"}`` of one collated batch (``repa`` is always 0 here)."""
        with seeded_global_rng(generator, self.device):
            return self._loss(batch, generator)

    def _loss(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        from songflow.tasks.acestep_v15.plan import padding_mask

        device, dit = self.device, self.dit
        x0 = batch["target_latents"].to(device)
        b = x0.shape[0]
        t = sample_v15_timesteps(b, generator, self.kind, turbo=self.turbo, mu=self.mu, sigma=self.sigma)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        dropped = (torch.rand(b, generator=generator) < self.p_drop).to(device).view(-1, 1, 1)
        enc = batch["encoder_states"].to(device)
        enc = torch.where(dropped, dit.null_condition_emb.to(enc).expand_as(enc), enc)
        enc_mask = None
        if self.cfg.v15.conditions == "pipeline":  # as inference: padded rows skip their padding
            enc_mask = padding_mask(batch["encoder_mask"].to(device))
        t = t.to(device)
        with self._autocast():
            v = dit.velocity(
                noisy_latents(x0, noise, t), t, batch["context_latents"].to(device), enc, enc_mask=enc_mask
            )
        loss = velocity_loss(v, x0, noise, batch["latent_mask"].to(device))
        return {"loss": loss, "fm": loss.detach(), "repa": torch.zeros((), device=device)}


def save_peft_adapter(decoder: nn.Module, name: str, folder: str | Path, *, targets: list[str]) -> Path:
    """Adapter ``name`` of ``decoder`` as the official trainer's ``save_pretrained`` writes it: ``folder /
    adapter_model.safetensors`` (``base_model.model.<layer>.lora_{A,B}.weight``, float32) and
    ``adapter_config.json``; each file written atomically. Returns the folder."""
    from songflow.checkpoint.lora import lora_config
    from songflow.checkpoint.strict import write_safetensors
    from songflow.fileio import atomic_write_text
    from songflow.nn.lora import adapter_state_dict

    peft = lora_config(decoder, name)
    peft["target_modules"] = list(targets)
    tensors = {
        PEFT_KEY_PREFIX + k: v.to(device="cpu", dtype=torch.float32).contiguous()
        for k, v in adapter_state_dict(decoder, name).items()
    }
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, folder / PEFT_WEIGHT_NAME, {"format": "pt"})
    document = {
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "inference_mode": True,
        "base_model_name_or_path": None,
        **peft,
    }
    atomic_write_text(folder / PEFT_CONFIG_NAME, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return folder


def preprocess_v15_cache(cfg: TrainConfig, cache: Path, device: str, load_host: Any) -> Any:
    """The 1.5 cache of ``data.dataset_path`` (the ``build`` of ``trainer.ensure_cache``)."""
    from songflow.training.v15_data import preprocess_v15

    options = preprocess_options(cfg, device)
    return preprocess_v15(
        cfg.data.dataset_path,
        cfg.model.checkpoint_dir,
        cache,
        load_host=load_host,
        conditions=cfg.v15.conditions,
        **options,
    )


class V15Trainer(DiTTrainer):
    """:class:`~songflow.training.trainer.DiTTrainer` on a 1.5 checkpoint: the 1.5 cache and LoRA module,
    adapters exported in the official PEFT layout (everything else, from the optimiser to resume, is the
    shared trainer's)."""

    def build(self) -> tuple[Any, Any]:
        from songflow.checkpoint.acestep_v15 import load_v15_dit, validate_v15
        from songflow.training.v15_data import V15Cache

        cfg, info = self.cfg, self.info
        layout = validate_v15(cfg.model.checkpoint_dir)
        if self.load_host is None and not (cache_dir(cfg) / INDEX_NAME).is_file():
            raise ConfigError(
                "ACE-Step 1.5 training builds its cache with the 1.5 pipeline: run `songflow train`, or pass "
                "load_host (e.g. lambda root, device: songflow.families.load_pipeline(root, device=device))"
            )

        def build(c: TrainConfig, cache: Path, device: str) -> Any:
            return preprocess_v15_cache(c, cache, device, self.load_host)

        dataset = V15Cache(ensure_cache(cfg, info, build), conditions=cfg.v15.conditions)
        dit = load_v15_dit(layout.dit_dir, dtype=torch.float32, device=info.device)
        self.layout = layout
        return dataset, V15Module(dit, cfg)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from songflow.training.v15_data import collate_v15

        return collate_v15(items)

    def export(self, folder: Path) -> Path:
        from songflow.checkpoint.acestep_v15 import save_v15_dit

        if not self.cfg.lora.enabled:
            return save_v15_dit(self.module.dit, self.layout, folder)
        return save_peft_adapter(
            self.module.dit.decoder, self.cfg.lora.name, folder, targets=target_modules(self.cfg)
        )
