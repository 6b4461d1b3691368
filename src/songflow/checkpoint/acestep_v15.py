"""The ACE-Step 1.5 checkpoint folder: its layout, its validation, strict loading of each component, the
silence latent, and the official folder names and Hugging Face repo ids.

The official layout is one ``checkpoints/`` root (the ``checkpoints/`` folder of the official project)::

    <root>/acestep-v15-turbo/   config.json, model.safetensors (or model.safetensors.index.json + shards),
                                silence_latent.pt ([1, C, T_s]), plus modeling *.py files (never executed)
    <root>/acestep-v15-base/    ... any number of DiT folders (-sft, -turbo-shift1, -xl-turbo, ...)
    <root>/vae/                 config.json, diffusion_pytorch_model.safetensors (AutoencoderOobleck)
    <root>/Qwen3-Embedding-0.6B/  config.json, model.safetensors, tokenizer.json, tokenizer_config.json
    <root>/acestep-5Hz-lm-1.7B/   optional 5 Hz LM planner (Qwen3 causal LM)

A path may also be one DiT folder whose parent holds ``vae/`` and ``Qwen3-Embedding-0.6B/``.
:func:`resolve_v15_layout` picks the folders (by name; with several DiT folders and none named, the turbo
default), :func:`validate_v15` checks that every file is there and names all that are missing at once.

Loading goes through :mod:`songflow.checkpoint.strict` (safetensors only, every key and shape checked, the
module built with its parameters on the meta device). The one file that is not safetensors is
``silence_latent.pt``: it is read with ``torch.load(weights_only=True)`` and nothing else (no other pickle
is ever opened). The ``.py`` files the official folders carry are ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from songflow.checkpoint.device import DeviceLike, resolve_device, resolve_dtype
from songflow.checkpoint.strict import (
    init_empty_weights,
    is_pickle,
    load_state_dict_strict,
    safetensors_summary,
    save_state_dict,
)
from songflow.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from songflow.models.acestep_v15.config import AceStep15Config
    from songflow.models.acestep_v15.lm import CacheKind, PlannerLM
    from songflow.models.acestep_v15.model import AceStep15DiT
    from songflow.models.acestep_v15.text_encoder import Qwen3TextEncoder
    from songflow.models.acestep_v15.vae import OobleckVAE

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------
# official names (acestep/model_downloader.py)
# --------------------------------------------------------------------------------------------------------

DIT_PREFIX = "acestep-v15-"
DEFAULT_DIT = "acestep-v15-turbo"
# the released DiT folders, in the order a root with several of them (and none named) prefers them
DIT_FOLDERS = (
    DEFAULT_DIT,
    "acestep-v15-turbo-shift3",
    "acestep-v15-turbo-shift1",
    "acestep-v15-turbo-continuous",
    "acestep-v15-sft",
    "acestep-v15-base",
    "acestep-v15-xl-turbo",
    "acestep-v15-xl-sft",
    "acestep-v15-xl-base",
)
VAE_FOLDER = "vae"
TEXT_ENCODER_FOLDER = "Qwen3-Embedding-0.6B"
LM_PREFIX = "acestep-5Hz-lm-"
DEFAULT_LM = "acestep-5Hz-lm-1.7B"
LM_FOLDERS = (DEFAULT_LM, "acestep-5Hz-lm-0.6B", "acestep-5Hz-lm-4B")

# Hugging Face: the main repo holds the default DiT, the VAE, the text encoder and the default LM as
# sub-folders; every other model is a repo of its own whose root is the folder's content.
MAIN_REPO_ID = "ACE-Step/Ace-Step1.5"
MAIN_REPO_FOLDERS = (DEFAULT_DIT, VAE_FOLDER, TEXT_ENCODER_FOLDER, DEFAULT_LM)
SUBMODEL_REPO_IDS: dict[str, str] = {
    name: f"ACE-Step/{name}" for name in (*DIT_FOLDERS, *LM_FOLDERS) if name not in MAIN_REPO_FOLDERS
}

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
VAE_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SILENCE_LATENT_NAME = "silence_latent.pt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DIT_MODEL_TYPE = "acestep"


def download_hint(dit: str = DEFAULT_DIT, root: Path | None = None) -> str:
    """What to run to get the files of the DiT folder ``dit`` (and the shared components)."""
    where = f" --dir {root}" if root is not None else ""
    return f"Download it with `songflow download --model {dit}{where}`."


# --------------------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class V15Layout:
    """The folders of one ACE-Step 1.5 checkpoint (paths, not yet checked; see :func:`validate_v15`)."""

    root: Path  # the ``checkpoints/`` root
    dit_dir: Path  # the chosen DiT folder
    vae_dir: Path
    text_encoder_dir: Path
    lm_dir: Path | None  # the 5 Hz LM folder, None when there is none

    @property
    def dit_name(self) -> str:
        return self.dit_dir.name


def _json_or_none(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when it is missing or not a JSON object (a cheap look)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_dit_folder(folder: Path) -> bool:
    """A folder named ``acestep-v15-*``, or one whose ``config.json`` says ``model_type "acestep"``."""
    if not folder.is_dir():
        return False
    if folder.name.startswith(DIT_PREFIX):
        return True
    config = _json_or_none(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else None
    return config is not None and config.get("model_type") == DIT_MODEL_TYPE


def _preferred(paths: Sequence[Path], order: Sequence[str]) -> list[Path]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(paths, key=lambda p: (rank.get(p.name, len(rank)), p.name))


def dit_folders(root: Path) -> list[Path]:
    """The DiT folders directly under ``root``, the preferred first (:data:`DIT_FOLDERS` order)."""
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.name not in (VAE_FOLDER, TEXT_ENCODER_FOLDER) and is_dit_folder(p)
    ]
    return _preferred([p for p in found if not p.name.startswith(LM_PREFIX)], DIT_FOLDERS)


def lm_folders(root: Path) -> list[Path]:
    """The ``acestep-5Hz-lm-*`` folders under ``root``, the default LM first."""
    if not root.is_dir():
        return []
    return _preferred([p for p in root.iterdir() if p.is_dir() and p.name.startswith(LM_PREFIX)], LM_FOLDERS)


def absolute(path: str | Path) -> Path:
    """``path`` made absolute and normalised, symlinks kept (a DiT folder linked into a root stays there)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _is_root(path: Path) -> bool:
    return (path / VAE_FOLDER).is_dir() or (path / TEXT_ENCODER_FOLDER).is_dir() or bool(dit_folders(path))


