"""LoRA adapter files: load, save and unload adapters on the DiT (:class:`ACEStepTransformer`).

The layer maths (:class:`~songflow.nn.lora.LoRALinear`, merge/unmerge) is in :mod:`songflow.nn.lora`; this
module reads and writes files, with the safetensors helpers of :mod:`songflow.checkpoint.strict` (the
ones base checkpoints use). Safetensors only: pickles are refused with the reason.

File layout (what the official trainer's diffusers ``save_lora_adapter`` writes and what the official
pipeline's ``load_lora_adapter`` reads)::

    <folder>/pytorch_lora_weights.safetensors  <layer>.lora_A.weight [r, in], <layer>.lora_B.weight [out, r]
    <folder>/adapter_config.json               optional: PEFT LoraConfig fields (r, lora_alpha, use_rslora)

e.g. ``transformer_blocks.0.attn.to_q.lora_A.weight``. Also accepted on load: a ``transformer.`` or
``base_model.model.`` key prefix, PEFT's in-model form ``<layer>.lora_A.<adapter>.weight``, a PEFT
``save_pretrained`` folder (``adapter_model.safetensors``), and the ``.safetensors`` file itself (its folder
is searched for ``adapter_config.json``).

**Rank and alpha.** Each layer's rank ``r`` is read from its A tensor. The scale (``alpha/r``, or
``alpha/sqrt(r)`` with rsLoRA) comes from the first source present:

1. ``adapter_config.json`` beside the weights (PEFT fields ``lora_alpha``, ``use_rslora``, ``alpha_pattern``;
   written by :func:`save_lora` and by PEFT's ``save_pretrained``); ``use_config=False`` skips it;
2. per-layer ``<layer>.alpha`` scalar tensors in the file (kohya-style files);
3. otherwise ``alpha = r`` (scale 1).

Why (docs/reference_behaviour.md#r21): the official pipeline calls diffusers
``load_lora_adapter(<file>, adapter_name=..., with_alpha=True, prefix=None)``. In that call path diffusers
(checked on 0.39) reads neither ``adapter_config.json`` nor the safetensors header entry
``lora_adapter_metadata`` (it reads the header only when ``use_safetensors=True`` or ``weight_name`` is
given), and ``with_alpha`` is not a parameter of that method; with no ``.alpha`` keys it builds the
LoraConfig with ``lora_alpha = r``. So a bare official file (e.g. the rap LoRA, trained with alpha 32,
r 256, rsLoRA = scale 2.0) runs at scale 1 in the official pipeline, and here too. A header
``lora_adapter_metadata`` is therefore *not* used for the scale (a log line names the trained scale it
records); the ``alpha=``/``use_rslora=`` arguments of :func:`load_lora` override every source.

:func:`save_lora` writes ``adapter_config.json`` and the header metadata, so our files keep their trained
scale here, in PEFT, and in diffusers when it reads the header (the official pipeline's call applies
scale 1 to any file: train with ``alpha = r`` for identical results there).

**ACE-Step 1.5** adapters go on the DiT decoder (``AceStep15DiT.decoder``), as the official 1.5 trainer
puts them (PEFT ``get_peft_model(model.decoder, LoraConfig(target_modules=[q_proj, k_proj, v_proj,
o_proj]))``: the self- and cross-attention projections of every layer) and saves them (``save_pretrained``
into ``<output>/adapter``: ``adapter_model.safetensors`` with keys
``base_model.model.layers.<i>.self_attn.q_proj.lora_A.weight`` and ``adapter_config.json`` with ``r``,
``lora_alpha``; scale ``lora_alpha / r`` as PEFT, which the official 1.5 loader uses). A folder holding
only such an ``adapter/`` folder is accepted too.

**LyCORIS files** (LoKr, LoHa; the official 1.5 LoKr trainer writes ``lokr_weights.safetensors`` with
LyCORIS ``save_weights``): keys ``lycoris_<layer with . as _>.<factor>`` (e.g.
``lycoris_layers_0_self_attn_q_proj.lokr_w1``; a dotted ``<layer>.<factor>`` is read too), factors
``lokr_w1``/``lokr_w1_a``+``lokr_w1_b`` and ``lokr_w2``/``lokr_w2_a``+``lokr_w2_b`` (LoHa: ``hada_w1_a``,
``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``) and a scalar ``alpha`` per layer. The delta maths and scale are
in :mod:`songflow.nn.lora`: ``alpha / r`` with ``r`` the factored rank (no ``alpha`` tensor: ``alpha = r``),
1 for a LoKr without a factored part, ``/ sqrt(r)`` when the header's ``lokr_config`` says ``rs_lora``.
Entries for layers that are not ``nn.Linear`` (LyCORIS may wrap convolutions too) are skipped when their
delta is zero (an untrained module), refused otherwise; DoRA (``dora_scale``) and Tucker factors are refused.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from songflow.checkpoint.strict import (
    SafetensorsHeader,
    format_problems,
    is_pickle,
    open_safetensors,
    read_header,
    require_safetensors,
    write_safetensors,
)
from songflow.errors import CheckpointError, ConfigError, SongflowError
from songflow.fileio import atomic_write_text
from songflow.nn.lora import (
    LORA_A,
    LYCORIS_KINDS,
    AdapterSpec,
    LoRALinear,
    adapter_names,
    adapter_specs,
    adapter_state_dict,
    add_adapter_at,
    check_adapter_name,
    compact_target_modules,
    find_targets,
    lora_modules,
    lycoris_rank,
    lycoris_shape,
    merge,
    remove_adapter,
    set_adapter_weight,
    unmerge,
)

__all__ = [
    "CONFIG_NAME",
    "METADATA_KEY",
    "OFFICIAL_TARGET_MODULES",
    "discover_loras",
    "WEIGHT_NAME",
    "LoraSpec",
    "adapter_names",
    "load_lora",
    "lora_config",
    "merge",
    "resolve_lora_files",
    "save_lora",
    "set_adapter_weight",
    "set_loras",
    "unload_lora",
    "unmerge",
]

logger = logging.getLogger(__name__)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers save_lora_adapter / the official loader
PEFT_WEIGHT_NAME = "adapter_model.safetensors"  # PEFT save_pretrained
LOKR_WEIGHT_NAME = "lokr_weights.safetensors"  # the official 1.5 LoKr trainer (LyCORIS save_weights)
ADAPTER_SUBFOLDER = "adapter"  # where the official 1.5 trainer's save_pretrained puts a PEFT adapter
CONFIG_NAME = "adapter_config.json"
METADATA_KEY = "lora_adapter_metadata"  # safetensors header entry (diffusers)
#: ``config/zh_rap_lora_config.json`` target_modules: both attentions of every DiT block, the
#: lyric-encoder self-attention projections and the speaker projection.
OFFICIAL_TARGET_MODULES: tuple[str, ...] = (
    "speaker_embedder",
    "linear_q",
    "linear_k",
    "linear_v",
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
)
KEY_PREFIXES: tuple[str, ...] = ("base_model.model.", "transformer.")

_FACTOR_RE = re.compile(r"^(?P<layer>.+)\.(?P<which>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_ALPHA_RE = re.compile(r"^(?P<layer>.+)\.alpha$")
_LYCORIS_RE = re.compile(r"^(?P<layer>.+)\.(?P<part>(?:lokr|hada)_[wt][12](?:_[ab])?|alpha|dora_scale)$")
LYCORIS_PREFIX = "lycoris_"


@dataclass(frozen=True)
class LoraSpec:
    """One adapter to apply: a folder (or ``.safetensors`` file), its strength, an optional adapter name."""

    path: Path
    weight: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float):
            raise ConfigError(f"LoRA weight must be a number, got {self.weight!r}")
        if not math.isfinite(self.weight):
            raise ConfigError(f"LoRA weight must be finite, got {self.weight!r}")
        if self.name is not None:
            _check_name(self.name)


def _check_name(name: str) -> str:
    try:
        return check_adapter_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------------------
# locating and reading files
# ---------------------------------------------------------------------------------------------------------


def resolve_lora_files(path: str | Path) -> tuple[Path, Path | None]:
    """``(weights file, adapter_config.json or None)`` for a LoRA folder or weights file."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / ADAPTER_SUBFOLDER).is_dir() and not any(path.glob("*.safetensors")):
        path = path / ADAPTER_SUBFOLDER  # the official 1.5 trainer's output folder
    if path.is_dir():
        for candidate in (WEIGHT_NAME, PEFT_WEIGHT_NAME, LOKR_WEIGHT_NAME):
            if (path / candidate).is_file():
                weights = path / candidate
                break
        else:
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".safetensors")
            if len(found) == 1:
                weights = found[0]
            else:
                pickles = sorted(p.name for p in path.iterdir() if is_pickle(p))
                if pickles and not found:
                    require_safetensors(path / pickles[0], "LoRA")
                what = f"several ({', '.join(p.name for p in found)})" if found else "none"
                raise CheckpointError(
                    f"{path}: no LoRA weights found. Expected {WEIGHT_NAME} (or {PEFT_WEIGHT_NAME}, or "
                    f"exactly one .safetensors file); .safetensors files present: {what}."
                )
    elif path.is_file():
        require_safetensors(path, "LoRA")
        weights = path
    else:
        raise CheckpointError(f"LoRA not found: {path} (give a folder holding {WEIGHT_NAME}, or the file)")
    config = weights.parent / CONFIG_NAME
    return weights, (config if config.is_file() else None)


