"""The DiT's lyric encoder (official ``ConformerEncoder``, ``acestep/models/lyrics_utils/lyric_encoder.py``).

With the arguments the official model uses it is a pre-LN Transformer with Transformer-XL relative-position
attention (no convolution module, no macaron FFN)::

    x = LayerNorm(Linear(x)) * sqrt(D)                  embed.out.0 / embed.out.1, "xscale"
    pos = ESPnet relative table, offsets +(L-1) .. -(L-1)
    x = layer_i(x, pos, mask)    for i in 0..num_blocks-1   encoders.{i} (nn.conformer)
    x = LayerNorm(x)                                    after_norm

Padded positions are not zeroed at the output (the DiT masks them in its cross-attention).
ERG-lyric is ``forward(..., query_scale={block: tau})``: it scales that block's ``linear_q`` output.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from songflow.config import JsonConfig, read_json_object
from songflow.errors import ConfigError
from songflow.nn.attention import check_query_scale
from songflow.nn.conformer import RelPositionTransformerLayer
from songflow.nn.embeddings import relative_position_table

# official argument -> the only value implemented here
_FIXED_ARGS: dict[str, Any] = {
    "input_layer": "linear",
    "pos_enc_layer_type": "rel_pos_espnet",
    "normalize_before": True,
    "static_chunk_size": 0,
    "use_dynamic_chunk": False,
    "use_dynamic_left_chunk": False,
    "positionwise_conv_kernel_size": 1,
    "macaron_style": False,
    "selfattention_layer_type": "rel_selfattn",
    "activation_type": "swish",
    "use_cnn_module": False,
    "causal": False,
}


@dataclass(frozen=True)
class LyricEncoderConfig(JsonConfig):
    """Arguments of the official ``ConformerEncoder``; defaults are the released values.

    The released DiT builds ``ConformerEncoder(input_size=lyric_hidden_size, static_chunk_size=0)``, so its
    sizes are not in ``config.json``; :meth:`from_file` reads the ``lyric_encoder_config.json`` extra file of
    test checkpoints. Arguments that select variants not implemented here (conv module, macaron FFN, causal or
    chunked attention, other positional encodings or input layers) must keep their official value, otherwise
    :class:`~songflow.errors.ConfigError` is raised. ``cnn_module_kernel``/``cnn_module_norm`` are accepted
    and unused (they only matter with ``use_cnn_module``).
    """

    input_size: int = 1024
    output_size: int = 1024
    attention_heads: int = 16
    linear_units: int = 4096
    num_blocks: int = 6
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    input_layer: str = "linear"
    pos_enc_layer_type: str = "rel_pos_espnet"
    normalize_before: bool = True
    static_chunk_size: int = 0
    use_dynamic_chunk: bool = False
    use_dynamic_left_chunk: bool = False
    positionwise_conv_kernel_size: int = 1
    macaron_style: bool = False
    selfattention_layer_type: str = "rel_selfattn"
    activation_type: str = "swish"
    use_cnn_module: bool = False
    cnn_module_kernel: int = 15
    causal: bool = False
    cnn_module_norm: str = "batch_norm"
    key_bias: bool = True
    gradient_checkpointing: bool = False

    _ARGS_KEY: ClassVar[str] = "conformer_encoder_args"

    def __post_init__(self) -> None:
        for name, value in _FIXED_ARGS.items():
            if getattr(self, name) != value:
                raise ConfigError(
                    f"LyricEncoderConfig.{name}={getattr(self, name)!r} is not supported "
                    f"(only the official value {value!r} is implemented)"
                )
        for name in ("input_size", "output_size", "attention_heads", "linear_units", "num_blocks"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"LyricEncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.output_size % self.attention_heads:
            raise ConfigError(
                f"LyricEncoderConfig: output_size {self.output_size} is not divisible by "
                f"attention_heads {self.attention_heads}"
            )
        if self.output_size % 2:
            raise ConfigError(f"LyricEncoderConfig: output_size must be even, got {self.output_size}")
        for name in ("dropout_rate", "positional_dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ConfigError(f"LyricEncoderConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.output_size // self.attention_heads

    @classmethod
    def official(cls, input_size: int = 1024) -> LyricEncoderConfig:
        """The released encoder (``ConformerEncoder(input_size=..., static_chunk_size=0)``)."""
        return cls(input_size=input_size)

    @classmethod
    def tiny(cls, input_size: int = 32) -> LyricEncoderConfig:
        """A small encoder for tests: width ``input_size``, 4 heads, FFN 2x, 2 blocks."""
        return cls(
            input_size=input_size,
            output_size=input_size,
            attention_heads=4,
            linear_units=2 * input_size,
            num_blocks=2,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> LyricEncoderConfig:
        """Read ``lyric_encoder_config.json``: its ``"conformer_encoder_args"`` (or a flat args object)."""
        data = read_json_object(path, "lyric encoder config")
        args = data.get(cls._ARGS_KEY, data)
        if not isinstance(args, dict):
            raise ConfigError(f"{path}: {cls._ARGS_KEY!r} must be a JSON object")
        return cls.from_dict(args, source=str(path))

    def to_file(self, path: str | Path) -> None:
        """Write ``lyric_encoder_config.json`` as ``{"conformer_encoder_args": {...}}`` (see from_file)."""
        from songflow.fileio import atomic_write_text

        text = json.dumps({self._ARGS_KEY: self.to_dict()}, indent=1, sort_keys=True) + "\n"
        atomic_write_text(Path(path), text)


class LinearInput(nn.Module):
    """Input layer: ``Linear -> LayerNorm(eps 1e-5) -> dropout``, then times ``sqrt(D)`` and dropout.

    Keys ``out.0`` (Linear) and ``out.1`` (LayerNorm) as in the official ``LinearNoSubsampling``.
    """

    def __init__(self, in_dim: int, dim: int, *, dropout: float = 0.1, pos_dropout: float = 0.1):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim, eps=1e-5), nn.Dropout(dropout))
        self.xscale = math.sqrt(dim)
        self.pos_dropout = nn.Dropout(pos_dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, L, in_dim] -> [B, L, dim]``."""
        return self.pos_dropout(self.out(x) * self.xscale)