def _choose_lm(root: Path, lm: str | None) -> Path | None:
    if lm is not None:
        return root / lm
    for folder in lm_folders(root):
        if not _folder_problems(folder, root, _LM_FILES):
            return folder
        logger.warning("ignoring the incomplete LM folder %s (pass lm=%r to see why)", folder, folder.name)
    return None


def resolve_v15_layout(path: str | Path, dit: str | None = None, *, lm: str | None = None) -> V15Layout:
    """The folders of the 1.5 checkpoint at ``path`` (a ``checkpoints/`` root or one DiT folder).

    ``dit`` names the DiT folder (a folder name under the root, or a path); None picks the only one, or the
    turbo default among several (else the first of :data:`DIT_FOLDERS` present). ``lm`` names the LM
    folder; None picks the default LM if it is complete, else another complete one, else none. Nothing
    is checked beyond that (missing folders are reported by :func:`validate_v15`).
    """
    path = absolute(path)
    if not _is_root(path) and is_dit_folder(path):  # one DiT folder: the shared parts are in its parent
        if dit is not None and dit != path.name and absolute(dit) != path:
            raise CheckpointError(f"{path} is the DiT folder {path.name!r}; it cannot also be {dit!r}")
        root, dit_dir = path.parent, path
    else:
        root = path
        if dit is not None:
            dit_dir = root / dit
        else:
            found = dit_folders(root)
            dit_dir = found[0] if found else root / DEFAULT_DIT
    return V15Layout(root, dit_dir, root / VAE_FOLDER, root / TEXT_ENCODER_FOLDER, _choose_lm(root, lm))


