"""Official checkpoint folders -> songflow modules: strict, memory-mapped safetensors loading.

A checkpoint is the official four-folder layout (SPEC §1)::

    <root>/ace_step_transformer/{config.json, diffusion_pytorch_model.safetensors}
    <root>/music_dcae_f8c8/{config.json, diffusion_pytorch_model.safetensors}
    <root>/music_vocoder/{config.json, diffusion_pytorch_model.safetensors}
    <root>/umt5-base/{config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
                      special_tokens_map.json}

Our own trained models are written in the same format (:func:`save_component`), so official weights and ours
load through one code path.

Loading is strict in nanoGPT's ``from_pretrained`` style (DESIGN §3.3): every key of the module must be in the
file and every key of the file must be in the module, with equal shapes. The only exceptions are explicit
regex lists given by the caller: ``ignore_patterns`` (official keys we accept and drop, e.g. the DiT's unused
cross-attention ``add_*`` weights) and ``optional_patterns`` (keys that are loaded when both sides have them
and skipped otherwise, e.g. the REPA projectors or the vocoder's mel buffers). All problems are reported in
one :class:`~songflow.errors.CheckpointError` that names the file.

Only safetensors files are read, never pickles (``.bin``/``.pt``/``.ckpt``). The file is memory-mapped
(``safetensors.safe_open``) and copied sub-module by sub-module straight into the final parameter storage,
so the weights never exist twice in process memory (the mapped pages are reclaimable page cache, released
when the file is closed). Each owning sub-module receives its tensors through its own ``load_state_dict``,
so ``_load_from_state_dict`` overrides and load hooks still run.

Memory-efficient construction. :func:`init_empty_weights` builds a module with its *parameters* on the meta
device (no storage, no random init) while buffers are computed normally; :func:`load_state_dict_strict` then
allocates each parameter once, directly on the target device and in the target dtype, and copies the file's
tensor into it. A module whose *buffers* are on the meta device too (built under ``torch.device("meta")``)
is supported as well: after materialising it, the loader calls the hook ::

    def init_non_persistent_buffers(self) -> None: ...

on every sub-module that defines it (:data:`BUFFER_INIT_HOOK`). The hook must recompute, in place or by
re-registering, every buffer the module computes itself (RoPE tables, mel filterbank, STFT window, ...) on
the device of the existing buffer. A meta buffer that is neither in the file nor covered by such a hook
(on its own module or an ancestor) is a programming error and is reported before anything is allocated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from songflow.errors import CheckpointError, ConfigError
from songflow.fileio import atomic_path

if TYPE_CHECKING:
    from songflow.models.acestep_v1.codec import MusicCodec
    from songflow.models.acestep_v1.text_encoder import UMT5TextEncoder
    from songflow.models.acestep_v1.transformer import ACEStepTransformer

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}

CHECKPOINT_FOLDERS = ("ace_step_transformer", "music_dcae_f8c8", "music_vocoder", "umt5-base")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# The files each folder must hold (the official 0.1.0 loader's explicit list, SPEC §1).
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

# Whether the released vocoder file stores its mel buffers is unknown (SPEC §12): load them when present,
# keep the module's own computed values otherwise.
VOCODER_OPTIONAL_KEY_PATTERNS: tuple[str, ...] = (
    r"^mel_transform\.spectrogram\.window$",
    r"^mel_transform\.mel_scale\.fb$",
)

# Name of the method a module defines to recompute its computed buffers after meta materialisation.
BUFFER_INIT_HOOK = "init_non_persistent_buffers"

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
_ERRORS_SHOWN = 10
_DOWNLOAD_HINT = "Download the official checkpoint with `songflow download` (ACE-Step/ACE-Step-v1-3.5B)."

DeviceLike = str | torch.device
Patterns = Iterable[str | re.Pattern[str]]


# --------------------------------------------------------------------------------------------------------
# device and dtype
# --------------------------------------------------------------------------------------------------------


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: DeviceLike = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else MPS if available, else CPU; ``"cpu"``, ``"cuda[:i]"``, ``"mps"``
    are checked for availability. Raises ConfigError for an unknown or unavailable device."""
    if isinstance(name, torch.device):
        return name
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = text.split(":", 1)[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; use one of 'auto', 'cpu', 'cuda', 'cuda:<index>', 'mps'")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {name!r}: {exc}") from exc
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if kind == "mps" and not _mps_available():
        raise ConfigError(f"device {name!r} requested but MPS is not available; use 'cpu' or 'auto'")
    return device


