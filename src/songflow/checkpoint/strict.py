"""Strict, memory-mapped safetensors reading and writing, for base weights and adapter files alike.

Loading is strict in nanoGPT's ``from_pretrained`` style: every key of the module must be in the file and
every key of the file must be in the module, with equal shapes. The only exceptions are explicit regex lists
given by the caller: ``ignore_patterns`` (file keys accepted and dropped, e.g. the DiT's unused
cross-attention ``add_*`` weights) and ``optional_patterns`` (keys loaded when both sides have them and
skipped otherwise, e.g. the REPA projectors or the vocoder's mel buffers). All problems are reported in one
:class:`~songflow.errors.CheckpointError` that names the file.

Only safetensors files are read, never pickles (``.bin``/``.pt``/``.ckpt``): :func:`require_safetensors`
refuses them with the reason, for weights and LoRA files alike. The file is memory-mapped
(``safetensors.safe_open``) and its tensors are copied sub-module by sub-module into the module, so the
weights never exist twice in process memory (the mapped pages are reclaimable page cache, released when the
file is closed). Each owning sub-module receives its tensors through its own ``load_state_dict``, so
``_load_from_state_dict`` overrides and load hooks still run.

Memory-efficient construction: build the module inside :func:`init_empty_weights` (its *parameters* go to
the meta device, no storage and no random init, while buffers it computes in ``__init__``, such as STFT
windows and filterbanks, are computed normally) or entirely under ``torch.device("meta")`` (then it must
compute no buffer that the file lacks). :func:`load_state_dict_strict` hands each file tensor, already on
the target device and in the target dtype, to ``load_state_dict(..., assign=True)``, so every parameter is
allocated once, and then moves what the file did not hold (computed buffers) with ``Module.to``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from songflow.checkpoint.device import DeviceLike, parse_dtype, resolve_device
from songflow.errors import CheckpointError
from songflow.fileio import atomic_path

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
ERRORS_SHOWN = 10

Patterns = Iterable[str | re.Pattern[str]]


# --------------------------------------------------------------------------------------------------------
# file checks and error reports
# --------------------------------------------------------------------------------------------------------


def is_pickle(path: Path) -> bool:
    """Whether ``path`` has the suffix of a pickle-based weight format."""
    return path.suffix.lower() in PICKLE_SUFFIXES


def require_safetensors(path: Path, what: str = "weight") -> None:
    """Refuse anything but a ``.safetensors`` file; a pickle is refused with the reason (CheckpointError)."""
    if is_pickle(path):
        raise CheckpointError(
            f"{path}: safetensors required. Pickle-based {what} files ({path.suffix}) are never loaded "
            "because unpickling can run arbitrary code; use the .safetensors file of the release (or "
            "convert it to .safetensors)."
        )
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: not a .safetensors file (safetensors required)")


def damaged(path: Path, exc: BaseException, hint: str = "") -> CheckpointError:
    """The error for a file that cannot be read as safetensors."""
    return CheckpointError(
        f"{path} is damaged or incomplete ({exc}); it cannot be read as safetensors. Delete it and download "
        "it again." + (f" {hint}" if hint else "")
    )


def format_keys(title: str, items: Sequence[str]) -> str:
    """One report line: ``title (count): first keys, ... (+n more)``."""
    shown = ", ".join(items[:ERRORS_SHOWN])
    more = f", ... (+{len(items) - ERRORS_SHOWN} more)" if len(items) > ERRORS_SHOWN else ""
    return f"  {title} ({len(items)}): {shown}{more}"


def format_problems(sections: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    """The report lines of the non-empty ``(title, keys)`` sections."""
    return [format_keys(title, items) for title, items in sections if items]


# --------------------------------------------------------------------------------------------------------
# reading and writing files
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors header says: each tensor's shape and dtype, and the free-form metadata."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def open_safetensors(path: Path, hint: str = "") -> Iterator[Any]:
    """``safe_open(path)`` on the CPU (memory-mapped); a damaged file raises :func:`damaged`'s error."""
    from safetensors import SafetensorError, safe_open

    try:
        reader = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises several types for damaged files
        raise damaged(path, exc, hint) from exc
    try:
        with reader:
            yield reader
    except SafetensorError as exc:
        raise damaged(path, exc, hint) from exc


_FILE_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