# --------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------

# (required file names, one of which must exist)
_DIT_FILES = ((CONFIG_NAME, SILENCE_LATENT_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME))
_VAE_FILES = ((CONFIG_NAME,), (VAE_WEIGHTS_NAME,))
_TEXT_ENCODER_FILES = ((CONFIG_NAME, *TOKENIZER_FILES), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME))
_LM_FILES = ((CONFIG_NAME, *TOKENIZER_FILES), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME))


def _shards(index: Path) -> list[Path]:
    """The shard files a ``*.safetensors.index.json`` lists (its ``weight_map`` values), in file order."""
    data = _json_or_none(index)
    weight_map = data.get("weight_map") if data else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f'{index} is not a safetensors index (a JSON object with a non-empty "weight_map"); '
            "delete it and download the folder again."
        )
    names = list(dict.fromkeys(str(v) for v in weight_map.values()))
    if any(Path(n).name != n or n in ("", ".", "..") for n in names):
        raise CheckpointError(
            f"{index} names shard files outside its folder ({names[:3]}); refusing to read them"
        )
    return [index.parent / name for name in names]


def _pickles_note(folder: Path) -> str:
    pickles = sorted(p.name for p in folder.iterdir() if is_pickle(p) and p.name != SILENCE_LATENT_NAME)
    return (
        f" (found {', '.join(pickles)}: pickle weights are never read, safetensors required)"
        if pickles
        else ""
    )


def weight_files(folder: Path, name: str = WEIGHTS_NAME, hint: str = "") -> list[Path]:
    """The safetensors file(s) of a component: ``name``, else the shards of ``name + ".index.json"``.

    Raises CheckpointError when there are neither (naming pickle weights found instead).
    """
    single = folder / name
    index = folder / f"{name}.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        return _shards(index)
    if not folder.is_dir():
        raise CheckpointError(f"component folder {folder} does not exist. {hint}".rstrip())
    raise CheckpointError(f"{single} (or {index.name}) is missing{_pickles_note(folder)}. {hint}".rstrip())


