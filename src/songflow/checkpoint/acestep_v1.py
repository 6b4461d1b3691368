"""The ACE-Step v1 checkpoint folder: its layout, its validation, and loading its components.

A checkpoint is the official four-folder layout::

    <root>/ace_step_transformer/{config.json, diffusion_pytorch_model.safetensors}
    <root>/music_dcae_f8c8/{config.json, diffusion_pytorch_model.safetensors}
    <root>/music_vocoder/{config.json, diffusion_pytorch_model.safetensors}
    <root>/umt5-base/{config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
                      special_tokens_map.json}

Our own trained models are written in the same format (:func:`save_component`), so official weights and ours
load through one code path: each component is built with its parameters on the meta device
(:func:`~songflow.checkpoint.strict.init_empty_weights`) and filled by
:func:`~songflow.checkpoint.strict.load_state_dict_strict` (strict keys and shapes, one error report,
memory-mapped safetensors only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from songflow.checkpoint.device import DeviceLike, resolve_device, resolve_dtype
from songflow.checkpoint.strict import init_empty_weights, is_pickle, load_state_dict_strict, save_state_dict
from songflow.errors import CheckpointError
from songflow.fileio import atomic_write_text

if TYPE_CHECKING:
    from songflow.models.acestep_v1.codec import MusicCodec
    from songflow.models.acestep_v1.dcae import DCAE
    from songflow.models.acestep_v1.text_encoder import UMT5TextEncoder
    from songflow.models.acestep_v1.transformer import ACEStepTransformer
    from songflow.models.acestep_v1.vocoder import Vocoder

M = TypeVar("M", bound=nn.Module)

CHECKPOINT_FOLDERS = ("ace_step_transformer", "music_dcae_f8c8", "music_vocoder", "umt5-base")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# The files each folder must hold (the official 0.1.0 loader's explicit list).
CHECKPOINT_FILES: dict[str, tuple[str, ...]] = {
    "ace_step_transformer": (CONFIG_NAME, WEIGHTS_NAME),
    "music_dcae_f8c8": (CONFIG_NAME, WEIGHTS_NAME),
    "music_vocoder": (CONFIG_NAME, WEIGHTS_NAME),
    "umt5-base": (
        CONFIG_NAME,
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "tokenizer.json",
    ),
}
# Files read when present (not in the official release; written for small models, see lyric_encoder.py).
OPTIONAL_CHECKPOINT_FILES: tuple[str, ...] = ("ace_step_transformer/lyric_encoder_config.json",)
LYRIC_ENCODER_CONFIG_NAME = "lyric_encoder_config.json"

# Whether the released vocoder file stores its mel buffers is unknown: load them when present,
# keep the module's own computed values otherwise.
VOCODER_OPTIONAL_KEY_PATTERNS: tuple[str, ...] = (
    r"^mel_transform\.spectrogram\.window$",
    r"^mel_transform\.mel_scale\.fb$",
)

DOWNLOAD_HINT = "Download the official checkpoint with `songflow download` (ACE-Step/ACE-Step-v1-3.5B)."


def _hf_cache_snapshot(path: Path) -> Path | None:
    """A complete checkpoint inside an HF cache folder (``models--ACE-Step--.../snapshots/<rev>``), if any."""
    roots = [path] if path.name.startswith("models--") else sorted(path.glob("models--*"))
    for root in roots:
        snapshots = root / "snapshots"
        if not snapshots.is_dir():
            continue
        candidates = []
        ref = root / "refs" / "main"
        if ref.is_file():
            candidates.append(snapshots / ref.read_text(encoding="utf-8").strip())
        candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in candidates:
            if snap.is_dir() and not _missing_files(snap):
                return snap
    return None


def _missing_files(root: Path) -> list[str]:
    return [
        f"{folder}/{name}"
        for folder, names in CHECKPOINT_FILES.items()
        for name in names
        if not (root / folder / name).is_file()
    ]


def validate_checkpoint_dir(path: str | Path) -> Path:
    """Check that ``path`` is a complete official checkpoint folder and return it (resolved).

    An HF cache folder holding one complete snapshot (the layout of the official ``snapshot_download(...,
    cache_dir=...)``) is accepted and resolved to that snapshot. Raises CheckpointError naming the missing
    folders and files, or saying that ``path`` is one component folder rather than the checkpoint root.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint folder {path} does not exist. {DOWNLOAD_HINT}")
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint path {path} is a file; pass the folder that holds {CHECKPOINT_FOLDERS}"
        )
    path = path.resolve()
    present = [f for f in CHECKPOINT_FOLDERS if (path / f).is_dir()]
    if not present:
        if path.name in CHECKPOINT_FOLDERS or (path / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"{path} looks like a single component folder, not a checkpoint root. Pass the folder that "
                f"contains {', '.join(CHECKPOINT_FOLDERS)} (probably {path.parent})."
            )
        snapshot = _hf_cache_snapshot(path)
        if snapshot is not None:
            return snapshot
    missing_folders = [f for f in CHECKPOINT_FOLDERS if f not in present]
    missing_files = [m for m in _missing_files(path) if m.split("/", 1)[0] in present]
    if not missing_folders and not missing_files:
        return path
    lines = [f"{path} is not a complete ACE-Step checkpoint folder:"]
    if missing_folders:
        lines.append(f"  missing folders: {', '.join(missing_folders)}")
    if missing_files:
        lines.append(f"  missing files: {', '.join(missing_files)}")
        pickles = sorted(
            str(p.relative_to(path)) for folder in present for p in (path / folder).iterdir() if is_pickle(p)
        )
        if pickles:
            lines.append(f"  found pickle files instead ({', '.join(pickles)}): safetensors required")
    lines.append(f"  expected: {', '.join(f'{k}/' for k in CHECKPOINT_FOLDERS)} each with its files")
    lines.append(DOWNLOAD_HINT)
    raise CheckpointError("\n".join(lines))


