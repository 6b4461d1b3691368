"""UMT5 text encoder adapter: parity with the reference pipeline's text states, ERG-tag query scaling,
laziness and strict loading (songflow.models.acestep_v1.text_encoder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import assert_close, load_tensors
from songflow.errors import CheckpointError, ConfigError
from songflow.models.acestep_v1.text_encoder import TextEncoder, UMT5TextEncoder

# official ERG-tag hooks: blocks 8 and 9, tau 0.01 (docs/reference_behaviour.md#r6)
ERG_TAG = {8: 0.01, 9: 0.01}


@pytest.fixture(scope="module")
def umt5_dir(golden_models_dir: Path) -> Path:
    return golden_models_dir / "umt5-base"


@pytest.fixture(scope="module")
def encoder(umt5_dir: Path) -> UMT5TextEncoder:
    return UMT5TextEncoder(umt5_dir).load()


def _run(golden_dir: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    run = golden_dir / "pipeline" / name
    return json.loads((run / "params.json").read_text())["call_kwargs"], load_tensors(
        run / "tensors.safetensors"
    )


def test_prompt_matches_reference_pipeline(golden_dir, encoder):
    kwargs, t = _run(golden_dir, "t2m_euler_apg")
    hidden, mask = encoder.encode([kwargs["prompt"]])
    assert hidden.dtype == torch.float32 and mask.dtype == torch.int64
    assert torch.equal(mask, t["inputs/text_attention_mask"])
    err = assert_close(hidden, t["inputs/text_hidden_states"], name="text_hidden_states")
    print(f"text_hidden_states max abs error {err:.3e}")


def test_erg_tag_matches_reference_null_states(golden_dir, encoder):
    kwargs, t = _run(golden_dir, "t2m_euler_apg")
    plain, _ = encoder.encode([kwargs["prompt"]])
    null, mask = encoder.encode([kwargs["prompt"]], query_scale=ERG_TAG)
    assert torch.equal(mask, t["inputs/text_attention_mask"])
    err = assert_close(null, t["inputs/text_hidden_states_null"], name="text_hidden_states_null")
    print(f"text_hidden_states_null (ERG tag) max abs error {err:.3e}")
    assert (null - plain).abs().max() > 0.1  # the scaling really changes the states
    again, _ = encoder.encode([kwargs["prompt"]])
    assert torch.equal(again, plain)  # the scale applied to that call only
    assert all(q.output_scale is None for q in encoder._queries)


def test_per_row_query_scale_batches_plain_and_erg(golden_dir, encoder):
    kwargs, t = _run(golden_dir, "t2m_euler_apg")
    tau = torch.tensor([1.0, 0.01]).view(2, 1, 1)
    both, _ = encoder.encode([kwargs["prompt"]] * 2, query_scale={8: tau, 9: tau})
    assert_close(both[:1], t["inputs/text_hidden_states"], name="row 0 (plain)")
    assert_close(both[1:], t["inputs/text_hidden_states_null"], name="row 1 (ERG)")
    with pytest.raises(ConfigError, match=r"shape \[B, 1, 1\]"):
        encoder.encode(["pop"], query_scale={8: torch.ones(3, 1, 1)})


def test_edit_target_prompt_and_batch_padding(golden_dir, encoder):
    kwargs, t = _run(golden_dir, "edit_remix")
    target, target_mask = encoder.encode([kwargs["edit_target_prompt"]])
    assert torch.equal(target_mask, t["inputs/target_text_attention_mask"])
    assert_close(target, t["inputs/target_text_hidden_states"], name="target_text_hidden_states")
    # a padded batch gives each prompt its single-prompt states on its real tokens
    source, _ = encoder.encode([kwargs["prompt"]])
    batch, mask = encoder.encode([kwargs["prompt"], kwargs["edit_target_prompt"]])
    n_target = target.shape[1]
    assert batch.shape[1] == source.shape[1] > n_target
    assert mask[1].tolist() == [1] * n_target + [0] * (batch.shape[1] - n_target)
    assert_close(batch[0], source[0], rtol=1e-5, name="batch item 0")
    assert_close(batch[1, :n_target], target[0], rtol=1e-5, name="batch item 1")


def test_long_prompts_are_truncated_to_256_tokens(encoder):
    hidden, mask = encoder.encode(["pop " * 400])
    assert hidden.shape == (1, 256, encoder.dim) and mask.shape == (1, 256)


def test_query_scale_validation(encoder):
    with pytest.raises(ConfigError, match="out of range"):
        encoder.encode(["pop"], query_scale={encoder.num_layers: 0.01})
    with pytest.raises(ConfigError, match="not finite"):
        encoder.encode(["pop"], query_scale={1: float("nan")})
    with pytest.raises(ConfigError, match="list of strings"):
        encoder.encode("pop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="list of strings"):
        encoder.encode([])
    last, _ = encoder.encode(["pop rock"], query_scale={-1: 0.5})
    nine, _ = encoder.encode(["pop rock"], query_scale={encoder.num_layers - 1: 0.5})
    assert torch.equal(last, nine)


def test_wrapping_keeps_the_model_intact(encoder):
    model = encoder.module
    q = model.encoder.block[8].layer[0].SelfAttention.q
    assert isinstance(q, nn.Linear)
    keys = set(model.state_dict())
    assert "encoder.block.8.layer.0.SelfAttention.q.weight" in keys
    stored = load_file(str(encoder.folder / "model.safetensors"))
    assert keys - set(stored) == {"encoder.embed_tokens.weight"}  # tied to shared.weight
    assert model.encoder.embed_tokens.weight.data_ptr() == model.shared.weight.data_ptr()


def test_lazy_load_unload_and_protocol(umt5_dir):
    enc = UMT5TextEncoder(umt5_dir, dtype=torch.bfloat16)
    assert isinstance(enc, TextEncoder)
    config = json.loads((umt5_dir / "config.json").read_text())
    assert enc.dim == config["d_model"] and enc.num_layers == config["num_layers"] and not enc.is_loaded
    hidden, mask = enc.encode(["pop rock", "jazz"])
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(umt5_dir / "tokenizer.json"))  # the checkpoint's own tokenizer
    lengths = [len(tokenizer.encode(p).ids) for p in ("pop rock", "jazz")]
    assert enc.is_loaded and hidden.dtype == torch.bfloat16
    assert hidden.shape == (2, max(lengths), config["d_model"])
    assert mask.tolist() == [[1] * n + [0] * (max(lengths) - n) for n in lengths]
    enc.unload()
    assert not enc.is_loaded
    again, _ = enc.encode(["pop rock", "jazz"])
    assert torch.equal(again, hidden)


def _copy_umt5(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("extra", r"unexpected in the file \(1\): encoder\.surprise"),
        ("drop", r"missing from the file \(1\): encoder\.final_layer_norm\.weight"),
        ("pickle", "safetensors required"),
        ("truncate", "damaged or incomplete.*download it again"),
    ],
)
def test_strict_loading(umt5_dir, tmp_path, edit, expected):
    folder = _copy_umt5(umt5_dir, tmp_path / "umt5-base")
    weights = folder / "model.safetensors"
    if edit == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif edit == "pickle":
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(b"pickle")
    else:
        tensors = load_file(str(weights))
        if edit == "extra":
            tensors["encoder.surprise"] = torch.zeros(2)
        else:
            del tensors["encoder.final_layer_norm.weight"]
        weights.unlink()
        save_file(tensors, str(weights), metadata={"format": "pt"})
    enc = UMT5TextEncoder(folder)
    with pytest.raises(CheckpointError, match=expected):
        enc.encode(["pop"])


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        UMT5TextEncoder(tmp_path)