def _folder_problems(folder: Path, root: Path, files: tuple[tuple[str, ...], tuple[str, ...]]) -> list[str]:
    """What a component folder misses, as lines (paths relative to ``root``)."""
    rel = relative_path(folder, root)
    if not folder.is_dir():
        return [f"missing folder: {rel}/"]
    required, weights = files
    problems = [f"missing file: {rel}/{n}" for n in required if not (folder / n).is_file()]
    present = [n for n in weights if (folder / n).is_file()]
    if not present:
        problems.append(f"missing weights: {rel}/{' or '.join(weights)}{_pickles_note(folder)}")
    elif present[0].endswith(".index.json"):
        try:
            shards = _shards(folder / present[0])
        except CheckpointError as exc:
            return problems + [str(exc)]
        problems += [f"missing shard: {rel}/{s.name}" for s in shards if not s.is_file()]
    return problems


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as text (the absolute path when it lies elsewhere)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def validate_v15(path: str | Path, dit: str | None = None, *, lm: str | None = None) -> V15Layout:
    """Check that ``path`` holds a complete ACE-Step 1.5 checkpoint and return its :class:`V15Layout`.

    Raises CheckpointError naming every missing folder and file (and pickle weights found instead of
    safetensors), with the download command to run.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise CheckpointError(
            f"checkpoint folder {given} does not exist. {download_hint(dit or DEFAULT_DIT)}"
        )
    if not given.is_dir():
        raise CheckpointError(
            f"checkpoint path {given} is a file; pass the checkpoints/ folder (or a DiT folder)"
        )
    layout = resolve_v15_layout(given, dit, lm=lm)
    problems = _folder_problems(layout.dit_dir, layout.root, _DIT_FILES)
    problems += _folder_problems(layout.vae_dir, layout.root, _VAE_FILES)
    problems += _folder_problems(layout.text_encoder_dir, layout.root, _TEXT_ENCODER_FILES)
    if lm is not None and layout.lm_dir is not None:
        problems += _folder_problems(layout.lm_dir, layout.root, _LM_FILES)
    if not problems:
        return layout
    lines = [f"{layout.root} is not a complete ACE-Step 1.5 checkpoint folder:"]
    lines += [f"  {p}" for p in problems]
    if layout.root != absolute(given):
        lines.append(f"  ({given} is the DiT folder; the VAE and text encoder are looked up in its parent)")
    others = [p.name for p in dit_folders(layout.root) if p != layout.dit_dir]
    if others:
        lines.append(f"  other DiT folders here: {', '.join(others)}")
    lines.append(
        f"  expected: {layout.dit_name}/ (config.json, model.safetensors, silence_latent.pt), "
        f"{VAE_FOLDER}/ (config.json, {VAE_WEIGHTS_NAME}), "
        f"{TEXT_ENCODER_FOLDER}/ (config.json, model.safetensors, tokenizer files)"
    )
    lines.append(download_hint(layout.dit_name, layout.root))
    raise CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------------------------------------
# reading configs, headers and the silence latent
# --------------------------------------------------------------------------------------------------------


def _hint_for(folder: Path) -> str:
    name = folder.name if folder.name.startswith(DIT_PREFIX) else DEFAULT_DIT
    return download_hint(name, folder.parent)


def read_v15_config(dit_dir: str | Path) -> AceStep15Config:
    """The :class:`AceStep15Config` of a DiT folder's ``config.json`` (CheckpointError naming the file)."""
    from songflow.models.acestep_v15.config import AceStep15Config

    dit_dir = Path(dit_dir)
    file = dit_dir / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file} is missing. {_hint_for(dit_dir)}")
    try:
        return AceStep15Config.from_json(file)
    except ConfigError as exc:
        raise CheckpointError(
            f"cannot read the DiT config {file}: {exc}. Restore the config.json that came with the weights "
            f"({_hint_for(dit_dir)})"
        ) from exc


def is_xl(config: AceStep15Config) -> bool:
    """Whether ``config`` is XL-shaped: a decoder wider than its condition encoder (``encoder_hidden_size``
    set and smaller), or wider than the released 2 B model's."""
    from songflow.models.acestep_v15.config import AceStep15Config

    return (
        config.condition_width < config.hidden_size or config.hidden_size > AceStep15Config.full().hidden_size
    )


def dit_variant(config: AceStep15Config) -> str:
    """``"turbo"``, ``"base"`` or ``"sft"`` (from the config), ``"xl-"`` in front for an XL-sized DiT."""
    return ("xl-" if is_xl(config) else "") + config.variant


def weights_summary(files: Sequence[Path]) -> tuple[int, tuple[str, ...]]:
    """(number of values, stored dtypes) over safetensors files (shards), from their headers only."""
    summaries = [safetensors_summary(file) for file in files]
    return sum(n for n, _ in summaries), tuple(sorted({d for _, dtypes in summaries for d in dtypes}))