def _component_file(folder: Path, name: str) -> Path:
    file = folder / name
    if not file.is_file():
        pickles = sorted(p.name for p in folder.glob("*") if is_pickle(p))
        extra = f" (found {', '.join(pickles)}: safetensors required)" if pickles else ""
        if not folder.is_dir():
            raise CheckpointError(f"component folder {folder} does not exist. {DOWNLOAD_HINT}")
        raise CheckpointError(f"{file} is missing{extra}. {DOWNLOAD_HINT}")
    return file


def _frozen(module: M) -> M:
    module.eval()
    module.requires_grad_(False)
    return module


def _load_component(
    build: Callable[[], M],
    weights: Path,
    dtype: torch.dtype,
    device: torch.device,
    *,
    ignore_patterns: Iterable[str | re.Pattern[str]] = (),
    optional_patterns: Iterable[str | re.Pattern[str]] = (),
) -> M:
    """``build()`` with its parameters on the meta device, filled strictly from ``weights``, frozen."""
    with init_empty_weights():
        model = build()
    load_state_dict_strict(
        model,
        weights,
        dtype=dtype,
        device=device,
        ignore_patterns=ignore_patterns,
        optional_patterns=optional_patterns,
        hint=DOWNLOAD_HINT,
    )
    return _frozen(model)


def load_transformer(
    folder: str | Path,
    dtype: str | torch.dtype = "float32",
    device: DeviceLike = "cpu",
    *,
    with_projectors: bool = False,
) -> ACEStepTransformer:
    """The DiT (+ lyric Conformer) from an ``ace_step_transformer`` folder, in eval mode, frozen.

    Reads ``config.json`` and, when present, ``lyric_encoder_config.json`` (else the official Conformer
    sizes). The unused cross-attention ``add_*`` weights are dropped; the REPA projectors are loaded only
    with ``with_projectors=True`` (training).
    """
    from songflow.models.acestep_v1 import transformer as dit
    from songflow.models.acestep_v1.lyric_encoder import LyricEncoderConfig

    folder = Path(folder)
    device = resolve_device(device)
    dtype_ = resolve_dtype(dtype, device)
    config = dit.TransformerConfig.from_json(_component_file(folder, CONFIG_NAME))
    lyric_file = folder / LYRIC_ENCODER_CONFIG_NAME
    if lyric_file.is_file():
        lyric_config = LyricEncoderConfig.from_file(lyric_file)
    else:
        lyric_config = LyricEncoderConfig.official(input_size=config.lyric_hidden_size)
    return _load_component(
        lambda: dit.ACEStepTransformer(config, lyric_config, with_projectors=with_projectors),
        _component_file(folder, WEIGHTS_NAME),
        dtype_,
        device,
        ignore_patterns=dit.UNUSED_CHECKPOINT_KEY_PATTERNS,
        optional_patterns=dit.OPTIONAL_CHECKPOINT_KEY_PATTERNS,
    )


