"""Shared test fixtures: the golden parity fixture root and the shared vocab.

Tests that need ``../shared`` skip with a clear message when it is absent and run when it is present.
The golden root comes from ``SONGFLOW_GOLDEN_DIR`` (default ``../shared/golden/acestep_v1`` next to the repo).
"""

from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads spin while they wait by default, which starves the other core of a 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SONGFLOW_SHARED_DIR", REPO_ROOT.parent / "shared"))
GOLDEN_DIR = Path(os.environ.get("SONGFLOW_GOLDEN_DIR", SHARED_DIR / "golden" / "acestep_v1"))
VOCAB_PATH = SHARED_DIR / "acestep_v1" / "vocab.json"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "manifest.json").exists():
        pytest.skip(
            f"golden fixtures not found at {GOLDEN_DIR} (set SONGFLOW_GOLDEN_DIR or provide ../shared)"
        )
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def golden_models_dir(golden_dir: Path) -> Path:
    return golden_dir / "models"


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    if not VOCAB_PATH.exists():
        pytest.skip(f"official lyric vocab not found at {VOCAB_PATH} (provide ../shared)")
    return VOCAB_PATH


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors fixture, bf16 upcast to float32."""
    from safetensors.torch import load_file

    return {k: (v.float() if v.dtype == torch.bfloat16 else v) for k, v in load_file(str(path)).items()}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float = 1e-5, name: str = ""
) -> float:
    """Assert max|a-e| <= rtol * max(1, max|e|) and return the max abs error (for reports)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.double().abs().max().item()) if expected.numel() else 1.0
    assert err <= rtol * scale, f"{name}: max abs error {err:.3e} > {rtol:.1e} * {scale:.3g}"
    return err