def load_silence_latent(
    dit_dir: str | Path, *, dtype: torch.dtype | None = None, device: DeviceLike = "cpu"
) -> Tensor:
    """The DiT folder's ``silence_latent.pt`` as a time-major ``[1, T_s, C]`` tensor (stored ``[1, C, T_s]``).

    Read with ``torch.load(weights_only=True, map_location="cpu")`` (a restricted unpickler: plain tensors
    and containers only) and checked: one 3-D tensor whose channel count C is the config's
    ``audio_acoustic_hidden_dim``. ``dtype`` None keeps the stored dtype.
    """
    dit_dir = Path(dit_dir)
    file = dit_dir / SILENCE_LATENT_NAME
    channels = read_v15_config(dit_dir).audio_acoustic_hidden_dim
    if not file.is_file():
        raise CheckpointError(f"{file} is missing (the DiT folder's silence latent). {_hint_for(dit_dir)}")
    try:
        value = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError for disallowed objects, EOFError/RuntimeError when damaged
        raise CheckpointError(
            f"{file} cannot be read as a plain tensor file with torch.load(weights_only=True) ({exc}); it is "
            f"damaged or holds more than a tensor. {_hint_for(dit_dir)}"
        ) from exc
    if not isinstance(value, Tensor) or value.dim() != 3 or value.shape[:2] != (1, channels):
        what = f"a tensor of shape {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise CheckpointError(
            f"{file} holds {what}; expected one tensor [1, {channels}, T_s] ({channels} = the config's "
            f"audio_acoustic_hidden_dim). {_hint_for(dit_dir)}"
        )
    out = value.detach().transpose(1, 2).contiguous()
    return out.to(device=resolve_device(device), dtype=dtype or out.dtype)


# --------------------------------------------------------------------------------------------------------
# strict loading
# --------------------------------------------------------------------------------------------------------


def _fill_strict(
    module: nn.Module, files: Sequence[Path], dtype: torch.dtype, device: torch.device, hint: str
):
    load_state_dict_strict(module, files, dtype=dtype, device=device, hint=hint)
    module.eval()
    module.requires_grad_(False)
    return module


def _placement(dtype: str | torch.dtype, device: DeviceLike) -> tuple[torch.dtype, torch.device]:
    device_ = resolve_device(device)
    return resolve_dtype(dtype, device_), device_


def load_v15_dit(
    dit_dir: str | Path, *, dtype: str | torch.dtype = "float32", device: DeviceLike = "cpu"
) -> AceStep15DiT:
    """The DiT (``AceStep15DiT``) of a DiT folder, built from its ``config.json`` and filled strictly from
    ``model.safetensors`` (or its shards), in eval mode, frozen."""
    from songflow.models.acestep_v15.model import AceStep15DiT

    dit_dir = Path(dit_dir)
    dtype_, device_ = _placement(dtype, device)
    config = read_v15_config(dit_dir)
    files = weight_files(dit_dir, hint=_hint_for(dit_dir))
    with init_empty_weights():
        model = AceStep15DiT(config)
    return _fill_strict(model, files, dtype_, device_, _hint_for(dit_dir))


def save_v15_dit(dit: nn.Module, layout: V15Layout, out: str | Path) -> Path:
    """A 1.5 ``checkpoints/`` root at ``out`` whose DiT folder (``layout``'s DiT folder name) holds ``dit``'s
    weights (``model.safetensors``, written atomically, in their current dtype) beside copies of its
    ``config.json`` and ``silence_latent.pt``; every other folder of ``layout.root`` (VAE, text encoder, 5 Hz
    LMs, other DiTs) is a symlink to the base's, so ``validate_v15(out)`` and the 1.5 loader take it as it is.
    Returns ``out``."""
    import shutil

    out = Path(out).expanduser()
    target = out / layout.dit_name
    target.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, SILENCE_LATENT_NAME):
        shutil.copyfile(layout.dit_dir / name, target / name)
    save_state_dict(dit, target / WEIGHTS_NAME)
    for entry in sorted(layout.root.iterdir()):
        link = out / entry.name
        if entry.name != layout.dit_name and entry.is_dir() and not (link.exists() or link.is_symlink()):
            link.symlink_to(entry.resolve(), target_is_directory=True)
    return out