def load_dcae(folder: str | Path, dtype: str | torch.dtype = "float32", device: DeviceLike = "cpu") -> DCAE:
    """The mel autoencoder from a ``music_dcae_f8c8`` folder (diffusers ``AutoencoderDC`` keys), frozen."""
    from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig

    folder = Path(folder)
    device = resolve_device(device)
    config = DCAEConfig.from_json(_component_file(folder, CONFIG_NAME))
    weights = _component_file(folder, WEIGHTS_NAME)
    return _load_component(lambda: DCAE(config), weights, resolve_dtype(dtype, device), device)


def load_vocoder(
    folder: str | Path, dtype: str | torch.dtype = "float32", device: DeviceLike = "cpu"
) -> Vocoder:
    """The vocoder from a ``music_vocoder`` folder (legacy weight-norm keys), frozen. The mel buffers are
    taken from the file when it has them, else the module's computed values are kept."""
    from songflow.models.acestep_v1 import vocoder as voc

    folder = Path(folder)
    device = resolve_device(device)
    config = voc.VocoderConfig.from_json(_component_file(folder, CONFIG_NAME))
    weights = _component_file(folder, WEIGHTS_NAME)
    optional = tuple(getattr(voc, "OPTIONAL_CHECKPOINT_KEY_PATTERNS", ())) + VOCODER_OPTIONAL_KEY_PATTERNS
    return _load_component(
        lambda: voc.Vocoder(config), weights, resolve_dtype(dtype, device), device, optional_patterns=optional
    )


def load_codec(
    dcae_folder: str | Path,
    vocoder_folder: str | Path,
    dtype: str | torch.dtype = "float32",
    device: DeviceLike = "cpu",
) -> MusicCodec:
    """``MusicCodec(dcae, vocoder)`` from the ``music_dcae_f8c8`` and ``music_vocoder`` folders, frozen."""
    from songflow.models.acestep_v1.codec import MusicCodec

    device = resolve_device(device)
    dcae = load_dcae(dcae_folder, dtype, device)
    vocoder = load_vocoder(vocoder_folder, dtype, device)
    codec = MusicCodec(dcae, vocoder)
    codec.to(device)  # any buffers the wrapper itself computes
    return _frozen(codec)


def save_component(module: nn.Module, config: Any, folder: str | Path) -> Path:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` into ``folder`` (atomically each), in
    the official layout, so :func:`load_transformer`/:func:`load_codec` read it back.

    ``config`` is a :class:`~songflow.config.JsonConfig` (or a plain dict). Tensors are written in their
    current dtype; tensors sharing storage are written as separate copies.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(module, folder / WEIGHTS_NAME)
    if hasattr(config, "to_json"):
        config.to_json(folder / CONFIG_NAME)
    elif isinstance(config, Mapping):
        atomic_write_text(folder / CONFIG_NAME, json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    else:
        raise TypeError(f"config must be a JsonConfig or a dict, not {type(config).__name__}")
    return folder


@dataclass
class Checkpoint:
    """The loaded networks of one checkpoint folder."""

    transformer: ACEStepTransformer
    codec: MusicCodec
    text_encoder: UMT5TextEncoder | None
    root: Path


def load_checkpoint(
    path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: DeviceLike = "cpu",
    load_text_encoder: bool = True,
) -> Checkpoint:
    """Validate ``path`` (:func:`validate_checkpoint_dir`) and load the DiT, the codec and the UMT5 text
    encoder (skipped with ``load_text_encoder=False``) in ``dtype`` on ``device`` (``"auto"`` allowed)."""
    root = validate_checkpoint_dir(path)
    device_ = resolve_device(device)
    dtype_ = resolve_dtype(dtype, device_)
    transformer = load_transformer(root / "ace_step_transformer", dtype_, device_)
    codec = load_codec(root / "music_dcae_f8c8", root / "music_vocoder", dtype_, device_)
    text_encoder = None
    if load_text_encoder:
        from songflow.models.acestep_v1.text_encoder import UMT5TextEncoder

        text_encoder = UMT5TextEncoder(root / "umt5-base", dtype=dtype_, device=device_)
        text_encoder.load()
    return Checkpoint(transformer=transformer, codec=codec, text_encoder=text_encoder, root=root)