def _as_dtype(name: str | torch.dtype) -> torch.dtype | None:
    """A torch dtype for a name (or dtype); None for "auto"."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ConfigError(f"unsupported dtype {name}; use one of {sorted(DTYPES)}")
        return name
    text = str(name).strip().lower().removeprefix("torch.")
    if text == "auto":
        return None
    text = _DTYPE_ALIASES.get(text, text)
    if text not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[text]


def resolve_dtype(name: str | torch.dtype, device: DeviceLike) -> torch.dtype:
    """The dtype to run in on ``device``.

    ``"auto"``: bfloat16 on CUDA (float16 if the GPU has no bf16), float32 on CPU and MPS (the official
    pipeline forces float32 on MPS). An explicit bfloat16 becomes float16 on a CUDA GPU without bf16 support
    and float32 on MPS (bf16 kernels are missing there on many macOS/torch versions); a warning says so.
    """
    device = resolve_device(device)
    dtype = _as_dtype(name)
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype == torch.bfloat16:
        if device.type == "mps":
            logger.warning("bfloat16 is not reliably supported on MPS; using float32")
            return torch.float32
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            logger.warning("this GPU has no bfloat16 support; using float16")
            return torch.float16
    return dtype


# --------------------------------------------------------------------------------------------------------
# building modules without allocating their parameters
# --------------------------------------------------------------------------------------------------------

_EMPTY_INIT_LOCK = threading.RLock()


@contextlib.contextmanager
def init_empty_weights() -> Iterator[None]:
    """Build modules inside this block with their parameters on the meta device (no storage, no init cost).

    Buffers are created normally, so buffers a module computes in ``__init__`` (RoPE tables, filterbanks)
    are correct without any hook. Works by wrapping ``nn.Module.register_parameter`` for the duration of the
    block (process-wide: do not construct unrelated modules in other threads meanwhile).
    """
    with _EMPTY_INIT_LOCK:
        original = nn.Module.register_parameter

        def register_on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
            original(self, name, param)
            if param is not None and param.device.type != "meta" and type(param) is nn.Parameter:
                self._parameters[name] = nn.Parameter(
                    param.detach().to("meta"), requires_grad=param.requires_grad
                )

        nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------------------
# strict loading
# --------------------------------------------------------------------------------------------------------


def _compile(patterns: Patterns) -> list[re.Pattern[str]]:
    return [p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns]


def _matches(key: str, patterns: list[re.Pattern[str]]) -> bool:
    return any(p.search(key) for p in patterns)


def _require_safetensors(path: Path) -> None:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: safetensors required. Pickle-based weight files ({path.suffix}) are never loaded "
            "because unpickling can run arbitrary code; use the .safetensors file of the release."
        )
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: not a .safetensors file (safetensors required)")


def _damaged(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} is damaged or incomplete ({exc}); it cannot be read as safetensors. Delete it and download "
        f"it again. {_DOWNLOAD_HINT}"
    )


def _fmt_list(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_ERRORS_SHOWN])
    more = f", ... (+{len(items) - _ERRORS_SHOWN} more)" if len(items) > _ERRORS_SHOWN else ""
    return f"  {title} ({len(items)}): {shown}{more}"


@dataclass
class _LoadPlan:
    load: dict[str, Tensor]  # file key -> the module's tensor (parameter or buffer) to fill
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    kept: list[str]  # optional keys the module has but the file lacks (module value kept)
    dropped: list[str]  # file keys accepted and not loaded (ignored, or optional and absent in the module)


def _plan(
    module: nn.Module,
    file_shapes: Mapping[str, tuple[int, ...]],
    ignore: list[re.Pattern[str]],
    optional: list[re.Pattern[str]],
) -> _LoadPlan:
    expected = module.state_dict(keep_vars=True)
    # optional keys may name non-persistent buffers too (e.g. mel buffers kept out of the state dict)
    everything: dict[str, Tensor] = dict(module.named_parameters(remove_duplicate=False))
    everything.update(dict(module.named_buffers(remove_duplicate=False)))
    plan = _LoadPlan({}, [], [], [], [], [])
    for key, shape in file_shapes.items():
        target = expected.get(key)
        if target is None and _matches(key, optional):
            target = everything.get(key)
            if target is None:
                plan.dropped.append(key)
                continue
        if target is None:
            if _matches(key, ignore):
                plan.dropped.append(key)
            else:
                plan.unexpected.append(key)
            continue
        if tuple(target.shape) != tuple(shape):
            plan.mismatched.append(f"{key}: file {list(shape)} vs model {list(target.shape)}")
            continue
        plan.load[key] = target
    for key in expected:
        if key not in file_shapes:
            (plan.kept if _matches(key, optional) else plan.missing).append(key)
    return plan


def _owner(module: nn.Module, qualified: str) -> tuple[str, nn.Module, str]:
    prefix, _, leaf = qualified.rpartition(".")
    return prefix, (module.get_submodule(prefix) if prefix else module), leaf


def _hook_owner(module: nn.Module, prefix: str) -> str | None:
    """The qualified name of the nearest module (``prefix`` itself or an ancestor) that defines the hook."""
    parts = prefix.split(".") if prefix else []
    for n in range(len(parts), -1, -1):
        name = ".".join(parts[:n])
        sub = module.get_submodule(name) if name else module
        if callable(getattr(sub, BUFFER_INIT_HOOK, None)):
            return name
    return None


def _uninitialised(module: nn.Module, plan: _LoadPlan) -> tuple[set[str], set[str]]:
    """Meta tensors that the file will not fill: (hook owners to call, owners needing reset_parameters()).

    Raises RuntimeError when one of them cannot be initialised (a bug in the model class, not the user's).
    """
    loaded = {id(t) for t in plan.load.values()}
    hooks: set[str] = set()
    resets: set[str] = set()
    orphans: list[str] = []
    for name, buf in module.named_buffers(remove_duplicate=False):
        if buf.is_meta and id(buf) not in loaded:
            prefix, _, _ = _owner(module, name)
            owner = _hook_owner(module, prefix)
            if owner is None:
                orphans.append(f"buffer {name}")
            else:
                hooks.add(owner)
    for name, param in module.named_parameters(remove_duplicate=False):
        if param.is_meta and id(param) not in loaded:
            prefix, sub, _ = _owner(module, name)
            if callable(getattr(sub, "reset_parameters", None)):
                resets.add(prefix)
            else:
                orphans.append(f"parameter {name}")
    if orphans:
        raise RuntimeError(
            f"{type(module).__name__}: {len(orphans)} tensor(s) on the meta device are not in the checkpoint "
            f"and nothing can initialise them: {', '.join(orphans[:_ERRORS_SHOWN])}. Buffers need a "
            f"`{BUFFER_INIT_HOOK}()` method on their module (or an ancestor); parameters need "
            "`reset_parameters()` on their module."
        )
    return hooks, resets


def _materialise(module: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
    """Give every meta tensor uninitialised storage on ``device``; move/cast the others (like ``to_empty``
    for meta tensors and ``.to(device, dtype)`` for real ones; floating tensors get ``dtype``).

    Unlike ``to_empty``/``_apply``, a parameter shared by several modules stays one shared parameter.
    """
    memo: dict[int, Tensor] = {}

    def convert(t: Tensor) -> Tensor:
        target = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        if t.is_meta:
            return torch.empty_like(t, device=device, dtype=target)
        return t.to(device=device, dtype=target)

    def unchanged(t: Tensor) -> bool:
        return not t.is_meta and convert(t) is t

    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is None or unchanged(param):
                continue
            if id(param) not in memo:
                memo[id(param)] = nn.Parameter(convert(param.detach()), requires_grad=param.requires_grad)
            sub._parameters[name] = memo[id(param)]  # type: ignore[assignment]
        for name, buf in sub._buffers.items():
            if buf is None or unchanged(buf):
                continue
            if id(buf) not in memo:
                memo[id(buf)] = convert(buf)
            sub._buffers[name] = memo[id(buf)]


def _copy_from_file(module: nn.Module, keys: Iterable[str], reader: Any) -> None:
    """Copy each file tensor into the module, one owning sub-module at a time.

    Persistent entries go through the owner's ``load_state_dict`` (so its ``_load_from_state_dict`` and
    load hooks run, e.g. dropping a cached folded weight); non-persistent buffers named by optional
    patterns are copied directly. Only one sub-module's tensors are read from the file at a time.
    """
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rpartition(".")[0], []).append(key)
    for prefix, group in groups.items():
        owner = module.get_submodule(prefix) if prefix else module
        persistent: dict[str, Tensor] = {}
        for key in group:
            leaf = key.rpartition(".")[2]
            tensor = reader.get_tensor(key)
            if leaf in owner._buffers and leaf in owner._non_persistent_buffers_set:
                owner._buffers[leaf].copy_(tensor)  # type: ignore[union-attr]
            else:
                persistent[leaf] = tensor
        if persistent:
            result = owner.load_state_dict(persistent, strict=False)
            if result.unexpected_keys:  # cannot happen after _plan unless a module renames keys on load
                raise RuntimeError(
                    f"{type(owner).__name__} at {prefix!r} refused keys {result.unexpected_keys}"
                )


def load_state_dict_strict(
    module: nn.Module,
    path: str | Path,
    *,
    dtype: torch.dtype | str | None,
    device: DeviceLike = "cpu",
    ignore_patterns: Patterns = (),
    optional_patterns: Patterns = (),
) -> None:
    """Fill ``module`` from the safetensors file ``path``, strictly, in place.

    Args:
        module: the module to fill; its parameters and buffers may be on the meta device (see module doc).
        path: a ``.safetensors`` file (pickle formats are refused).
        dtype: floating parameters and buffers end up in this dtype (as ``module.to(dtype)``); None keeps the
            module's own dtypes. Integer tensors are never cast.
        device: where the module ends up (``"auto"`` allowed).
        ignore_patterns: regexes (``re.search``) of file keys that are accepted and dropped when the module
            has no such key.
        optional_patterns: regexes of keys loaded when both the file and the module have them; a key only in
            the file is dropped, a key only in the module keeps the module's value (re-initialised with
            ``reset_parameters()``/the buffer hook if it was on the meta device). May name non-persistent
            buffers.

    Raises:
        CheckpointError: wrong format, damaged file, or any missing/unexpected/mis-shaped key (all listed in
            one message with the file name).
    """
    path = Path(path)
    _require_safetensors(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}. {_DOWNLOAD_HINT}")
    device = resolve_device(device)
    dtype_ = _as_dtype(dtype) if dtype is not None else None
    ignore, optional = _compile(ignore_patterns), _compile(optional_patterns)

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            file_shapes = {k: tuple(reader.get_slice(k).get_shape()) for k in reader.keys()}
            plan = _plan(module, file_shapes, ignore, optional)
            problems = [
                _fmt_list(title, items)
                for title, items in (
                    ("missing from the file", plan.missing),
                    ("unexpected in the file", plan.unexpected),
                    ("shape mismatches", plan.mismatched),
                )
                if items
            ]
            if problems:
                raise CheckpointError(
                    f"{path} does not match {type(module).__name__} "
                    f"({len(file_shapes)} tensors in the file, {len(module.state_dict())} in the model):\n"
                    + "\n".join(problems)
                    + "\nCheck that the file belongs to this component and that its config.json is the one "
                    "saved with it."
                )
            hooks, resets = _uninitialised(module, plan)
            _materialise(module, device, dtype_)
            with torch.no_grad():
                for name in sorted(hooks, key=len):
                    getattr(module.get_submodule(name) if name else module, BUFFER_INIT_HOOK)()
                for name in resets:
                    (module.get_submodule(name) if name else module).reset_parameters()  # type: ignore[operator]
                if hooks or resets:  # a hook may have re-registered buffers in another dtype/device
                    _materialise(module, device, dtype_)
                _copy_from_file(module, plan.load, reader)
    except SafetensorError as exc:
        raise _damaged(path, exc) from exc
    if plan.dropped:
        logger.debug("%s: dropped %d accepted key(s): %s", path, len(plan.dropped), plan.dropped[:5])
    if plan.kept:
        logger.debug("%s: %d optional key(s) not in the file kept from the model", path, len(plan.kept))


# --------------------------------------------------------------------------------------------------------
# checkpoint folders
# --------------------------------------------------------------------------------------------------------


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
        raise CheckpointError(f"checkpoint folder {path} does not exist. {_DOWNLOAD_HINT}")
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
            str(p.relative_to(path))
            for folder in present
            for p in (path / folder).iterdir()
            if p.suffix.lower() in _PICKLE_SUFFIXES
        )
        if pickles:
            lines.append(f"  found pickle files instead ({', '.join(pickles)}): safetensors required")
    lines.append(f"  expected: {', '.join(f'{k}/' for k in CHECKPOINT_FOLDERS)} each with its files")
    lines.append(_DOWNLOAD_HINT)
    raise CheckpointError("\n".join(lines))


def _component_file(folder: Path, name: str) -> Path:
    file = folder / name
    if not file.is_file():
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix.lower() in _PICKLE_SUFFIXES)
        extra = f" (found {', '.join(pickles)}: safetensors required)" if pickles else ""
        if not folder.is_dir():
            raise CheckpointError(f"component folder {folder} does not exist. {_DOWNLOAD_HINT}")
        raise CheckpointError(f"{file} is missing{extra}. {_DOWNLOAD_HINT}")
    return file


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


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
    weights = _component_file(folder, WEIGHTS_NAME)
    with init_empty_weights():
        model = dit.ACEStepTransformer(config, lyric_config, with_projectors=with_projectors)
    load_state_dict_strict(
        model,
        weights,
        dtype=dtype_,
        device=device,
        ignore_patterns=dit.UNUSED_CHECKPOINT_KEY_PATTERNS,
        optional_patterns=dit.OPTIONAL_CHECKPOINT_KEY_PATTERNS,
    )
    return _frozen(model)  # type: ignore[return-value]


def load_dcae(
    folder: str | Path, dtype: str | torch.dtype = "float32", device: DeviceLike = "cpu"
) -> nn.Module:
    """The mel autoencoder from a ``music_dcae_f8c8`` folder (diffusers ``AutoencoderDC`` keys), frozen."""
    from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig

    folder = Path(folder)
    device = resolve_device(device)
    config = DCAEConfig.from_json(_component_file(folder, CONFIG_NAME))
    weights = _component_file(folder, WEIGHTS_NAME)
    with init_empty_weights():
        model = DCAE(config)
    load_state_dict_strict(model, weights, dtype=resolve_dtype(dtype, device), device=device)
    return _frozen(model)


def load_vocoder(
    folder: str | Path, dtype: str | torch.dtype = "float32", device: DeviceLike = "cpu"
) -> nn.Module:
    """The vocoder from a ``music_vocoder`` folder (legacy weight-norm keys), frozen. The mel buffers are
    taken from the file when it has them, else the module's computed values are kept."""
    from songflow.models.acestep_v1 import vocoder as voc

    folder = Path(folder)
    device = resolve_device(device)
    config = voc.VocoderConfig.from_json(_component_file(folder, CONFIG_NAME))
    weights = _component_file(folder, WEIGHTS_NAME)
    optional = tuple(getattr(voc, "OPTIONAL_CHECKPOINT_KEY_PATTERNS", ())) + VOCODER_OPTIONAL_KEY_PATTERNS
    with init_empty_weights():
        model = voc.Vocoder(config)
    load_state_dict_strict(
        model, weights, dtype=resolve_dtype(dtype, device), device=device, optional_patterns=optional
    )
    return _frozen(model)


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
    return _frozen(codec)  # type: ignore[return-value]


