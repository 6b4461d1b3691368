"""Device and dtype resolution: ``"auto"`` and the names users type (``"bf16"``, ``"cuda:1"``) -> torch."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

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


# /proc/cpuinfo flags of the x86 instructions that run bfloat16 matmuls natively (AVX512-BF16, AMX-BF16).
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_flags() -> set[str] | None:
    """The CPU feature flags listed in ``/proc/cpuinfo`` (Linux), None when it is missing or unreadable."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags or None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so CPU bf16 is faster, not many
    times slower (emulated).

    Reads the ``flags`` of ``/proc/cpuinfo`` on Linux; elsewhere falls back to
    ``torch.backends.cpu.get_cpu_capability()`` (names with ``BF16`` or ``AMX`` count; ``"AVX2"``,
    ``"AVX512"``, ``"DEFAULT"`` do not). Cached; tests monkeypatch this function (looked up at call time).
    """
    flags = _cpuinfo_flags()
    if flags is not None:
        return bool(flags & _BF16_CPU_FLAGS)
    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except (AttributeError, RuntimeError):
        return False
    return "BF16" in capability or "AMX" in capability


def cpu_bf16_fallback_message(what: str) -> str:
    """The one warning line for bf16 asked for on a CPU without native bf16; ``what`` says what falls back."""
    return (
        f"this CPU has no native bfloat16 (no avx512_bf16/amx_bf16 flag), where bf16 runs many times slower "
        f"than float32; {what}"
    )


def cpu_bf16_usable(device: DeviceLike) -> bool:
    """False only for a CPU device without native bf16 (CUDA/MPS decisions are made elsewhere)."""
    return resolve_device(device).type != "cpu" or cpu_has_native_bf16()


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
    pipeline forces float32 on MPS). An explicit bfloat16 becomes float16 on a CUDA GPU without bf16 support,
    float32 on MPS (bf16 kernels are missing there on many macOS/torch versions) and float32 on a CPU without
    native bf16 (:func:`cpu_has_native_bf16`; emulated bf16 is many times slower); one warning says so.
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
        if device.type == "cpu" and not cpu_has_native_bf16():
            logger.warning(cpu_bf16_fallback_message("using float32 instead of bfloat16"))
            return torch.float32
    return dtype
