"""LoRA adapters (songflow.nn.lora) and adapter files (songflow.checkpoint.lora) on the tiny ACE-Step DiT.

Invariants (docs/architecture.md#testing): a zero-initialised B or a zero weight/scale equals the base model
exactly, merged equals unmerged, unmerge restores the base, two adapters add their deltas, rsLoRA scaling,
save -> load reproduces outputs exactly. Interop: a PEFT-written file loads and matches PEFT's own forward;
our file loads in diffusers (both skipped when the package is absent).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from conftest import randomise_lora
from songflow.checkpoint.lora import (
    CONFIG_NAME,
    METADATA_KEY,
    OFFICIAL_TARGET_MODULES,
    WEIGHT_NAME,
    LoraSpec,
    load_lora,
    lora_config,
    save_lora,
    set_loras,
    unload_lora,
)
from songflow.errors import CheckpointError, ConfigError
from songflow.models.acestep_v1.lyric_encoder import LyricEncoderConfig
from songflow.models.acestep_v1.transformer import ACEStepTransformer, TransformerConfig
from songflow.nn import lora as L

# ------------------------------------------------------------------------------------------------ helpers


def _model(seed: int = 0, config: TransformerConfig | None = None) -> ACEStepTransformer:
    torch.manual_seed(seed)
    config = config or TransformerConfig.tiny()
    model = ACEStepTransformer(config, LyricEncoderConfig.tiny(input_size=config.lyric_hidden_size)).eval()
    with torch.no_grad():  # default inits leave adaLN gates small; make every path matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def base() -> ACEStepTransformer:
    return _model()


@pytest.fixture
def model(base: ACEStepTransformer) -> ACEStepTransformer:
    return copy.deepcopy(base)


def _inputs(model: ACEStepTransformer, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    text = torch.randn(2, 4, c.text_embedding_dim, generator=g)
    speaker = torch.randn(2, c.speaker_embedding_dim, generator=g)  # non-zero so the speaker LoRA matters
    lyric_ids = torch.randint(0, c.lyric_encoder_vocab_size, (2, 5), generator=g)
    ones = torch.ones(2, 4, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    x = torch.randn(2, 8, 16, 6, generator=g)
    sigma = torch.rand(2, generator=g)
    return x, sigma, (text, ones[0], speaker, lyric_ids, ones[1])


@torch.no_grad()
def _run(model: nn.Module, inputs) -> torch.Tensor:
    """Velocity and condition states, flattened: every adapted layer (DiT, lyric encoder, speaker) shows."""
    x, sigma, enc = inputs
    cond = model.encode(*enc)
    return torch.cat([model(x, sigma, cond).flatten(), cond.states.flatten()])


def _official(model: nn.Module, name: str = "a", r: int = 4, alpha: float = 8.0, **kw) -> list[str]:
    return L.inject(model, OFFICIAL_TARGET_MODULES, name=name, r=r, alpha=alpha, **kw)


# ------------------------------------------------------------------------------------------- targeting


def test_official_targets_match_peft_rule_and_keep_base_keys(model: ACEStepTransformer) -> None:
    before = model.state_dict()
    layers = _official(model)
    n_blocks, n_lyric = model.config.num_layers, model.lyric_config.num_blocks
    assert len(layers) == 8 * n_blocks + 3 * n_lyric + 1
    assert "speaker_embedder" in layers
    assert "transformer_blocks.0.attn.to_out.0" in layers and "transformer_blocks.1.cross_attn.to_k" in layers
    assert "lyric_encoder.encoders.0.self_attn.linear_v" in layers
    assert not any(n.endswith(("linear_out", "linear_pos", "proj_in.early_conv_layers.0")) for n in layers)
    # base parameters keep their names and identity; adapter tensors stay out of the state dict
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    assert isinstance(model.transformer_blocks[0].attn.to_q, L.LoRALinear)
    assert after["transformer_blocks.0.attn.to_q.weight"] is model.transformer_blocks[0].attn.to_q.weight
    assert any(".lora_A.a.weight" in n for n, _ in model.named_parameters())
    model.load_state_dict(before, strict=True)  # a base checkpoint still loads strictly with adapters on
    assert L.compact_target_modules(model, layers) == sorted(OFFICIAL_TARGET_MODULES)


def test_base_checkpoint_loads_strictly_with_adapters_attached(tmp_path: Path, model, base) -> None:
    from songflow.checkpoint.strict import load_state_dict_strict

    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(tmp_path / "base.safetensors"))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    _official(model)
    randomise_lora(model, "a")
    load_state_dict_strict(model, tmp_path / "base.safetensors", dtype=None)
    adapter = L.adapter_state_dict(model, "a")
    assert all(v.abs().sum() > 0 for v in adapter.values())  # the adapter is untouched
    L.remove_adapter(model, "a")
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in model.state_dict().items())


def test_inject_rejects_non_linear_and_no_match(model: ACEStepTransformer) -> None:
    with pytest.raises(ValueError, match="no module"):
        L.inject(model, ["does_not_exist"])
    with pytest.raises(ValueError, match="only nn.Linear"):
        L.inject(model, ["inverted_conv.conv"])  # a Conv1d
    assert not L.lora_modules(model)
    with pytest.raises(ValueError, match="invalid LoRA adapter name"):
        L.inject(model, ["to_q"], name="a.b")


# --------------------------------------------------------------------------------------------- invariants


def test_zero_init_b_equals_base_exactly(model: ACEStepTransformer, base: ACEStepTransformer) -> None:
    inputs = _inputs(base)
    _official(model, use_rslora=True)
    assert torch.equal(_run(model, inputs), _run(base, inputs))


def test_weight_zero_and_scale_zero_equal_base_exactly(model, base) -> None:
    inputs = _inputs(base)
    ref = _run(base, inputs)
    _official(model, name="a")
    randomise_lora(model, "a")
    assert not torch.allclose(_run(model, inputs), ref)
    L.set_adapter_weight(model, "a", 0.0)
    assert torch.equal(_run(model, inputs), ref)
    L.set_adapter_weight(model, "a", 1.0)
    L.remove_adapter(model, "a")
    _official(model, name="z", alpha=0.0)
    randomise_lora(model, "z")
    assert torch.equal(_run(model, inputs), ref)


def test_merged_equals_unmerged_and_unmerge_restores_base(model, base) -> None:
    inputs = _inputs(base)
    _official(model, name="a", r=3, alpha=5.0)
    randomise_lora(model, "a")
    L.set_adapter_weight(model, "a", 0.7)
    unmerged = _run(model, inputs)
    L.merge(model)
    assert L.is_merged(model, "a")
    assert torch.allclose(_run(model, inputs), unmerged, atol=1e-4, rtol=1e-5)
    assert not torch.equal(
        model.transformer_blocks[0].attn.to_q.weight, base.transformer_blocks[0].attn.to_q.weight
    )
    # a weight change on a merged adapter re-folds in place
    L.set_adapter_weight(model, "a", -0.4)
    merged_new = _run(model, inputs)
    L.unmerge(model)
    assert torch.allclose(_run(model, inputs), merged_new, atol=1e-4, rtol=1e-5)
    base_sd, sd = base.state_dict(), model.state_dict()
    assert all(torch.equal(sd[k], base_sd[k]) for k in sd)  # bit-exact, not just within rounding
    L.remove_adapter(model, "a")
    assert all(type(m) is not L.LoRALinear for m in model.modules())
    assert type(model.transformer_blocks[0].attn.to_out[0]) is nn.Linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_cycles_restore_base_bit_exactly(base, dtype: torch.dtype) -> None:
    model = copy.deepcopy(base).to(dtype)
    reference = copy.deepcopy(model)
    _official(model, name="a")
    L.inject(model, ["to_q", "linear_k"], name="b", r=2, alpha=4.0)
    randomise_lora(model, "a", std=0.5)  # deltas as large as the weights: many elements lose bits when merged
    randomise_lora(model, "b", seed=3, std=0.5)
    for w in (1.0, -0.7, 2.5):
        L.merge(model, "a")
        L.set_adapter_weight(model, "a", w)
        L.merge(model, "b")
        assert any(m._merge_fix_val is not None for m in L.lora_modules(model).values())  # bits were lost
        L.unmerge(model, "a")
        only_b = copy.deepcopy(reference)
        L.add_adapter_at(only_b, L.adapter_specs(model, "b"), "b")
        for layer, module in L.lora_modules(only_b).items():
            src = model.get_submodule(layer)
            module.lora_A["b"].weight.data.copy_(src.lora_A["b"].weight)
            module.lora_B["b"].weight.data.copy_(src.lora_B["b"].weight)
        L.merge(only_b)
        assert all(torch.equal(v, only_b.state_dict()[k]) for k, v in model.state_dict().items())
        L.unmerge(model)
        assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())


def test_two_adapters_add_their_deltas(model) -> None:
    _official(model, name="a", r=4, alpha=8.0)
    L.inject(model, ["to_q", "to_v"], name="b", r=2, alpha=1.0, use_rslora=True, weight=-1.3)
    L.set_adapter_weight(model, "a", 0.7)
    randomise_lora(model, "a", seed=1)
    randomise_lora(model, "b", seed=2)
    x = torch.randn(3, 5, model.config.inner_dim)
    layer = model.transformer_blocks[1].cross_attn.to_q
    assert set(layer.specs) == {"a", "b"}
    base_out = nn.functional.linear(x, layer.weight, layer.bias)
    da = 0.7 * (8.0 / 4) * layer.lora_B["a"](layer.lora_A["a"](x))
    db = -1.3 * (1.0 / math.sqrt(2)) * layer.lora_B["b"](layer.lora_A["b"](x))
    assert torch.allclose(layer(x) - base_out, da + db, atol=1e-5)
    # as weight deltas, and merged: W + delta_a + delta_b
    w = layer.weight.detach().clone() + layer.delta_weight("a") + layer.delta_weight("b")
    L.merge(model)
    assert torch.allclose(layer.weight, w, atol=1e-6)
    L.unmerge(model, "b")
    assert L.is_merged(model, "a") and not L.is_merged(model, "b")


def test_rslora_scaling() -> None:
    # the official rap LoRA (docs/reference_behaviour.md#r21)
    assert L.lora_scale(256, 32, use_rslora=True) == 2.0
    assert L.lora_scale(256, 32) == 0.125
    layer = L.LoRALinear.from_linear(nn.Linear(6, 5))
    layer.add_adapter("p", L.AdapterSpec(r=16, alpha=8.0))
    layer.add_adapter("s", L.AdapterSpec(r=16, alpha=8.0, use_rslora=True))
    with torch.no_grad():
        layer.lora_B["p"].weight.normal_()
        layer.lora_B["s"].weight.copy_(layer.lora_B["p"].weight)
        layer.lora_A["s"].weight.copy_(layer.lora_A["p"].weight)
    assert layer.specs["s"].scale == 2.0 and layer.specs["p"].scale == 0.5  # 8/sqrt(16) vs 8/16
    assert torch.allclose(layer.delta_weight("s"), layer.delta_weight("p") * 4)
    x = torch.randn(3, 6)
    base = nn.functional.linear(x, layer.weight, layer.bias)
    layer.set_weight("p", 0.0)
    assert torch.allclose(layer(x) - base, 2.0 * layer.lora_B["s"](layer.lora_A["s"](x)), atol=1e-6)


def test_trainable_parameters_only_the_adapter(model, base) -> None:
    _official(model, name="a")
    L.inject(model, ["to_k"], name="other")
    params = L.trainable_parameters(model, "a")
    assert len(params) == 2 * len(L.lora_modules(model, "a"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A.a." in n or ".lora_B.a." in n for n in trainable)
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if p.requires_grad}
    x, sigma, enc = _inputs(base)
    model.train()
    model(x, sigma, model.encode(*enc)).square().mean().backward()
    assert all(p.grad is not None for p in params if p.shape[0] != 0)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    L.merge(model, "a")
    with pytest.raises(ValueError, match="merged"):
        L.trainable_parameters(model, "a")


# -------------------------------------------------------------------------------------------- file I/O


def test_save_load_round_trip_exact(tmp_path: Path, model, base) -> None:
    inputs = _inputs(base)
    _official(model, name="mine", r=4, alpha=8.0, use_rslora=True)
    randomise_lora(model, "mine")
    L.set_adapter_weight(model, "mine", 0.6)
    expected = _run(model, inputs)
    folder = save_lora(model, "mine", tmp_path / "out", config={"note": "test", "lora_alpha": 8})

    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["note"] == "test"
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 8, True)
    assert sorted(config["target_modules"]) == sorted(OFFICIAL_TARGET_MODULES)
    with safe_open(str(folder / WEIGHT_NAME), framework="pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()[METADATA_KEY])["lora_alpha"] == 8
    assert "transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert "speaker_embedder.lora_B.weight" in keys and len(keys) == 2 * len(L.lora_modules(model))

    fresh = copy.deepcopy(base)
    assert load_lora(fresh, folder, name="back", weight=0.6) == "back"
    assert torch.equal(_run(fresh, inputs), expected)
    # the file itself (config found beside it), default name from the folder
    other = copy.deepcopy(base)
    assert load_lora(other, folder / WEIGHT_NAME, weight=0.6) == "out"
    assert torch.equal(_run(other, inputs), expected)
    # without adapter_config.json: the official pipeline's scale (alpha = r), or explicit overrides
    (folder / CONFIG_NAME).unlink()
    plain = copy.deepcopy(base)
    load_lora(plain, folder, name="p", weight=0.6)
    assert plain.speaker_embedder.specs["p"].scale == 1.0
    load_lora(plain, folder, name="q", weight=0.6, alpha=8, use_rslora=True)
    L.remove_adapter(plain, "p")
    assert torch.equal(_run(plain, inputs), expected)
    # a conflicting LoraConfig field is refused
    with pytest.raises(ConfigError, match="lora_alpha"):
        save_lora(model, "mine", tmp_path / "bad", config={"lora_alpha": 16})


def test_alpha_tensors_and_prefixes(tmp_path: Path, base) -> None:
    layer = "transformer_blocks.0.attn.to_q"
    d = base.config.inner_dim
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"base_model.model.{layer}.lora_A.default.weight": torch.randn(2, d, generator=g),
        f"base_model.model.{layer}.lora_B.default.weight": torch.randn(d, 2, generator=g),
        f"base_model.model.{layer}.alpha": torch.tensor(6.0),
    }
    save_file(tensors, str(tmp_path / "kohya_like.safetensors"))
    model = copy.deepcopy(base)
    assert load_lora(model, tmp_path / "kohya_like.safetensors") == "kohya_like"
    assert model.transformer_blocks[0].attn.to_q.specs["kohya_like"].scale == 3.0
    x = torch.randn(4, d)
    delta = (
        3.0
        * tensors[f"base_model.model.{layer}.lora_B.default.weight"]
        @ tensors[f"base_model.model.{layer}.lora_A.default.weight"]
    )
    to_q = model.transformer_blocks[0].attn.to_q
    assert torch.allclose(to_q(x), nn.functional.linear(x, to_q.weight + delta, to_q.bias), atol=1e-5)


def test_mismatched_keys_raise_with_list(tmp_path: Path, base) -> None:
    # a UNet LoRA: no layer exists
    unet = {
        f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn1.to_q.lora_{ab}.weight": torch.zeros(4, 4)
        for i in range(12)
        for ab in "AB"
    }
    save_file(unet, str(tmp_path / "unet.safetensors"))
    model = copy.deepcopy(base)
    with pytest.raises(CheckpointError) as info:
        load_lora(model, tmp_path / "unet.safetensors")
    msg = str(info.value)
    assert "UNet" in msg and "keys whose layer does not exist in the model (24)" in msg
    assert "down_blocks.0.attentions.0" in msg and "(+14 more)" in msg
    assert not L.lora_modules(model)  # nothing changed

    # an adapter for a wider ACE-Step transformer: same names, other shapes
    tiny = TransformerConfig.tiny()
    wide = _model(
        config=dataclasses.replace(tiny, attention_head_dim=24, inner_dim=24 * tiny.num_attention_heads)
    )
    _official(wide, name="w")
    save_lora(wide, "w", tmp_path / "wide")
    with pytest.raises(CheckpointError) as info:
        load_lora(model, tmp_path / "wide")
    msg = str(info.value)
    assert "another size (width 48)" in msg and "shape mismatches" in msg and "to_q.lora_A.weight" in msg
    assert not L.lora_modules(model)

    # more blocks than the model has
    d = base.config.inner_dim
    deep = {}
    for i in (0, 7):
        deep[f"transformer_blocks.{i}.attn.to_q.lora_A.weight"] = torch.zeros(2, d)
        deep[f"transformer_blocks.{i}.attn.to_q.lora_B.weight"] = torch.zeros(d, 2)
    save_file(deep, str(tmp_path / "deep.safetensors"))
    with pytest.raises(CheckpointError, match=r"another size \(at least 8 blocks\)"):
        load_lora(model, tmp_path / "deep.safetensors")

    # DoRA magnitudes / unpaired factors are listed too
    extra = {
        "transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, base.config.inner_dim),
        "transformer_blocks.0.attn.to_q.lora_magnitude_vector": torch.zeros(base.config.inner_dim),
    }
    save_file(extra, str(tmp_path / "dora.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_lora(model, tmp_path / "dora.safetensors")
    assert "lora_magnitude_vector" in str(info.value) and "no lora_B" in str(info.value)


def test_pickle_and_missing_files_are_rejected(tmp_path: Path, base) -> None:
    (tmp_path / "lora.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors required"):
        load_lora(base, tmp_path / "lora.bin")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "pytorch_lora_weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="safetensors required"):
        load_lora(base, folder)
    with pytest.raises(CheckpointError, match="not found"):
        load_lora(base, tmp_path / "nowhere")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="damaged"):
        load_lora(base, tmp_path / "broken.safetensors")
    assert not L.lora_modules(base)


def test_unload_and_names(tmp_path: Path, model, base) -> None:
    _official(model, name="a")
    randomise_lora(model, "a")
    save_lora(model, "a", tmp_path / "a")
    target = copy.deepcopy(base)
    load_lora(target, tmp_path / "a", name="x")
    with pytest.raises(ConfigError, match="already loaded"):
        load_lora(target, tmp_path / "a", name="x")
    with pytest.raises(ConfigError, match="invalid"):
        load_lora(target, tmp_path / "a", name="keys")
    load_lora(target, tmp_path / "a", name="y", weight=0.5)
    assert L.adapter_names(target) == ["x", "y"]
    L.merge(target, "y")
    assert unload_lora(target, "y") == ["y"]
    with pytest.raises(ConfigError, match="no LoRA named"):
        unload_lora(target, "y")
    assert unload_lora(target) == ["x"]
    assert all(type(m) is not L.LoRALinear for m in target.modules())
    base_sd = base.state_dict()
    assert all(torch.equal(v, base_sd[k]) for k, v in target.state_dict().items())
    assert lora_config(model, "a")["r"] == 4


def test_set_loras_reuses_loaded_files(tmp_path: Path, model, base, monkeypatch) -> None:
    inputs = _inputs(base)
    ref = _run(base, inputs)
    _official(model, name="a")
    randomise_lora(model, "a")
    save_lora(model, "a", tmp_path / "a")
    L.set_adapter_weight(model, "a", 0.5)
    expected = _run(model, inputs)

    import songflow.checkpoint.lora as lora_module

    calls = []
    real = lora_module.load_lora
    monkeypatch.setattr(lora_module, "load_lora", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    target = copy.deepcopy(base)
    assert set_loras(target, [LoraSpec(tmp_path / "a", 1.0)]) == ["lora0"]
    assert set_loras(target, [LoraSpec(tmp_path / "a", 0.5)], merged=True) == ["lora0"]
    assert len(calls) == 1  # only the weight changed: no second read
    assert torch.allclose(_run(target, inputs), expected, atol=1e-5)
    set_loras(target, [LoraSpec(tmp_path / "a", 0.5)])
    assert not L.is_merged(target, "lora0")
    assert torch.equal(_run(target, inputs), expected)  # unmerged again: the exact base weights
    set_loras(target, [])
    assert torch.equal(_run(target, inputs), ref)
    assert not L.lora_modules(target)
    with pytest.raises(ConfigError, match="unique"):
        set_loras(target, [LoraSpec(tmp_path / "a", name="n"), LoraSpec(tmp_path / "a", name="n")])
    with pytest.raises(ConfigError):
        LoraSpec(tmp_path / "a", float("nan"))


# ---------------------------------------------------------------------------------------------- interop


def test_peft_written_file_matches_peft_forward(tmp_path: Path, base) -> None:
    peft = pytest.importorskip("peft")
    inputs = _inputs(base)
    reference = copy.deepcopy(base)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=list(OFFICIAL_TARGET_MODULES),
        init_lora_weights=False,
    )
    reference = peft.inject_adapter_in_model(config, reference, adapter_name="default")
    for module in reference.modules():  # the user weight, as diffusers' set_adapters applies it
        if hasattr(module, "set_scale") and hasattr(module, "scaling") and "default" in module.scaling:
            module.set_scale("default", 0.8)
    expected = _run(reference, inputs)

    # diffusers' saved layout (no adapter name) + PEFT's adapter_config.json
    state = peft.get_peft_model_state_dict(reference, adapter_name="default")
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHT_NAME))
    cfg = config.to_dict()
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, default=str))
    ours = copy.deepcopy(base)
    load_lora(ours, folder, weight=0.8)
    assert torch.allclose(_run(ours, inputs), expected, atol=1e-6, rtol=1e-6)

    # PEFT's in-model layout: base_model.model. prefix and adapter names in the keys
    in_model = {
        f"base_model.model.{k}": v.contiguous()
        for k, v in reference.state_dict().items()
        if ".lora_A." in k or ".lora_B." in k
    }
    assert any(".lora_A.default.weight" in k for k in in_model)
    save_file(in_model, str(tmp_path / "in_model.safetensors"))
    second = copy.deepcopy(base)
    load_lora(second, tmp_path / "in_model.safetensors", weight=0.8, alpha=8, use_rslora=True)
    assert torch.allclose(_run(second, inputs), expected, atol=1e-6, rtol=1e-6)


def test_our_file_loads_in_diffusers(tmp_path: Path, model, base) -> None:
    pytest.importorskip("peft")
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders import PeftAdapterMixin

    class Official(diffusers.ModelMixin, PeftAdapterMixin):  # the official DiT's bases, our module tree
        def __init__(self, inner: nn.Module):
            super().__init__()
            for child_name, child in inner.named_children():
                setattr(self, child_name, child)

    _official(model, name="a", r=4, alpha=8.0, use_rslora=True)
    randomise_lora(model, "a")
    save_lora(model, "a", tmp_path / "a")
    weights = str(tmp_path / "a" / WEIGHT_NAME)

    def check(official: nn.Module, ours: nn.Module) -> None:
        for layer, module in L.lora_modules(ours).items():
            x = torch.randn(3, module.in_features)
            torch.testing.assert_close(official.get_submodule(layer)(x), module(x), atol=1e-5, rtol=1e-5)

    # the official pipeline's call: no header or config is read, alpha = r; ours with use_config=False
    official = Official(copy.deepcopy(base))
    official.load_lora_adapter(weights, adapter_name="ace_step_lora", with_alpha=True, prefix=None)
    official.set_adapters(["ace_step_lora"], weights=[0.6])
    ours = copy.deepcopy(base)
    load_lora(ours, tmp_path / "a", weight=0.6, use_config=False)
    check(official, ours)
    # reading the header metadata restores the trained rsLoRA scale, like our adapter_config.json
    official = Official(copy.deepcopy(base))
    official.load_lora_adapter(weights, adapter_name="x", prefix=None, use_safetensors=True)
    L.set_adapter_weight(model, "a", 1.0)
    check(official, model)