def load_v15_vae(
    vae_dir: str | Path, *, dtype: str | torch.dtype = "float32", device: DeviceLike = "cpu"
) -> OobleckVAE:
    """The Oobleck VAE (``OobleckVAE``) of a ``vae/`` folder: ``config.json`` + strict
    ``diffusion_pytorch_model.safetensors`` (or its shards), in eval mode, frozen."""
    from songflow.config import read_json_object
    from songflow.models.acestep_v15.vae import OobleckConfig, OobleckVAE

    vae_dir = Path(vae_dir)
    hint = download_hint(DEFAULT_DIT, vae_dir.parent)
    dtype_, device_ = _placement(dtype, device)
    file = vae_dir / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file} is missing (the VAE config). {hint}")
    try:
        config = OobleckConfig.from_dict(read_json_object(file, "VAE config"))
    except ConfigError as exc:
        raise CheckpointError(f"cannot read the VAE config {file}: {exc}. {hint}") from exc
    files = weight_files(vae_dir, VAE_WEIGHTS_NAME, hint)
    with init_empty_weights():
        vae = OobleckVAE(config)
    # diffusers warns on every ModelMixin.to(dtype) when _keep_in_fp32_modules is an empty list
    diffusers_log = logging.getLogger("diffusers.models.modeling_utils")
    level = diffusers_log.level
    diffusers_log.setLevel(logging.ERROR)
    try:
        _fill_strict(vae.autoencoder, files, dtype_, device_, hint)
    finally:
        diffusers_log.setLevel(level)
    vae.eval()
    vae.requires_grad_(False)
    return vae


def load_v15_text_encoder(
    folder: str | Path, *, dtype: str | torch.dtype = "float32", device: DeviceLike = "cpu"
) -> Qwen3TextEncoder:
    """The Qwen3 text encoder (``Qwen3TextEncoder``) of a ``Qwen3-Embedding-0.6B/`` folder: its tokenizer
    (``AutoTokenizer``, local files only) and ``Qwen3Model`` filled strictly from ``model.safetensors``."""
    from transformers import AutoTokenizer

    from songflow.config import read_json_object
    from songflow.models.acestep_v15.text_encoder import Qwen3TextEncoder

    folder = Path(folder)
    hint = download_hint(DEFAULT_DIT, folder.parent)
    dtype_, device_ = _placement(dtype, device)
    missing = [n for n in (CONFIG_NAME, *TOKENIZER_FILES) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"the text encoder folder {folder} misses {', '.join(missing)}. {hint}")
    files = weight_files(folder, WEIGHTS_NAME, hint)
    try:
        config = read_json_object(folder / CONFIG_NAME, "text encoder config")
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        with init_empty_weights():
            encoder = Qwen3TextEncoder.from_config(config, tokenizer)
    except (ConfigError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot build the text encoder of {folder}: {exc}. {hint}") from exc
    _fill_strict(encoder.model, files, dtype_, device_, hint)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def _lm_hint(folder: Path) -> str:
    name = folder.name if folder.name in LM_FOLDERS else DEFAULT_LM
    return f"Download it with `songflow download --model {name} --dir {folder.parent}`."


def load_v15_lm_tokenizer(folder: str | Path) -> Any:
    """The LM folder's Hugging Face fast tokenizer (``AutoTokenizer``, local files only, ``use_fast=True``;
    its chat template from ``chat_template.jinja`` or ``tokenizer_config.json``), as the official loader.

    Raises CheckpointError naming the missing tokenizer files (or why they cannot be read).
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    hint = _lm_hint(folder)
    if not folder.is_dir():
        raise CheckpointError(f"the LM folder {folder} does not exist. {hint}")
    missing = [n for n in TOKENIZER_FILES if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"the LM folder {folder} misses {', '.join(missing)}. {hint}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"cannot read the LM tokenizer of {folder}: {exc}. {hint}") from exc
    if tokenizer.eos_token_id is None:
        raise CheckpointError(
            f"the LM tokenizer of {folder} has no eos token (<|im_end|>); restore its tokenizer_config.json. "
            f"{hint}"
        )
    return tokenizer


def read_v15_lm_config(folder: str | Path) -> dict[str, Any]:
    """The LM folder's ``config.json`` as a dict, checked to describe a ``Qwen3ForCausalLM``."""
    from songflow.config import read_json_object
    from songflow.models.acestep_v15.lm import qwen3_config

    folder = Path(folder)
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file} is missing (the LM config). {_lm_hint(folder)}")
    try:
        config = read_json_object(file, "LM config")
        qwen3_config(config)
    except (ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"cannot read the LM config {file}: {exc}. Restore the config.json that came with the weights "
            f"({_lm_hint(folder)})"
        ) from exc
    return config