class TensorFile:
    """The tensors of a safetensors file read with plain positional reads, one at a time.

    ``safe_open`` memory-maps the file, and every page it touches stays in the process's resident set
    until the file is closed: loading a 4.8 GB bf16 file into float32 parameters then peaks at the model
    plus the whole file. Reading each tensor into its own buffer and dropping it after the copy keeps the
    peak at the model plus one tensor. The header was already checked by :func:`open_safetensors`.
    """

    def __init__(self, path: Path, hint: str = ""):
        self.path, self.hint = path, hint
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.base, self.entries = 8 + n, header

    def get_tensor(self, key: str) -> Tensor:
        entry = self.entries[key]
        begin, end = entry["data_offsets"]
        dtype, shape = _FILE_DTYPES[entry["dtype"]], tuple(entry["shape"])
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        buf = bytearray(end - begin)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.base + begin)
            got = f.readinto(buf)
        if got != len(buf):
            raise damaged(self.path, EOFError(f"tensor {key} is cut short"), self.hint)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)


class _ShardTensors:
    """``get_tensor(key)`` over the :class:`TensorFile` of each shard that holds ``key``."""

    def __init__(self) -> None:
        self._owner: dict[str, TensorFile] = {}

    def add(self, file: TensorFile) -> None:
        for key in file.entries:
            self._owner[key] = file

    def get_tensor(self, key: str) -> Tensor:
        return self._owner[key].get_tensor(key)


def read_header(path: Path, hint: str = "") -> SafetensorsHeader:
    """The header of the safetensors file ``path`` (no tensor data is read)."""
    require_safetensors(path)
    with open_safetensors(path, hint) as reader:
        shapes, dtypes = {}, {}
        for key in reader.keys():
            piece = reader.get_slice(key)
            shapes[key] = tuple(piece.get_shape())
            dtypes[key] = str(piece.get_dtype())
        return SafetensorsHeader(shapes, dtypes, dict(reader.metadata() or {}))


def safetensors_summary(path: Path) -> tuple[int, tuple[str, ...]]:
    """(number of parameters, stored dtypes) of a safetensors file, read from its header only."""
    header = read_header(Path(path))
    return sum(math.prod(s) for s in header.shapes.values()), tuple(sorted(set(header.dtypes.values())))


