"""Device and dtype resolution: ``"auto"`` and the names users type (``"bf16"``, ``"cuda:1"``) -> torch."""

from __future__ import annotations

import logging

import torch

from songflow.errors import ConfigError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}

DeviceLike = str | torch.device


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


def parse_dtype(name: str | torch.dtype) -> torch.dtype | None:
    """The torch dtype a name (or dtype) stands for, None for ``"auto"``; ConfigError for anything else."""
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
    dtype = parse_dtype(name)
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