class LyricEncoder(nn.Module):
    """Relative-position pre-LN Transformer over lyric token embeddings (official ``lyric_encoder``)."""

    def __init__(self, config: LyricEncoderConfig):
        super().__init__()
        self.config = config
        dim = config.output_size
        self.embed = LinearInput(
            config.input_size, dim, dropout=config.dropout_rate, pos_dropout=config.positional_dropout_rate
        )
        self.pos_dropout = nn.Dropout(config.positional_dropout_rate)
        self.encoders = nn.ModuleList(
            RelPositionTransformerLayer(
                dim,
                config.attention_heads,
                config.linear_units,
                dropout=config.dropout_rate,
                attention_dropout=config.attention_dropout_rate,
                key_bias=config.key_bias,
            )
            for _ in range(config.num_blocks)
        )
        self.after_norm = nn.LayerNorm(dim, eps=1e-5)
        self.gradient_checkpointing = config.gradient_checkpointing

    def forward(self, x: Tensor, mask: Tensor, query_scale: dict[int, float] | None = None) -> Tensor:
        """
        Args:
            x: ``[B, L, input_size]`` lyric token embeddings.
            mask: ``[B, L]`` (1/True = real token). Padded keys are ignored; an all-padding row gives finite
                values (its attention contributes zeros).
            query_scale: ``{block_index: tau}`` — ERG-lyric; multiplies that block's ``linear_q`` output.
        Returns:
            ``[B, L, output_size]``.
        """
        scales = check_query_scale(query_scale, len(self.encoders), "lyric encoder block")
        key_mask = mask.bool()
        h = self.embed(x)
        pos = self.pos_dropout(
            relative_position_table(h.shape[1], h.shape[2], device=h.device, dtype=h.dtype)
        )
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.encoders):
            tau = scales.get(i)
            if use_ckpt:
                h = checkpoint(_run_layer, layer, h, pos, key_mask, tau, use_reentrant=False)
            else:
                h = layer(h, pos, key_mask, query_scale=tau)
        return self.after_norm(h)


def _run_layer(layer: nn.Module, h: Tensor, pos: Tensor, key_mask: Tensor, tau: float | None) -> Tensor:
    return layer(h, pos, key_mask, query_scale=tau)
