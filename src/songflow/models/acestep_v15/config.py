"""``AceStep15Config``: the architecture of the ACE-Step 1.5 DiT checkpoint (``config.json`` of
``acestep-v15-{turbo,base,sft}``).

The fields are the architecture keys of the official ``AceStepConfig`` (SPEC §2); the defaults are the
released 2B model (:meth:`AceStep15Config.full`). ``from_dict`` / ``from_json`` drop the Hugging Face
``PretrainedConfig`` boilerplate (``id2label``, ``top_k``, ``torch_dtype``, ...) and check every field's
type and the consistency of the whole (head split, ``layer_types``, FSQ width); problems raise
:class:`~songflow.errors.ConfigError` naming the source file and the field. Unknown keys that are neither
fields nor boilerplate are logged and ignored (hub configs grow keys over time). ``to_dict`` writes an
official-style dict (``model_type "acestep"``, ``architectures``, ``auto_map`` of the variant, ``is_turbo``).

Encoder width (XL): the later XL checkpoints run the condition encoder, the audio tokenizer/detokenizer
and ``null_condition_emb`` at a narrower width than the DiT (``encoder_hidden_size`` 2048 vs
``hidden_size`` 2560), bridged by ``decoder.condition_embedder``. The optional ``encoder_*`` fields model
that; ``None`` means "same as the decoder" (all released 2B configs). This is read from third-party
ports and an upstream pull request, not verified against an XL checkpoint here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from songflow.config import read_json_object
from songflow.errors import ConfigError

logger = logging.getLogger(__name__)

LAYER_TYPES = ("sliding_attention", "full_attention")
Variant = Literal["turbo", "base", "sft"]

# Hugging Face PretrainedConfig bookkeeping (and training-only / unused keys) accepted and dropped
_HF_KEYS = frozenset(
    """add_cross_attention architectures auto_map bad_words_ids begin_suppress_tokens bos_token_id
    chunk_size_feed_forward cross_attention_hidden_size decoder_start_token_id diversity_penalty do_sample
    dtype early_stopping encoder_no_repeat_ngram_size eos_token_id exponential_decay_length_penalty
    finetuning_task forced_bos_token_id forced_eos_token_id id2label initializer_range is_decoder
    is_encoder_decoder label2id length_penalty max_length min_length model_type no_repeat_ngram_size
    num_beam_groups num_beams num_return_sequences output_attentions output_hidden_states output_scores
    pad_token_id prefix problem_type pruned_heads remove_invalid_values repetition_penalty return_dict
    return_dict_in_generate sep_token_id suppress_tokens task_specific_params temperature tf_legacy_loss
    tie_encoder_decoder tie_word_embeddings tokenizer_class top_k top_p torch_dtype torchscript
    transformers_version typical_p use_bfloat16 use_cache rope_scaling""".split()
)

_AUTO_MAP = {
    "turbo": "modeling_acestep_v15_turbo.AceStepConditionGenerationModel",
    "base": "modeling_acestep_v15_base.AceStepConditionGenerationModel",
    "sft": "modeling_acestep_v15_base.AceStepConditionGenerationModel",
}


def default_layer_types(num_layers: int) -> tuple[str, ...]:
    """The official default: layer i is sliding if (i + 1) is odd (even indices sliding, odd full)."""
    return tuple("sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers))


@dataclass(frozen=True)
class AceStep15Config:
    """Architecture of the 1.5 DiT (decoder, condition encoder, 25 Hz -> 5 Hz tokenizer, detokenizer).

    Widths are channels; ``sliding_window`` is in tokens of the sequence it applies to (DiT patches,
    lyric tokens, ...); ``pool_window_size`` latent frames form one 5 Hz token; ``timbre_fix_frame`` is the
    reference length in latent frames (30 s at 25 Hz).
    """

    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    use_sliding_window: bool = True
    sliding_window: int | None = 128
    layer_types: tuple[str, ...] = field(default=())  # () -> default_layer_types(num_hidden_layers)
    num_lyric_encoder_hidden_layers: int = 8
    audio_acoustic_hidden_dim: int = 64
    pool_window_size: int = 5
    text_hidden_dim: int = 1024
    in_channels: int = 192
    timbre_hidden_dim: int = 64
    num_timbre_encoder_hidden_layers: int = 4
    timbre_fix_frame: int = 750
    patch_size: int = 2
    num_attention_pooler_hidden_layers: int = 2
    num_audio_decoder_hidden_layers: int = 24  # stored by the official config, not read by the model
    fsq_dim: int = 2048
    fsq_input_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    fsq_input_num_quantizers: int = 1
    vocab_size: int = 64003  # unused by the DiT
    data_proportion: float = 0.5  # training only
    timestep_mu: float = -0.4  # training only
    timestep_sigma: float = 1.0  # training only
    model_version: str = "turbo"
    is_turbo: bool | None = None  # None -> from model_version
    is_lego_sft: bool = False
    encoder_hidden_size: int | None = None  # XL: condition-encoder width (None = hidden_size)
    encoder_intermediate_size: int | None = None
    encoder_num_attention_heads: int | None = None
    encoder_num_key_value_heads: int | None = None

    def __post_init__(self) -> None:
        if not self.use_sliding_window and self.sliding_window is not None:
            object.__setattr__(self, "sliding_window", None)  # as the official config does
        if not self.layer_types and isinstance(self.num_hidden_layers, int):
            object.__setattr__(self, "layer_types", default_layer_types(self.num_hidden_layers))
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if isinstance(self.fsq_input_levels, list):
            object.__setattr__(self, "fsq_input_levels", tuple(self.fsq_input_levels))
        _check_types(self)
        _check_consistency(self)

    # ---------------------------------------------------------------- presets
    @classmethod
    def full(cls, **overrides: Any) -> AceStep15Config:
        """The released 2B model (turbo; pass ``model_version="base"``, ``is_turbo=False`` for base)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> AceStep15Config:
        """The shape of the tiny parity fixtures (hidden 64, 4 layers, 8 acoustic channels)."""
        base: dict[str, Any] = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, sliding_window=16, text_hidden_dim=32,
            audio_acoustic_hidden_dim=8, timbre_hidden_dim=8, in_channels=24,
            num_lyric_encoder_hidden_layers=2, num_timbre_encoder_hidden_layers=2,
            num_attention_pooler_hidden_layers=2, num_audio_decoder_hidden_layers=4, fsq_dim=64,
        )  # fmt: skip
        base.update(overrides)
        return cls(**base)

    @classmethod
    def xl(cls, **overrides: Any) -> AceStep15Config:
        """The XL DiT as reported by ports (UNVERIFIED here): decoder 2560 wide, 32 layers, FFN 9728,
        32 heads / 8 kv of head_dim 128 (attention width 4096 != model width), condition encoder,
        tokenizer and detokenizer at the 2B widths (2048, FFN 6144, 16 / 8 heads)."""
        base: dict[str, Any] = dict(
            hidden_size=2560, intermediate_size=9728, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, num_audio_decoder_hidden_layers=32,
            encoder_hidden_size=2048, encoder_intermediate_size=6144, encoder_num_attention_heads=16,
            encoder_num_key_value_heads=8, fsq_dim=2048,
        )  # fmt: skip
        base.update(overrides)
        return cls(**base)

    # ---------------------------------------------------------------- derived values
    @property
    def variant(self) -> Variant:
        """``"turbo"`` | ``"base"`` | ``"sft"``: ``is_turbo`` when given, else ``model_version``."""
        version = self.model_version.lower()
        turbo = self.is_turbo if self.is_turbo is not None else "turbo" in version
        if turbo:
            return "turbo"
        return "sft" if "sft" in version else "base"

    @property
    def condition_width(self) -> int:
        """Width of the encoder states the decoder cross-attends to (``encoder_hidden_size``)."""
        return self.encoder_hidden_size or self.hidden_size

    def encoder_side(self) -> AceStep15Config:
        """The config the condition encoder, tokenizer and detokenizer are built with (the ``encoder_*``
        widths substituted; identical to ``self`` when they are unset)."""
        if (
            self.encoder_hidden_size is None
            and self.encoder_intermediate_size is None
            and (self.encoder_num_attention_heads is None and self.encoder_num_key_value_heads is None)
        ):
            return self
        return dataclasses.replace(
            self,
            hidden_size=self.condition_width,
            intermediate_size=self.encoder_intermediate_size or self.intermediate_size,
            num_attention_heads=self.encoder_num_attention_heads or self.num_attention_heads,
            num_key_value_heads=self.encoder_num_key_value_heads or self.num_key_value_heads,
            encoder_hidden_size=None,
            encoder_intermediate_size=None,
            encoder_num_attention_heads=None,
            encoder_num_key_value_heads=None,
        )

    # ---------------------------------------------------------------- JSON
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> AceStep15Config:
        """Build from an official ``config.json`` dict; boilerplate dropped, problems -> ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", "acestep")
        if model_type != "acestep":
            raise ConfigError(
                f"{source}: model_type is {model_type!r}, expected 'acestep' (ACE-Step 1.5 DiT)"
            )
        if data.get("rope_scaling") is not None:
            raise ConfigError(f"{source}: rope_scaling {data['rope_scaling']!r} is not supported (only None)")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        unknown = sorted(k for k in data if k not in names and k not in _HF_KEYS and not k.startswith("_"))
        if unknown:
            logger.warning("%s: ignoring unknown AceStep15Config key(s) %s", source, unknown)
        if kwargs.get("layer_types") is None:
            kwargs.pop("layer_types", None)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | Path) -> AceStep15Config:
        """Read an official ``config.json`` (see :meth:`from_dict`)."""
        return cls.from_dict(read_json_object(path, "ACE-Step 1.5 DiT config"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """An official-style ``config.json`` dict (``from_dict(to_dict())`` gives this config back)."""
        out: dict[str, Any] = {
            "model_type": "acestep",
            "architectures": ["AceStepConditionGenerationModel"],
            "auto_map": {
                "AutoConfig": "configuration_acestep_v15.AceStepConfig",
                "AutoModel": _AUTO_MAP[self.variant],
            },
            "rope_scaling": None,
            "tie_word_embeddings": True,
            "use_cache": True,
        }
        optional = {"is_lego_sft", "encoder_hidden_size", "encoder_intermediate_size"}
        optional |= {"encoder_num_attention_heads", "encoder_num_key_value_heads"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in optional and not value:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["is_turbo"] = self.variant == "turbo"
        return out

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as ``config.json`` (atomically)."""
        import json

        from songflow.fileio import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# -------------------------------------------------------------------------------------------------------
