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

from conftest_pg import postgres_db, postgres_dsn  # noqa: E402, F401

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SONGFLOW_SHARED_DIR", REPO_ROOT.parent / "shared"))
GOLDEN_DIR = Path(os.environ.get("SONGFLOW_GOLDEN_DIR", SHARED_DIR / "golden" / "acestep_v1"))
VOCAB_PATH = SHARED_DIR / "acestep_v1" / "vocab.json"
# ACE-Step 1.5 fixtures: SONGFLOW_GOLDEN_V15_DIR, or ../shared/golden/acestep_v15
GOLDEN_V15_ENV = os.environ.get("SONGFLOW_GOLDEN_V15_DIR")
GOLDEN_V15_DIR = Path(GOLDEN_V15_ENV or SHARED_DIR / "golden" / "acestep_v15")

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory):
    """The tests' caches (the sidecars' weight-hash cache) go to a temporary folder, never ``~/.cache``;
    subprocesses inherit it."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "manifest.json").exists():
        pytest.skip(
            f"golden fixtures not found at {GOLDEN_DIR} (set SONGFLOW_GOLDEN_DIR or provide ../shared)"
        )
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def golden_v15_dir() -> Path:
    """The ACE-Step 1.5 fixture root; skips when ../shared is absent, fails when the variable names a
    folder that is not there."""
    if not (GOLDEN_V15_DIR / "manifest.json").exists():
        if GOLDEN_V15_ENV:
            pytest.fail(f"SONGFLOW_GOLDEN_V15_DIR={GOLDEN_V15_ENV} holds no fixture set (no manifest.json)")
        pytest.skip(
            f"ACE-Step 1.5 fixtures not found at {GOLDEN_V15_DIR} "
            "(set SONGFLOW_GOLDEN_V15_DIR or provide ../shared)"
        )
    return GOLDEN_V15_DIR


@pytest.fixture(scope="session")
def golden_v15_checkpoints(golden_v15_dir: Path) -> Path:
    """The official ``checkpoints/`` root of the 1.5 fixtures (turbo, base, vae, text encoder, LM)."""
    return golden_v15_dir / "models" / "checkpoints"


@pytest.fixture(scope="session")
def golden_v15_lm_dir(golden_v15_checkpoints: Path) -> Path:
    """The fixtures' tiny 5 Hz LM folder (``acestep-5Hz-lm-*``, stand-in tokenizer and chat template)."""
    found = sorted(golden_v15_checkpoints.glob("acestep-5Hz-lm-*"))
    if not found:
        pytest.fail(f"no acestep-5Hz-lm-* folder in {golden_v15_checkpoints}")
    return found[0]


def golden_lm_cases(golden_v15_dir: Path) -> list[str]:
    """Names of the LM planner requests in ``lm/`` (every folder with a case.json)."""
    return sorted(p.parent.name for p in (golden_v15_dir / "lm").glob("*/case.json"))


