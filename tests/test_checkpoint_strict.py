"""The shared safetensors helpers of songflow.checkpoint.strict, used by base weights and LoRA files alike."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from songflow.checkpoint import lora, strict
from songflow.errors import CheckpointError


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"])
def test_pickles_are_refused_by_weights_and_lora_loading_alike(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(b"\x80\x04 never unpickled")
    calls = []
    real = strict.require_safetensors
    monkeypatch.setattr(lora, "require_safetensors", lambda *a: calls.append(a) or real(*a))
    with pytest.raises(CheckpointError, match="safetensors required.*arbitrary code"):
        strict.load_state_dict_strict(nn.Linear(2, 2), path, dtype=None)
    with pytest.raises(CheckpointError, match="safetensors required.*LoRA files.*arbitrary code"):
        lora.load_lora(nn.Linear(2, 2), path)
    assert calls == [(path, "LoRA")]  # the LoRA loader goes through the one helper
    with pytest.raises(CheckpointError, match="safetensors required"):
        strict.safetensors_summary(path)


def test_header_summary_and_damaged_files(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16)}, str(path), {"k": "v"})
    header = strict.read_header(path)
    assert header.shapes == {"a": (2, 3), "b": (4,)} and header.metadata["k"] == "v"
    assert strict.safetensors_summary(path) == (10, ("BF16", "F32"))  # safetensors dtype names
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"damaged or incomplete.*download it again\. see here"):
        strict.read_header(path, hint="see here")


def test_save_state_dict_writes_shared_storage_as_copies_and_refuses_meta(tmp_path):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("a", torch.arange(4.0))
            self.register_buffer("b", self.a[:2])

    path = strict.save_state_dict(Shared(), tmp_path / "s.safetensors")
    assert strict.read_header(path).shapes == {"a": (4,), "b": (2,)}
    with pytest.raises(ValueError, match="meta device"):
        strict.save_state_dict(strict.build_on_meta(lambda: nn.Linear(2, 2)), tmp_path / "m.safetensors")


def test_init_empty_weights_hook_is_removed_after_an_error():
    with pytest.raises(RuntimeError, match="boom"), strict.init_empty_weights():
        assert nn.Linear(2, 2).weight.is_meta
        raise RuntimeError("boom")
    assert not nn.Linear(2, 2).weight.is_meta