# validation
# -------------------------------------------------------------------------------------------------------

_OPTIONAL_INTS = {"sliding_window", "encoder_hidden_size", "encoder_intermediate_size"}
_OPTIONAL_INTS |= {"encoder_num_attention_heads", "encoder_num_key_value_heads"}


def _kind(name: str, default: Any) -> str:
    if name in _OPTIONAL_INTS:
        return "int?"
    if name == "is_turbo":
        return "bool?"
    if name in ("layer_types", "fsq_input_levels"):
        return "seq"
    return type(default).__name__


def _type_ok(kind: str, value: Any) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    checks = {
        "int": is_int,
        "int?": value is None or is_int,
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "bool?": value is None or isinstance(value, bool),
        "str": isinstance(value, str),
        "seq": isinstance(value, tuple),
    }
    return checks[kind]


def _check_types(cfg: AceStep15Config) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = _kind(f.name, f.default if f.default is not dataclasses.MISSING else ())
        if not _type_ok(kind, value):
            raise ConfigError(f"field {f.name!r} must be {kind.rstrip('?')}, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 1 for v in cfg.fsq_input_levels):
        raise ConfigError(f"field 'fsq_input_levels' must be integers > 1, got {list(cfg.fsq_input_levels)}")
    for positive in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if getattr(cfg, positive) <= 0:
            raise ConfigError(f"field {positive!r} must be > 0, got {getattr(cfg, positive)}")


def _check_heads(cfg: AceStep15Config, heads: int, kv_heads: int, prefix: str) -> None:
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        raise ConfigError(
            f"field '{prefix}num_attention_heads' ({heads}) must be a positive multiple of "
            f"'{prefix}num_key_value_heads' ({kv_heads})"
        )


def _check_consistency(cfg: AceStep15Config) -> None:
    _check_heads(cfg, cfg.num_attention_heads, cfg.num_key_value_heads, "")
    enc = cfg.encoder_side()
    if enc is not cfg:
        _check_heads(enc, enc.num_attention_heads, enc.num_key_value_heads, "encoder_")
    if cfg.head_dim <= 0 or cfg.head_dim % 2:
        raise ConfigError(f"field 'head_dim' must be a positive even number (RoPE), got {cfg.head_dim}")
    if len(cfg.layer_types) != cfg.num_hidden_layers:
        raise ConfigError(
            f"field 'layer_types' has {len(cfg.layer_types)} entries, expected num_hidden_layers="
            f"{cfg.num_hidden_layers}"
        )
    bad = sorted({str(t) for t in cfg.layer_types if t not in LAYER_TYPES})
    if bad:
        raise ConfigError(f"field 'layer_types': unknown layer type(s) {bad}; valid: {list(LAYER_TYPES)}")
    if cfg.use_sliding_window and (cfg.sliding_window is None or cfg.sliding_window < 0):
        raise ConfigError(
            f"field 'sliding_window' must be >= 0 with use_sliding_window, got {cfg.sliding_window}"
        )
    for name in ("num_lyric_encoder_hidden_layers", "num_timbre_encoder_hidden_layers"):
        n = getattr(cfg, name)
        if not 0 <= n <= cfg.num_hidden_layers:  # encoder layer i reads layer_types[i]
            raise ConfigError(
                f"field {name!r} ({n}) must be within 0..num_hidden_layers ({cfg.num_hidden_layers})"
            )
    if not 0 <= cfg.num_attention_pooler_hidden_layers <= cfg.num_hidden_layers:
        raise ConfigError(
            f"field 'num_attention_pooler_hidden_layers' ({cfg.num_attention_pooler_hidden_layers}) must be "
            f"within 0..num_hidden_layers ({cfg.num_hidden_layers})"
        )
    if cfg.fsq_dim != cfg.condition_width:
        raise ConfigError(
            f"field 'fsq_dim' ({cfg.fsq_dim}) must equal the tokenizer width "
            f"(encoder_hidden_size or hidden_size = {cfg.condition_width})"
        )
    for name in ("patch_size", "pool_window_size", "audio_acoustic_hidden_dim", "text_hidden_dim"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"field {name!r} must be > 0, got {getattr(cfg, name)}")
    if cfg.in_channels <= cfg.audio_acoustic_hidden_dim:
        raise ConfigError(
            f"field 'in_channels' ({cfg.in_channels}) must exceed audio_acoustic_hidden_dim "
            f"({cfg.audio_acoustic_hidden_dim}): the decoder input is [context, x_t]"
        )