def save_component(module: nn.Module, config: Any, folder: str | Path) -> Path:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` into ``folder`` (atomically each), in
    the official layout, so :func:`load_transformer`/:func:`load_codec` read it back.

    ``config`` is a :class:`~songflow.config.JsonConfig` (or a plain dict). Tensors are written in their
    current dtype; tensors sharing storage are written as separate copies.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in module.state_dict().items():
        if value.is_meta:
            raise ValueError(
                f"cannot save {key}: it is on the meta device (load or initialise the module first)"
            )
        t = value.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if ident in seen:
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        tensors[key] = t
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    if hasattr(config, "to_json"):
        config.to_json(folder / CONFIG_NAME)
    elif isinstance(config, Mapping):
        from songflow.fileio import atomic_write_text

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


def state_dict_shapes(module: nn.Module) -> dict[str, list[int]]:
    """``{key: shape}`` of a module's state dict (works on the meta device); the format of keys/*.json."""
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module entirely on the meta device (parameters and buffers), e.g. to compare key lists."""
    with torch.device("meta"):
        return factory()


def safetensors_summary(path: Path) -> tuple[int, tuple[str, ...]]:
    """(number of parameters, stored dtypes) of a safetensors file, read from its header only."""
    import math

    from safetensors import safe_open

    _require_safetensors(path)
    n, dtypes = 0, set()
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                n += math.prod(sl.get_shape())
                dtypes.add(str(sl.get_dtype()))
    except Exception as exc:  # noqa: BLE001 - a damaged header is reported, not raised from deep inside
        raise _damaged(path, exc) from exc
    return n, tuple(sorted(dtypes))