def load_v15_lm(
    folder: str | Path,
    *,
    device: DeviceLike = "cpu",
    dtype: str | torch.dtype | None = None,
    cache: CacheKind = "dynamic",
    compile_step: bool = False,
) -> PlannerLM:
    """The 5 Hz LM planner of an ``acestep-5Hz-lm-*`` folder: ``config.json`` (``Qwen3ForCausalLM``), its
    tokenizer (:func:`load_v15_lm_tokenizer`) and ``model.safetensors`` (or its shards) loaded strictly
    (with tied embeddings the file has no ``lm_head.weight``; one there is accepted and dropped).

    ``dtype`` None (or ``"auto"``): float32 on the CPU, bf16 on CUDA (as the official loader). ``cache`` and
    ``compile_step``: see :class:`~songflow.models.acestep_v15.lm.PlannerLM`.
    """
    from songflow.models.acestep_v15.lm import PlannerLM, build_qwen3_causal_lm, retie_lm_head, untie_lm_head

    folder = Path(folder)
    hint = _lm_hint(folder)
    if not folder.is_dir():
        raise CheckpointError(f"the LM folder {folder} does not exist. {hint}")
    dtype_, device_ = _placement(dtype or "auto", device)
    config = read_v15_lm_config(folder)
    tokenizer = load_v15_lm_tokenizer(folder)
    files = weight_files(folder, WEIGHTS_NAME, hint)
    with init_empty_weights():
        model = build_qwen3_causal_lm(config)
    tied = untie_lm_head(model)
    ignore = (r"^lm_head\.weight$",) if tied else ()
    load_state_dict_strict(model, files, dtype=dtype_, device=device_, ignore_patterns=ignore, hint=hint)
    if tied:
        retie_lm_head(model)
    model.eval()
    model.requires_grad_(False)
    return PlannerLM(model, tokenizer, cache=cache, compile_step=compile_step)


@dataclass
class V15Checkpoint:
    """The loaded networks of one ACE-Step 1.5 checkpoint (the LM planner is not loaded here)."""

    layout: V15Layout
    dit: AceStep15DiT
    silence_latent: Tensor  # [1, T_s, C]
    vae: OobleckVAE
    text_encoder: Qwen3TextEncoder | None


def load_v15_checkpoint(
    path: str | Path | V15Layout,
    dit: str | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: DeviceLike = "cpu",
    load_text_encoder: bool = True,
) -> V15Checkpoint:
    """Validate ``path`` (:func:`validate_v15`; a :class:`V15Layout` is validated again) and load the DiT,
    its silence latent, the VAE and the text encoder (skipped with ``load_text_encoder=False``), all in
    ``dtype`` on ``device`` (``"auto"`` allowed)."""
    if isinstance(path, V15Layout):
        lm = str(path.lm_dir) if path.lm_dir is not None else None
        layout = validate_v15(path.root, str(path.dit_dir), lm=lm)
    else:
        layout = validate_v15(path, dit)
    dtype_, device_ = _placement(dtype, device)
    text_encoder = None
    if load_text_encoder:
        text_encoder = load_v15_text_encoder(layout.text_encoder_dir, dtype=dtype_, device=device_)
    return V15Checkpoint(
        layout=layout,
        dit=load_v15_dit(layout.dit_dir, dtype=dtype_, device=device_),
        silence_latent=load_silence_latent(layout.dit_dir, dtype=dtype_, device=device_),
        vae=load_v15_vae(layout.vae_dir, dtype=dtype_, device=device_),
        text_encoder=text_encoder,
    )