def _read_config(config_path: Path) -> tuple[dict, str]:
    """The PEFT config fields of ``adapter_config.json`` and its path (for messages)."""
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: cannot read the LoRA config ({exc})") from exc
    source = str(config_path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: the LoRA config must be a JSON object")
    peft_type = data.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != "LORA":
        raise CheckpointError(f"{source}: peft_type {peft_type!r} is not supported (only LORA)")
    for flag in ("use_dora", "lora_bias"):
        if data.get(flag):
            raise CheckpointError(f"{source}: {flag}=true is not supported (plain LoRA only)")
    alpha = data.get("lora_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float)):
        raise CheckpointError(f"{source}: lora_alpha must be a number, got {alpha!r}")
    if not isinstance(data.get("use_rslora", False), bool):
        raise CheckpointError(f"{source}: use_rslora must be true or false")
    pattern = data.get("alpha_pattern") or {}
    if not isinstance(pattern, dict) or not all(isinstance(v, int | float) for v in pattern.values()):
        raise CheckpointError(f"{source}: alpha_pattern must map layer patterns to numbers")
    return data, source


def _pattern_value(pattern: Mapping[str, Any], layer: str) -> Any:
    """PEFT's rank/alpha pattern rule: a key starting with ``^`` is a regex matched from the start of the
    layer name; any other key must match a whole ``.``-separated suffix of it."""
    for key, value in pattern.items():
        if key.startswith("^"):
            if re.match(key, layer):
                return value
        elif re.match(rf"(.*\.)?({key})$", layer):
            return value
    return None


# ---------------------------------------------------------------------------------------------------------
# matching a file to a model
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    factors: dict[str, dict[str, str]] = field(default_factory=dict)  # layer -> {"A": key, "B": key}
    alphas: dict[str, str] = field(default_factory=dict)  # layer -> key of its alpha tensor
    unknown: list[str] = field(default_factory=list)
    peft_adapters: set[str] = field(default_factory=set)


def _strip(key: str) -> str:
    for prefix in KEY_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _layout(keys: Iterable[str]) -> _Layout:
    out = _Layout()
    for key in keys:
        k = _strip(key)
        if m := _FACTOR_RE.match(k):
            which = "A" if m["which"] == LORA_A else "B"
            out.factors.setdefault(m["layer"], {})[which] = key
            if m["adapter"] is not None:
                out.peft_adapters.add(m["adapter"])
        elif m := _ALPHA_RE.match(k):
            out.alphas[m["layer"]] = key
        else:
            out.unknown.append(key)
    return out


def _describe(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    dim = getattr(config, "inner_dim", None) or getattr(config, "hidden_size", None)
    blocks = getattr(config, "num_layers", None) or getattr(config, "num_hidden_layers", None)
    if dim is not None and blocks is not None:
        return f"this {type(model).__name__} (width {dim}, {blocks} blocks)"
    return f"this {type(model).__name__}"


# layer names of each family (``.`` or LyCORIS's ``_`` between the parts)
_V15_LAYER_RE = re.compile(r"^layers[._]\d+[._](self_attn|cross_attn|mlp)[._]")
_V1_LAYER_RE = re.compile(
    r"^(transformer_blocks[._]\d+[._](attn|cross_attn)[._]|lyric_encoder[._]encoders[._]\d+[._]|speaker_embedder)"
)


def _other_family(model: nn.Module, layers: Sequence[str]) -> str | None:
    """ "an ACE-Step 1.5 DiT" / "an ACE-Step v1 transformer" (what to load it with) when ``layers`` are all
    of the family that ``model`` is not."""
    if not layers:
        return None
    has = {n.split(".", 1)[0] for n, _ in model.named_children()}
    if all(_V15_LAYER_RE.match(n) for n in layers) and "transformer_blocks" in has:
        return "an ACE-Step 1.5 DiT decoder (a 1.5 LoRA: use it with an ACE-Step 1.5 checkpoint)"
    if all(_V1_LAYER_RE.match(n) for n in layers) and "transformer_blocks" not in has:
        return "an ACE-Step v1 transformer (a v1 LoRA: use it with an ACE-Step v1 checkpoint)"
    return None


def _made_for(
    model: nn.Module,
    layout: _Layout,
    shapes: Mapping[str, tuple[int, ...]],
    missing: Sequence[str],
    mismatched: Sequence[str],
) -> str:
    """A guess at the network a non-matching LoRA was trained for."""
    layers = list(layout.factors)
    other = _other_family(model, layers)
    if other is not None:
        return other
    if layers and all(_V15_LAYER_RE.match(n) for n in layers):
        what = "other layer shapes" if mismatched else "other layers"
        return f"an ACE-Step 1.5 DiT of another size ({what})"
    text = " ".join(layers + [_strip(k) for k in layout.unknown])
    if "lora_unet_" in text or "lora_te" in text:
        return "a kohya-format Stable Diffusion LoRA"
    if re.search(r"(^|\s|\.)(down_blocks|up_blocks|mid_block)\.", text):
        return "a UNet (e.g. Stable Diffusion)"
    if re.search(r"(double_blocks|single_blocks|single_transformer_blocks)\.", text):
        return "a Flux-style image transformer"
    if re.search(r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\b", text):
        return "a Llama/Qwen-style transformer (q_proj/k_proj/... layer names), not ACE-Step v1"
    if not layers or not all(_V1_LAYER_RE.match(n) for n in layers):
        return "a different network"
    details = []
    widths = {
        shapes[keys["A"]][1]
        for layer, keys in layout.factors.items()
        if re.fullmatch(r"transformer_blocks\.\d+\.attn\.to_[qkv]", layer)
        and "A" in keys
        and len(shapes[keys["A"]]) == 2
    }
    if mismatched:
        details.append(f"width {sorted(widths)[0]}" if len(widths) == 1 else "other layer shapes")
    blocks = [int(m[1]) for n in missing if (m := re.match(r"^transformer_blocks\.(\d+)\.", n))]
    if blocks:
        details.append(f"at least {max(blocks) + 1} blocks")
    if not details:
        details.append("other layers")
    return f"an ACE-Step v1 transformer of another size ({', '.join(details)})"


def _layer_ranks(
    model: nn.Module, layout: _Layout, shapes: Mapping[str, tuple[int, ...]], path: Path
) -> dict[str, int]:
    """Validate the file against the model; ``{layer: r}``. Raises CheckpointError listing every problem."""
    missing: list[str] = []
    mismatched: list[str] = []
    unsupported: list[str] = []
    unpaired: list[str] = []
    ranks: dict[str, int] = {}
    for layer, keys in layout.factors.items():
        if set(keys) != {"A", "B"}:
            have, lack = next(iter(keys)), ("lora_B" if "A" in keys else "lora_A")
            unpaired.append(f"{keys[have]} (no {lack})")
            continue
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            missing.extend((keys["A"], keys["B"]))
            continue
        if type(module) is not nn.Linear and not isinstance(module, LoRALinear):
            unsupported.append(f"{layer} ({type(module).__name__})")
            continue
        a, b = shapes[keys["A"]], shapes[keys["B"]]
        r = a[0] if len(a) == 2 else -1
        if len(a) != 2 or a[1] != module.in_features or r <= 0:
            mismatched.append(f"{keys['A']}: file {list(a)} vs model [r, {module.in_features}]")
        elif list(b) != [module.out_features, r]:
            mismatched.append(f"{keys['B']}: file {list(b)} vs model {[module.out_features, r]}")
        else:
            ranks[layer] = r
    orphan_alphas = [key for layer, key in layout.alphas.items() if layer not in layout.factors]
    bad_alphas = [
        layout.alphas[n] for n in ranks if n in layout.alphas and math.prod(shapes[layout.alphas[n]]) != 1
    ]
    problems = format_problems(
        (
            ("keys whose layer does not exist in the model", missing),
            ("shape mismatches", mismatched),
            ("layers that are not nn.Linear (unsupported)", unsupported),
            ("unpaired LoRA factors", unpaired),
            ("keys that are not plain LoRA factors (DoRA, LoRA bias, other formats)", layout.unknown),
            ("alpha tensors without a layer or not scalar", orphan_alphas + bad_alphas),
        )
    )
    if len(layout.peft_adapters) > 1:
        problems.append(
            f"  the file holds several adapters ({', '.join(sorted(layout.peft_adapters))}); save one"
        )
    if not layout.factors and not problems:
        problems.append("  the file holds no LoRA factors (<layer>.lora_A.weight / <layer>.lora_B.weight)")
    if problems:
        guess = _made_for(model, layout, shapes, missing, mismatched)
        raise CheckpointError(
            f"{path}: this LoRA does not fit {_describe(model)}; it seems to be made for {guess}.\n"
            + "\n".join(problems)
        )
    return ranks


def _adapter_specs(
    ranks: Mapping[str, int],
    layout: _Layout,
    weights: Path,
    config: tuple[dict, str] | None,
    alpha: float | None,
    use_rslora: bool | None,
) -> dict[str, AdapterSpec]:
    """Per-layer AdapterSpec following the documented alpha precedence (module docstring)."""
    rslora = False
    alphas: dict[str, float] = {}
    if config is not None:
        data, source = config
        rslora = bool(data.get("use_rslora", False))
        base = data.get("lora_alpha")
        pattern = data.get("alpha_pattern") or {}
        cfg_r = data.get("r")
        for layer, r in ranks.items():
            value = _pattern_value(pattern, layer)
            alphas[layer] = float(value if value is not None else (base if base is not None else r))
        if isinstance(cfg_r, int) and not (data.get("rank_pattern") or {}) and set(ranks.values()) != {cfg_r}:
            logger.warning(
                "%s says r=%s but the LoRA factors have rank %s; using the factors' rank",
                source,
                cfg_r,
                sorted(set(ranks.values())),
            )
        logger.info("LoRA %s: alpha/use_rslora from %s", weights, source)
    elif layout.alphas:
        with open_safetensors(weights) as f:
            for layer, r in ranks.items():
                key = layout.alphas.get(layer)
                alphas[layer] = float(f.get_tensor(key).float().reshape(-1)[0]) if key else float(r)
        if any(layer not in layout.alphas for layer in ranks):
            logger.warning(
                "LoRA %s: some layers have no .alpha tensor; alpha = r (scale 1) for them", weights
            )
    else:
        alphas = {layer: float(r) for layer, r in ranks.items()}
        logger.info("LoRA %s: no adapter_config.json and no .alpha tensors; alpha = r (scale 1)", weights)
    if alpha is not None:
        alphas = dict.fromkeys(ranks, float(alpha))
    if use_rslora is not None:
        rslora = bool(use_rslora)
    return {layer: AdapterSpec(r=r, alpha=alphas[layer], use_rslora=rslora) for layer, r in ranks.items()}


def _lora_specs(
    model: nn.Module,
    weights: Path,
    header: SafetensorsHeader,
    config: tuple[dict, str] | None,
    alpha: float | None,
    use_rslora: bool | None,
) -> tuple[dict[str, AdapterSpec], dict[str, dict[str, str]]]:
    """A LoRA file's per-layer specs and ``{layer: {"A": key, "B": key}}`` (validated against ``model``)."""
    shapes, metadata = header.shapes, header.metadata
    layout = _layout(shapes)
    ranks = _layer_ranks(model, layout, shapes, weights)
    if config is None and METADATA_KEY in metadata and alpha is None and use_rslora is None:
        logger.warning(
            "LoRA %s: its header records training settings (%s); like the official pipeline they are not "
            "used for the scale (alpha = r unless the file has .alpha tensors). Pass alpha=/use_rslora= to "
            "load_lora to apply them.",
            weights,
            metadata[METADATA_KEY].replace("\n", " ")[:300],
        )
    specs = _adapter_specs(ranks, layout, weights, config, alpha, use_rslora)
    return specs, {layer: layout.factors[layer] for layer in specs}


def _factor_parameter(module: LoRALinear, name: str, role: str) -> nn.Parameter:
    """The Parameter of adapter ``name`` that file role ``role`` fills ("A", "B" or a LyCORIS factor)."""
    if role in ("A", "B"):
        factors = cast(nn.ModuleDict, module.lora_A if role == "A" else module.lora_B)
        return cast(nn.Parameter, cast(nn.Linear, factors[name]).weight)
    return cast(nn.Parameter, getattr(cast(nn.ModuleDict, module.lycoris)[name], role))


# ---------------------------------------------------------------------------------------------------------
# LyCORIS (LoKr, LoHa) files
# ---------------------------------------------------------------------------------------------------------


def is_lycoris(keys: Iterable[str]) -> bool:
    """Whether a file with these tensor keys is a LyCORIS (LoKr/LoHa) adapter rather than a LoRA."""
    return any((m := _LYCORIS_RE.match(k)) is not None and m["part"] != "alpha" for k in keys)


def _lycoris_groups(model: nn.Module, keys: Iterable[str]) -> tuple[dict[str, dict[str, str]], list, list]:
    """``{layer: {part: key}}`` of a LyCORIS file's keys, the keys naming no module of ``model``, and the
    keys that are not LyCORIS tensors. ``lycoris_layers_0_self_attn_q_proj`` names ``layers.0.self_attn
    .q_proj`` (the model's module names with ``.`` as ``_``; a dotted name is taken as it is)."""
    names = dict(model.named_modules())
    flat: dict[str, str] = {}
    for n in names:
        if n:
            flat.setdefault(n.replace(".", "_"), n)
    groups: dict[str, dict[str, str]] = {}
    missing, unknown = [], []
    for key in keys:
        m = _LYCORIS_RE.match(key)
        if m is None:
            unknown.append(key)
            continue
        stem = _strip(m["layer"])
        stem = stem[len(LYCORIS_PREFIX) :] if stem.startswith(LYCORIS_PREFIX) else stem
        layer = stem if stem in names and stem else flat.get(stem)
        if layer is None:
            missing.append(key)
        else:
            groups.setdefault(layer, {})[m["part"]] = key
    return groups, missing, unknown


def _lokr_config(metadata: Mapping[str, str]) -> dict:
    """The ``lokr_config`` JSON of the official LoKr trainer's header (``{}`` when absent or unreadable)."""
    try:
        config = json.loads(metadata.get("lokr_config") or "{}")
    except json.JSONDecodeError:
        return {}
    return config if isinstance(config, dict) else {}


def _lycoris_spec(
    kind: str, shapes: Mapping[str, tuple[int, ...]], alpha: float | None, rslora: bool, dim: int
) -> AdapterSpec:
    """One layer's spec: ``alpha / r`` over the factored rank; a LoKr without a factored part has LyCORIS's
    ``alpha = r = linear_dim`` (scale 1, ``sqrt(linear_dim)`` with rs_lora)."""
    r = lycoris_rank(kind, shapes)
    if r is None:
        r, alpha = dim, float(dim)
    factors = tuple((n, tuple(s)) for n, s in shapes.items())
    return AdapterSpec(
        r=r, alpha=float(r if alpha is None else alpha), use_rslora=rslora, kind=kind, factors=factors
    )


def _lycoris_specs(
    model: nn.Module,
    weights: Path,
    header: SafetensorsHeader,
    alpha: float | None,
    use_rslora: bool | None,
) -> tuple[dict[str, AdapterSpec], dict[str, dict[str, str]]]:
    """A LyCORIS file's per-layer specs and ``{layer: {factor: key}}``; CheckpointError listing every key
    that does not fit ``model`` (see the module docstring)."""
    groups, missing, unknown = _lycoris_groups(model, header.shapes)
    config = _lokr_config(header.metadata)
    rslora = bool(config.get("rs_lora", False)) if use_rslora is None else bool(use_rslora)
    dim = int(config.get("linear_dim", 1)) if rslora else 1
    specs: dict[str, AdapterSpec] = {}
    keys: dict[str, dict[str, str]] = {}
    mismatched, unsupported, broken, skipped = [], [], [], []
    with open_safetensors(weights) as f:
        for layer, parts in groups.items():
            factors = {p: k for p, k in parts.items() if p != "alpha"}
            kind = "lokr" if any(p.startswith("lokr") for p in factors) else "loha"
            module = model.get_submodule(layer)
            if type(module) is not nn.Linear and not isinstance(module, LoRALinear):
                if any(not f.get_tensor(k).any() for k in factors.values()):
                    skipped.append(layer)  # a zero factor: this module's delta is zero
                else:
                    unsupported.append(f"{layer} ({type(module).__name__})")
                continue
            if set(factors) - set(LYCORIS_KINDS[kind]):
                unsupported.extend(parts[p] for p in factors if p not in LYCORIS_KINDS[kind])
                continue
            shapes = {p: tuple(header.shapes[k]) for p, k in factors.items()}
            shape = lycoris_shape(kind, shapes)
            if shape is None:
                broken.append(f"{layer}: {sorted(factors)}")
            elif shape != (module.out_features, module.in_features):
                got, want = list(shape), [module.out_features, module.in_features]
                mismatched.append(f"{next(iter(factors.values()))}: delta {got} vs model {want}")
            else:
                file_alpha = (
                    float(f.get_tensor(parts["alpha"]).float().reshape(-1)[0]) if "alpha" in parts else None
                )
                specs[layer] = _lycoris_spec(
                    kind, shapes, file_alpha if alpha is None else alpha, rslora, dim
                )
                keys[layer] = factors
    _check_lycoris(model, weights, specs, missing, mismatched, unsupported, broken, unknown)
    if skipped:
        logger.info("LyCORIS %s: %d non-Linear modules with a zero delta skipped", weights, len(skipped))
    return specs, keys


def _check_lycoris(model: nn.Module, weights: Path, specs: Mapping, *sections: Sequence[str]) -> None:
    """Raise the CheckpointError of a LyCORIS file that does not fit ``model`` (sections: missing,
    mismatched, unsupported, broken, unknown keys)."""
    missing, mismatched, unsupported, broken, unknown = sections
    problems = format_problems(
        (
            ("keys whose layer does not exist in the model", missing),
            ("shape mismatches", mismatched),
            ("unsupported parts (DoRA dora_scale, Tucker factors, non-Linear layers)", unsupported),
            ("layers with incomplete or inconsistent factors", broken),
            ("keys that are not LoKr/LoHa tensors (LoCon, other formats)", unknown),
        )
    )
    if not specs and not problems:
        problems.append("  the file holds no LoKr/LoHa adapter for an nn.Linear layer of this model")
    if problems:
        stems = [m["layer"] for k in missing if (m := _LYCORIS_RE.match(_strip(k)))]
        other = _other_family(model, [n.removeprefix(LYCORIS_PREFIX) for n in stems])
        made_for = f"; it seems to be made for {other}" if other else ""
        raise CheckpointError(
            f"{weights}: this LyCORIS adapter does not fit {_describe(model)}{made_for}.\n"
            + "\n".join(problems)
        )


# ---------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------


def _default_name(model: nn.Module, weights: Path) -> str:
    stem = weights.stem if weights.name not in (WEIGHT_NAME, PEFT_WEIGHT_NAME) else weights.parent.name
    base = re.sub(r"[^A-Za-z0-9_\-]+", "_", stem).strip("_-") or "lora"
    try:
        check_adapter_name(base)
    except ValueError:  # e.g. a folder named "keys"
        base = f"lora_{base}"
    taken = set(adapter_names(model))
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def load_lora(
    model: nn.Module,
    path: str | Path,
    *,
    name: str | None = None,
    weight: float = 1.0,
    alpha: float | None = None,
    use_rslora: bool | None = None,
    use_config: bool = True,
) -> str:
    """Load a LoRA adapter file onto ``model`` (unmerged, active with strength ``weight``).

    Args:
        model: the network the adapter was trained on (the DiT: :class:`ACEStepTransformer`).
        path: a folder holding ``pytorch_lora_weights.safetensors`` (optional ``adapter_config.json``), or the
            ``.safetensors`` file.
        name: adapter name (letters, digits, ``_``, ``-``); default: from the folder/file name.
        weight: user strength (the official ``lora_weight``); 0 keeps it loaded but off.
        alpha / use_rslora: override the scale settings of every source (see the module docstring).
        use_config: read ``adapter_config.json`` when present (False: the official pipeline's behaviour).
    Returns:
        the adapter name.
    Raises:
        CheckpointError: missing/unreadable/pickle file, or keys that do not fit the model (the model is
            left unchanged).
        ConfigError: ``name`` is invalid or already loaded.
    """
    weights, config_path = resolve_lora_files(path)
    if name is None:
        name = _default_name(model, weights)
    _check_name(name)
    if name in adapter_names(model):
        raise ConfigError(f"a LoRA named {name!r} is already loaded; unload it first or choose another name")
    if not math.isfinite(float(weight)):
        raise ConfigError(f"LoRA weight must be finite, got {weight!r}")
    header = read_header(weights)
    if is_lycoris(header.shapes):
        specs, keys = _lycoris_specs(model, weights, header, alpha, use_rslora)
    else:
        config = _read_config(config_path) if (config_path is not None and use_config) else None
        specs, keys = _lora_specs(model, weights, header, config, alpha, use_rslora)
    modules = add_adapter_at(model, specs, name, weight=weight)
    try:
        with open_safetensors(weights) as f, torch.no_grad():
            for layer, module in modules.items():
                for role, key in keys[layer].items():
                    _factor_parameter(module, name, role).copy_(f.get_tensor(key))
    except BaseException as exc:
        remove_adapter(model, name, missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, CheckpointError):
            raise CheckpointError(f"{weights}: cannot read the LoRA tensors ({exc})") from exc
        raise
    scales = sorted({round(s.scale, 6) for s in specs.values()})
    logger.info(
        "loaded LoRA %r from %s: %d layers, scale %s, weight %g", name, weights, len(specs), scales, weight
    )
    return name


def unload_lora(model: nn.Module, name: str | None = None) -> list[str]:
    """Remove adapter ``name`` (default: every adapter), unmerging first; returns the removed names.

    The adapted layers become plain ``nn.Linear`` again with their base weights. ConfigError if ``name`` is
    not loaded.
    """
    names = adapter_names(model) if name is None else [name]
    if name is not None and name not in adapter_names(model):
        raise ConfigError(f"no LoRA named {name!r} is loaded (loaded: {adapter_names(model) or 'none'})")
    for n in names:
        remove_adapter(model, n)
    return names


def lora_config(model: nn.Module, name: str) -> dict[str, Any]:
    """Adapter ``name``'s PEFT ``LoraConfig`` fields (r, lora_alpha, use_rslora, target_modules, patterns)."""
    try:
        specs = adapter_specs(model, name)
    except KeyError as exc:
        raise ConfigError(
            f"no LoRA named {name!r} is loaded (loaded: {adapter_names(model) or 'none'})"
        ) from exc
    kinds = sorted({s.kind for s in specs.values()} - {"lora"})
    if kinds:
        raise ConfigError(
            f"adapter {name!r} is a LyCORIS {kinds[0]} adapter; only LoRA adapters can be saved"
        )
    if len({s.use_rslora for s in specs.values()}) > 1:
        raise ConfigError(f"LoRA {name!r} mixes rsLoRA and plain layers, which a LoraConfig cannot express")
    r = Counter(s.r for s in specs.values()).most_common(1)[0][0]
    alpha = Counter(s.alpha for s in specs.values()).most_common(1)[0][0]
    dropout = Counter(s.dropout for s in specs.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": _number(alpha),
        "use_rslora": next(iter(specs.values())).use_rslora,
        "target_modules": compact_target_modules(model, specs),
        "rank_pattern": {layer: s.r for layer, s in specs.items() if s.r != r},
        "alpha_pattern": {layer: _number(s.alpha) for layer, s in specs.items() if s.alpha != alpha},
        "lora_dropout": dropout,
        "bias": "none",
    }


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def save_lora(
    model: nn.Module,
    name: str,
    folder: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write adapter ``name`` to ``folder`` as ``pytorch_lora_weights.safetensors`` + ``adapter_config.json``.

    The weights file also carries the PEFT config in its header (``lora_adapter_metadata``), which
    diffusers' ``load_lora_adapter`` reads when called with ``use_safetensors=True``. ``config`` adds entries
    to ``adapter_config.json`` (e.g. training settings); entries that are LoraConfig fields must agree with
    the adapter (ConfigError), except ``target_modules``, which may be any list selecting exactly the
    adapted layers. ``dtype``: cast the tensors (default: as stored). Each file is written atomically.
    Returns the folder.
    """
    peft = lora_config(model, name)
    extra = dict(config or {})
    if "target_modules" in extra:
        targets = extra.pop("target_modules")
        chosen = set(adapter_specs(model, name))
        found = set(find_targets(model, targets if isinstance(targets, str) else list(targets)))
        if found != chosen:
            raise ConfigError(
                f"config target_modules {targets!r} selects {len(found)} layers, but LoRA {name!r} is on "
                f"{len(chosen)} other layers"
            )
        peft["target_modules"] = targets if isinstance(targets, str) else list(targets)
    for key in list(extra):
        if key in peft:
            given = extra.pop(key)
            if given != peft[key]:
                raise ConfigError(
                    f"config {key}={given!r} disagrees with LoRA {name!r} ({key}={peft[key]!r})"
                )
    extra.pop("peft_type", None)
    tensors = {
        k: v.to(device="cpu", dtype=dtype or v.dtype).contiguous()
        for k, v in adapter_state_dict(model, name).items()
    }
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt", METADATA_KEY: json.dumps(peft, sort_keys=True)}
    write_safetensors(tensors, folder / WEIGHT_NAME, header)
    document = {"peft_type": "LORA", **peft, **extra}
    atomic_write_text(folder / CONFIG_NAME, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return folder


def _source_id(path: Path) -> tuple[str, int, int, int]:
    """What identifies a loaded file: its resolved path, size and modification times (config included)."""
    weights, config = resolve_lora_files(path)
    stat = weights.stat()
    config_mtime = config.stat().st_mtime_ns if config is not None else 0
    return (str(weights.resolve()), stat.st_size, stat.st_mtime_ns, config_mtime)


_SOURCES_ATTR = "_songflow_lora_sources"


def set_loras(model: nn.Module, specs: Sequence[LoraSpec], *, merged: bool = False) -> list[str]:
    """Make ``model`` carry exactly ``specs`` (in order), reusing what is already loaded.

    An adapter already loaded from the same unchanged file under the same name only has its weight updated
    (no file read); others are unloaded, and missing ones loaded (unnamed specs are named ``lora0``,
    ``lora1``, ... by position). ``merged=True`` folds all adapters into the base weights (fastest inference);
    ``False`` keeps them separate (cheap weight changes, exact base). An empty ``specs`` restores the base.
    Returns the adapter names in ``specs`` order. On a load error every adapter is unloaded.
    """
    sources: dict[str, tuple[str, int, int, int]] = getattr(model, _SOURCES_ATTR, {})
    wanted = [(spec.name or f"lora{i}", spec) for i, spec in enumerate(specs)]
    names = [n for n, _ in wanted]
    if len(set(names)) != len(names):
        raise ConfigError(f"LoRA names must be unique, got {names}")
    ids = {n: _source_id(spec.path) for n, spec in wanted}
    loaded = set(adapter_names(model))
    for n in loaded:
        if n not in ids or sources.get(n) != ids[n]:
            remove_adapter(model, n)
            sources.pop(n, None)
    try:
        for n, spec in wanted:
            if n in adapter_names(model):
                set_adapter_weight(model, n, spec.weight)
            else:
                load_lora(model, spec.path, name=n, weight=spec.weight)
                sources[n] = ids[n]
    except BaseException:
        for n in adapter_names(model):
            remove_adapter(model, n)
        sources.clear()
        raise
    finally:
        object.__setattr__(model, _SOURCES_ATTR, sources)
    if merged:
        merge(model)
    elif lora_modules(model):
        unmerge(model)
    return names


def discover_loras(lora_dir: str | Path | None) -> list[tuple[str, str]]:
    """``(name, path)`` of every LoRA adapter in ``lora_dir``: sub-folders holding adapter weights and
    ``.safetensors`` files (see :func:`resolve_lora_files`); others are skipped."""
    if lora_dir is None:
        return []
    root = Path(lora_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--lora-dir {root} is not a folder")
    found = []
    for path in sorted(root.iterdir()):
        if not (path.is_dir() or path.suffix == ".safetensors"):
            continue
        try:
            resolve_lora_files(path)
        except SongflowError as exc:
            logger.info("not a LoRA adapter, skipped: %s (%s)", path, exc)
            continue
        found.append((path.name, str(path)))
    return found