def write_safetensors(tensors: Mapping[str, Tensor], path: Path, metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` (CPU, contiguous, no shared storage) to ``path`` atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
    return path


def save_state_dict(module: nn.Module, path: Path) -> Path:
    """Write ``module.state_dict()`` to the safetensors file ``path`` (atomically) in the stored dtypes.

    Tensors sharing storage are written as separate copies; a tensor on the meta device is a ValueError.
    """
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
    return write_safetensors(tensors, path, {"format": "pt"})


# --------------------------------------------------------------------------------------------------------
# building modules without allocating their parameters
# --------------------------------------------------------------------------------------------------------

_EMPTY_INIT_LOCK = threading.RLock()


def _parameter_on_meta(module: nn.Module, name: str, param: nn.Parameter) -> nn.Parameter | None:
    if param.device.type == "meta" or type(param) is not nn.Parameter:
        return None
    return nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)


@contextlib.contextmanager
def init_empty_weights() -> Iterator[None]:
    """Build modules inside this block with their parameters on the meta device (no storage, no init cost).

    Buffers are created normally, so buffers a module computes in ``__init__`` (STFT windows, filterbanks)
    are correct after loading without any help. Uses torch's global parameter-registration hook for the
    duration of the block (process-wide: do not construct unrelated modules in other threads meanwhile).
    """
    from torch.nn.modules.module import register_module_parameter_registration_hook

    with _EMPTY_INIT_LOCK:
        handle = register_module_parameter_registration_hook(_parameter_on_meta)  # type: ignore[arg-type]
        try:
            yield
        finally:
            handle.remove()


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module entirely on the meta device (parameters and buffers), e.g. to compare key lists."""
    with torch.device("meta"):
        return factory()


def state_dict_shapes(module: nn.Module) -> dict[str, list[int]]:
    """``{key: shape}`` of a module's state dict (works on the meta device); the format of keys/*.json."""
    return {k: list(v.shape) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------------
# strict loading
# --------------------------------------------------------------------------------------------------------


def _compile(patterns: Patterns) -> list[re.Pattern[str]]:
    return [p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns]


def _matches(key: str, patterns: list[re.Pattern[str]]) -> bool:
    return any(p.search(key) for p in patterns)


@dataclass
class _KeyPlan:
    load: dict[str, Tensor] = field(default_factory=dict)  # file key -> the module tensor it fills
    aliases: dict[str, str] = field(default_factory=dict)  # key of a tied tensor -> key filling it
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # optional keys only in the module (module value kept)
    dropped: list[str] = field(default_factory=list)  # file keys accepted and not loaded

    def problems(self) -> list[str]:
        return format_problems(
            (
                ("missing from the file", self.missing),
                ("unexpected in the file", self.unexpected),
                ("shape mismatches", self.mismatched),
            )
        )


def _plan_keys(
    module: nn.Module,
    file_shapes: Mapping[str, tuple[int, ...]],
    ignore: list[re.Pattern[str]],
    optional: list[re.Pattern[str]],
) -> _KeyPlan:
    expected = module.state_dict(keep_vars=True)
    # optional keys may name non-persistent buffers too (e.g. mel buffers kept out of the state dict)
    everything: dict[str, Tensor] = dict(module.named_parameters(remove_duplicate=False))
    everything.update(dict(module.named_buffers(remove_duplicate=False)))
    plan = _KeyPlan()
    for key, shape in file_shapes.items():
        target = expected.get(key)
        if target is None and _matches(key, optional):
            target = everything.get(key)
            if target is None:
                plan.dropped.append(key)
                continue
        if target is None:
            (plan.dropped if _matches(key, ignore) else plan.unexpected).append(key)
        elif tuple(target.shape) != tuple(shape):
            plan.mismatched.append(f"{key}: file {list(shape)} vs model {list(target.shape)}")
        else:
            plan.load[key] = target
    for key in expected:
        if key not in file_shapes:
            (plan.kept if _matches(key, optional) else plan.missing).append(key)
    first: dict[int, str] = {}
    for key in everything:  # a tied tensor is filled once, from the first of its keys in module order
        target = plan.load.get(key)
        if target is None:
            continue
        if id(target) in first:
            plan.aliases[key] = first[id(target)]
        else:
            first[id(target)] = key
    return plan


def _owner(module: nn.Module, qualified: str) -> tuple[str, nn.Module, str]:
    prefix, _, leaf = qualified.rpartition(".")
    return prefix, (module.get_submodule(prefix) if prefix else module), leaf


def _modules_to_reset(module: nn.Module, plan: _KeyPlan) -> list[str]:
    """The modules whose meta parameters the file does not fill (they get ``reset_parameters()``).

    Raises RuntimeError for a meta tensor that nothing can initialise (a bug in the model class or in how
    it was built, not the user's).
    """
    filled = {id(t) for t in plan.load.values()}
    resets: list[str] = []
    orphans: list[str] = []
    for name, buf in module.named_buffers(remove_duplicate=False):
        if buf.is_meta and id(buf) not in filled:
            orphans.append(f"buffer {name}")
    for name, param in module.named_parameters(remove_duplicate=False):
        if param.is_meta and id(param) not in filled:
            prefix, sub, _ = _owner(module, name)
            if not callable(getattr(sub, "reset_parameters", None)):
                orphans.append(f"parameter {name}")
            elif prefix not in resets:
                resets.append(prefix)
    if orphans:
        raise RuntimeError(
            f"{type(module).__name__}: {len(orphans)} tensor(s) on the meta device are not in the checkpoint "
            f"and nothing can initialise them: {', '.join(orphans[:ERRORS_SHOWN])}. Build the module with "
            "init_empty_weights() (not under torch.device('meta')) so that the buffers it computes are real; "
            "parameters need `reset_parameters()` on their module."
        )
    return resets


def _target_dtype(tensor: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """Floating tensors end up in ``dtype`` (when given); all others keep their own dtype."""
    return dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype


def _reset(owner: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
    """Give ``owner``'s own meta parameters storage on ``device`` and re-initialise them."""
    for leaf, param in owner._parameters.items():
        if param is not None and param.is_meta:
            empty = torch.empty_like(param, device=device, dtype=_target_dtype(param, dtype))
            owner._parameters[leaf] = nn.Parameter(empty, requires_grad=param.requires_grad)
    owner.reset_parameters()  # type: ignore[operator]


def _fill_from_file(
    module: nn.Module, plan: _KeyPlan, reader: Any, device: torch.device, dtype: torch.dtype | None
) -> None:
    """Put each file tensor into the module, one owning sub-module at a time.

    Persistent entries go through the owner's ``load_state_dict(assign=True)`` (so its
    ``_load_from_state_dict`` and load hooks run, e.g. dropping a cached folded weight); non-persistent
    buffers named by optional patterns are assigned directly. Only one sub-module's tensors are read from
    the file at a time, each copied once onto ``device`` in its final dtype.
    """
    groups: dict[str, list[str]] = {}
    for key in plan.load:
        if key not in plan.aliases:
            groups.setdefault(key.rpartition(".")[0], []).append(key)
    for prefix, group in groups.items():
        owner = module.get_submodule(prefix) if prefix else module
        persistent: dict[str, Tensor] = {}
        for key in group:
            leaf = key.rpartition(".")[2]
            target = _target_dtype(plan.load[key], dtype)
            value = reader.get_tensor(key).to(device=device, dtype=target, copy=True)
            if leaf in owner._buffers and leaf in owner._non_persistent_buffers_set:
                owner._buffers[leaf] = value
            else:
                persistent[leaf] = value
        if persistent:
            result = owner.load_state_dict(persistent, strict=False, assign=True)
            if result.unexpected_keys:  # cannot happen after _plan_keys unless a module renames keys on load
                raise RuntimeError(
                    f"{type(owner).__name__} at {prefix!r} refused keys {result.unexpected_keys}"
                )
    for alias, key in plan.aliases.items():
        _, owner, leaf = _owner(module, alias)
        _, source, source_leaf = _owner(module, key)
        if leaf in owner._parameters:
            owner._parameters[leaf] = source._parameters[source_leaf]
        else:
            owner._buffers[leaf] = source._buffers[source_leaf]


def load_state_dict_strict(
    module: nn.Module,
    path: str | Path | Sequence[str | Path],
    *,
    dtype: torch.dtype | str | None,
    device: DeviceLike = "cpu",
    ignore_patterns: Patterns = (),
    optional_patterns: Patterns = (),
    hint: str = "",
) -> None:
    """Fill ``module`` from the safetensors file ``path`` (or the shards of one checkpoint), strictly,
    in place.

    Args:
        module: the module to fill; its parameters (and buffers the file holds) may be on the meta device
            (see the module doc).
        path: a ``.safetensors`` file, or a sequence of shard files that together hold the state dict
            (pickle formats are refused).
        dtype: floating parameters and buffers end up in this dtype (as ``module.to(dtype)``); None keeps the
            module's own dtypes. Integer tensors are never cast.
        device: where the module ends up (``"auto"`` allowed).
        ignore_patterns: regexes (``re.search``) of file keys that are accepted and dropped when the module
            has no such key.
        optional_patterns: regexes of keys loaded when both the file and the module have them; a key only in
            the file is dropped, a key only in the module keeps the module's value (re-initialised with
            ``reset_parameters()`` if it was on the meta device). May name non-persistent buffers.
        hint: appended to the messages about a missing or damaged file (e.g. how to download it).

    Raises:
        CheckpointError: wrong format, damaged file, or any missing/unexpected/mis-shaped key (all listed in
            one message with the file name).
    """
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    for file in paths:
        require_safetensors(file)
        if not file.is_file():
            what = "weight file" if len(paths) == 1 else "weight shard"
            raise CheckpointError(f"{what} not found: {file}." + (f" {hint}" if hint else ""))
    device = resolve_device(device)
    dtype_ = parse_dtype(dtype) if dtype is not None else None
    ignore, optional = _compile(ignore_patterns), _compile(optional_patterns)
    file_shapes: dict[str, tuple[int, ...]] = {}
    tensors = _ShardTensors()
    for file in paths:  # headers only: each file is checked, the data is read tensor by tensor later
        with open_safetensors(file, hint) as reader:
            for key in reader.keys():
                file_shapes[key] = tuple(reader.get_slice(key).get_shape())
        tensors.add(TensorFile(file, hint))
    plan = _plan_keys(module, file_shapes, ignore, optional)
    if problems := plan.problems():
        where = (
            str(paths[0])
            if len(paths) == 1
            else (f"the shards {', '.join(f.name for f in paths)} in {paths[0].parent}")
        )
        raise CheckpointError(
            f"{where} does not match {type(module).__name__} "
            f"({len(file_shapes)} tensors in the file, {len(module.state_dict())} in the model):\n"
            + "\n".join(problems)
            + "\nCheck that the file belongs to this component and that its config.json is the one "
            "saved with it."
        )
    resets = _modules_to_reset(module, plan)
    with torch.no_grad():
        for prefix in resets:
            _reset(module.get_submodule(prefix) if prefix else module, device, dtype_)
        _fill_from_file(module, plan, tensors, device, dtype_)
    # what the file did not hold (buffers computed at construction, kept optional tensors) follows
    if dtype_ is None:
        module.to(device=device)
    else:
        module.to(device=device, dtype=dtype_)
    if plan.dropped:
        logger.debug("%s: dropped %d accepted key(s): %s", path, len(plan.dropped), plan.dropped[:5])
    if plan.kept:
        logger.debug("%s: %d optional key(s) not in the file kept from the model", path, len(plan.kept))