def load_lm_case(golden_v15_dir: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(case.json, tensors) of one LM planner request in ``lm/<name>``; ``lm/lm_setup.json`` is under
    the ``"setup"`` key of the case."""
    import json

    folder = golden_v15_dir / "lm" / name
    case = json.loads((folder / "case.json").read_text())
    case["setup"] = json.loads((golden_v15_dir / "lm" / "lm_setup.json").read_text())
    return case, load_tensors(folder / "tensors.safetensors")


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


def load_golden_run(golden_dir: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(params.json, tensors) of one reference pipeline run in ``golden/pipeline/<name>``."""
    import json

    folder = golden_dir / "pipeline" / name
    return json.loads((folder / "params.json").read_text()), load_tensors(folder / "tensors.safetensors")


def golden_text_inputs(t: dict[str, torch.Tensor], prefix: str = ""):
    """The encoder inputs a reference run fed the DiT (``inputs/<prefix>*``), ERG-tag states included."""
    from songflow.tasks.plan import TextInputs

    return TextInputs(
        text_states=t[f"inputs/{prefix}text_hidden_states"],
        text_mask=t[f"inputs/{prefix}text_attention_mask"],
        speaker_embeds=t[f"inputs/{prefix}speaker_embeds"],
        lyric_ids=t[f"inputs/{prefix}lyric_token_ids"],
        lyric_mask=t[f"inputs/{prefix}lyric_mask"],
        text_states_erg=t.get(f"inputs/{prefix}text_hidden_states_null"),
    )


@pytest.fixture(scope="session")
def golden_transformer(golden_models_dir: Path):
    """The tiny reference DiT, loaded through the same code path as the official checkpoint."""
    from songflow.checkpoint.acestep_v1 import load_transformer

    return load_transformer(golden_models_dir / "ace_step_transformer", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random-weight tiny checkpoint folder (official layout, own lyric vocab)."""
    from songflow.checkpoint.random_checkpoint import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def pipe(tiny_ckpt):
    """The pipeline over the tiny random checkpoint (float32, CPU)."""
    from songflow.families import load_pipeline

    return load_pipeline(tiny_ckpt, device="cpu", dtype="float32")


def regenerate(checkpoint: Path, audio: Path, out: Path, *extra: str) -> int:
    """``songflow generate --from <audio's sidecar> --out out`` (plus ``extra`` flags); the exit code."""
    from songflow.interfaces.cli import main

    argv = ["generate", "--checkpoint", str(checkpoint), "--from", str(audio.with_suffix(".json"))]
    return main([*argv, *extra, "--out", str(out), "--quiet"])


def tiny_v15_root(tmp_path_factory, name: str, **kwargs) -> Path:
    """A tiny random ACE-Step 1.5 ``checkpoints/`` root (``build_random_v15_checkpoint`` kwargs: variant,
    seed, lm, ...) in a fresh temporary folder ``name``."""
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

    return build_random_v15_checkpoint(tmp_path_factory.mktemp(name) / "checkpoints", **kwargs)


def load_cpu(root: Path):
    """The pipeline of a checkpoint folder on the CPU in float32 (any family)."""
    from songflow.families import load_pipeline

    return load_pipeline(root, device="cpu", dtype="float32")


FINAL_JOB_STATES = ("done", "failed", "cancelled")


def wait_final(client, job_id: str, timeout: float = 120.0) -> dict:
    """Poll ``GET /v1/jobs/{job_id}`` until the job is done, failed or cancelled; its last view."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in FINAL_JOB_STATES:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def randomise_lora(model, name: str, seed: int = 0, std: float = 0.2) -> None:
    """Fill adapter ``name``'s A and B factors with N(0, std²) draws (a fresh adapter changes nothing)."""
    from songflow.nn import lora as L

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in L.lora_modules(model, name).values():
            for factor in (module.lora_A[name], module.lora_B[name]):
                factor.weight.copy_(torch.randn(factor.weight.shape, generator=g) * std)


def write_random_lora(model, targets, folder: Path, name: str = "style") -> Path:
    """Inject a rank-4 adapter ``name`` on ``targets`` of ``model``, randomise it, save it to ``folder``."""
    from songflow.checkpoint.lora import save_lora
    from songflow.nn import lora as L

    L.inject(model, targets, name=name, r=4, alpha=4.0)
    randomise_lora(model, name)
    save_lora(model, name, folder)
    return folder


def songflow_process(args: list[str], log: Path):
    """``python -m songflow -v ARGS`` in its own process (one CPU thread, no API key from the
    environment), its output appended to ``log``; the ``subprocess.Popen``."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SONGFLOW_API_KEY": ""}
    cmd = [sys.executable, "-m", "songflow", "-v", *args]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)


def start_serve(checkpoint: Path, data: Path, log: Path, *extra: str):
    """``songflow serve`` (``--max-batch 1``, CPU, ``extra`` flags) on a free loopback port in its own
    process; ``(Popen, url)`` once ``/health`` answers."""
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--data-dir", str(data)]
    proc = songflow_process([*args, "--port", str(port), "--max-batch", "1", *extra], log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"songflow serve did not start:\n{log.read_text()}")
