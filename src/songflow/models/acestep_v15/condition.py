"""The ACE-Step 1.5 condition encoder (``encoder.*`` keys; SPEC §3 "AceStepConditionEncoder").

Inputs: Qwen3 text hidden states ``[B, Lt, text_hidden_dim]`` (+ mask), lyric token *embeddings*
``[B, Ll, text_hidden_dim]`` (+ mask), packed reference latents ``[N, Tr, timbre_hidden_dim]`` with
``refer_order [N]`` (the batch item of each reference).

* ``text_projector``: Linear without bias;
* ``lyric_encoder``: Linear (``embed_tokens``), encoder layers with the lyric padding mask (keys only),
  final ``norm``;
* ``timbre_encoder``: Linear, encoder layers **without** a padding mask, ``norm``, frame 0 of each
  reference (the ``special_token`` parameter exists for key parity but is unused, as in the official
  model), regrouped per batch item (:func:`unpack_per_item`);
* :func:`pack_sequences` moves valid tokens first (stable descending sort of the mask); the order is
  ``pack(pack(lyric, timbre), text)``. Returns ``(enc [B, Ll + max_refs + Lt, H], enc_mask [B, L] bool)``.

The official sub-encoders run ``layers[:num_hidden_layers]``; as the config requires the encoder layer
counts not to exceed ``num_hidden_layers``, that is every layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from songflow.models.acestep_v15.config import AceStep15Config
from songflow.models.acestep_v15.layers import EncoderLayer, RMSNorm, run_encoder_layers


def pack_sequences(h1: Tensor, h2: Tensor, m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate ``h1 [B, L1, D]`` and ``h2 [B, L2, D]`` and move the valid tokens first.

    The order is a stable descending argsort of the concatenated mask (valid tokens keep their order,
    then the padding in its order); the new mask ``[B, L1 + L2]`` (bool) is True on the first
    ``sum(mask)`` positions.
    """
    hidden = torch.cat([h1, h2], dim=1)
    mask = torch.cat([m1.to(torch.int64), m2.to(torch.int64)], dim=1)
    order = mask.argsort(dim=1, descending=True, stable=True)
    packed = torch.gather(hidden, 1, order.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    lengths = mask.sum(dim=1)
    new_mask = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    return packed, new_mask


def unpack_per_item(embs: Tensor, order: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Group packed embeddings ``[N, D]`` by batch item ``order [N]`` -> ``([B, max_count, D], mask [B,
    max_count] int64)``; references of one item keep their packed order. ``B = max(order) + 1`` (or
    ``batch_size`` when larger, for items without references)."""
    order = order.to(torch.int64)
    count = int(order.max().item()) + 1 if order.numel() else 0
    batch = max(count, batch_size or 0)
    counts = torch.bincount(order, minlength=batch)
    max_count = int(counts.max().item()) if counts.numel() else 0
    ranks = torch.zeros_like(order)
    for item in range(count):  # position of each reference among its item's references
        sel = (order == item).nonzero(as_tuple=True)[0]
        ranks[sel] = torch.arange(sel.numel(), device=order.device)
    out = embs.new_zeros(batch, max_count, embs.shape[-1])
    out[order, ranks] = embs
    mask = torch.zeros(batch, max_count, dtype=torch.int64, device=embs.device)
    mask[order, ranks] = 1
    return out, mask


class LyricEncoder(nn.Module):
    """``embed_tokens`` (text_hidden_dim -> H, bias), encoder layers with key padding, ``norm``."""

    def __init__(self, cfg: AceStep15Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Linear(cfg.text_hidden_dim, cfg.hidden_size)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.num_lyric_encoder_hidden_layers))

    def forward(self, lyric_embeds: Tensor, lyric_mask: Tensor) -> Tensor:
        """``lyric_embeds [B, L, text_hidden_dim]``, ``lyric_mask [B, L]`` -> ``[B, L, H]``."""
        h = run_encoder_layers(self.layers, self.embed_tokens(lyric_embeds), self.config, lyric_mask)
        return self.norm(h)


class TimbreEncoder(nn.Module):
    """``embed_tokens`` (timbre_hidden_dim -> H), encoder layers (no padding mask), ``norm``, frame 0."""

    def __init__(self, cfg: AceStep15Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Linear(cfg.timbre_hidden_dim, cfg.hidden_size)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.special_token = nn.Parameter(torch.randn(1, 1, cfg.hidden_size))  # unused (key parity)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.num_timbre_encoder_hidden_layers))

    def forward(
        self, refer_latents: Tensor, refer_order: Tensor, batch_size: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``refer_latents [N, Tr, timbre_hidden_dim]``, ``refer_order [N]`` -> ``(timbre [B, max_refs, H],
        mask [B, max_refs] int64)``."""
        h = run_encoder_layers(self.layers, self.embed_tokens(refer_latents), self.config)
        return unpack_per_item(self.norm(h)[:, 0, :], refer_order, batch_size)


class ConditionEncoder(nn.Module):
    """Text projector + lyric encoder + timbre encoder, packed into one cross-attention sequence."""

    def __init__(self, cfg: AceStep15Config):
        super().__init__()
        self.text_projector = nn.Linear(cfg.text_hidden_dim, cfg.hidden_size, bias=False)
        self.lyric_encoder = LyricEncoder(cfg)
        self.timbre_encoder = TimbreEncoder(cfg)

    def forward(
        self,
        text_states: Tensor,
        text_mask: Tensor,
        lyric_embeds: Tensor,
        lyric_mask: Tensor,
        refer_latents: Tensor,
        refer_order: Tensor,
        trace: dict | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(enc [B, Ll + max_refs + Lt, H], enc_mask [B, L] bool)``; ``trace`` (a dict) receives
        ``text_projected``, ``lyric_encoder_out``, ``timbre_embs``, ``timbre_mask``."""
        text = self.text_projector(text_states)
        lyric = self.lyric_encoder(lyric_embeds, lyric_mask)
        timbre, timbre_mask = self.timbre_encoder(refer_latents, refer_order, batch_size=text.shape[0])
        if trace is not None:
            trace.update(
                text_projected=text, lyric_encoder_out=lyric, timbre_embs=timbre, timbre_mask=timbre_mask
            )
        enc, mask = pack_sequences(lyric, timbre, lyric_mask, timbre_mask)
        return pack_sequences(enc, text, mask, text_mask)
