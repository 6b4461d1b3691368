"""ACE-Step 1.5 DiT networks: official key/shape parity, strict loading of the tiny fixture checkpoints,
golden parity of the decoder, condition encoder and tokenizer round trip, the config JSON round trip and
its errors, and an XL-shaped (split encoder width) build."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import assert_close, load_tensors
from songflow.checkpoint.strict import load_state_dict_strict, state_dict_shapes
from songflow.errors import ConfigError
from songflow.models.acestep_v15 import AceStep15Config, AceStep15DiT
from songflow.models.acestep_v15.condition import pack_sequences, unpack_per_item
from songflow.models.acestep_v15.fsq import ResidualFSQ

SUBMODULES = ("decoder", "encoder", "tokenizer", "detokenizer")
VARIANT_OVERRIDES = {
    "turbo": {},
    "base": {"model_version": "base", "is_turbo": False},
    "sft": {"model_version": "sft", "is_turbo": False},
}


def build_meta(cfg: AceStep15Config) -> AceStep15DiT:
    with torch.device("meta"):
        return AceStep15DiT(cfg)


def param_counts(model: AceStep15DiT) -> dict[str, int]:
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in SUBMODULES}
    counts["null_condition_emb"] = model.null_condition_emb.numel()
    return counts


def load_tiny(checkpoints: Path, variant: str) -> AceStep15DiT:
    folder = checkpoints / f"acestep-v15-{variant}"
    model = build_meta(AceStep15Config.from_json(folder / "config.json"))
    load_state_dict_strict(model, folder / "model.safetensors", dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_turbo(golden_v15_checkpoints: Path) -> AceStep15DiT:
    return load_tiny(golden_v15_checkpoints, "turbo")


# -------------------------------------------------------------------------------------------------------
# keys, shapes, parameter counts
# -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["turbo", "base", "sft"])
def test_v15_full_state_dict_matches_official_keys(golden_v15_dir: Path, variant: str):
    official = json.loads((golden_v15_dir / "keys" / f"dit_{variant}_full.json").read_text())
    all_counts = json.loads((golden_v15_dir / "keys" / "param_counts.json").read_text())["counts"]
    counts = all_counts[f"dit_{variant}"]
    cfg = AceStep15Config.full(**VARIANT_OVERRIDES[variant])
    assert cfg.variant == variant
    model = build_meta(cfg)
    assert state_dict_shapes(model) == official["keys"]
    assert len(model.state_dict()) == counts["num_tensors"]
    assert sum(p.numel() for p in model.parameters()) == official["num_params"] == counts["num_params"]
    assert param_counts(model) == official["per_submodule"] == counts["per_submodule"]
    assert list(model.buffers()) == []  # FSQ constants are computed, never stored


@pytest.mark.parametrize("variant", ["turbo", "base"])
def test_v15_tiny_checkpoints_load_strictly(golden_v15_checkpoints: Path, variant: str):
    cfg = AceStep15Config.from_json(golden_v15_checkpoints / f"acestep-v15-{variant}" / "config.json")
    assert cfg.variant == variant
    assert dataclasses.replace(cfg, model_version="turbo", is_turbo=None) == AceStep15Config.tiny()
    model = load_tiny(golden_v15_checkpoints, variant)
    assert all(p.dtype == torch.float32 and not p.is_meta for p in model.parameters())


# -------------------------------------------------------------------------------------------------------
# golden parity (fixtures made with the turbo folder)
# -------------------------------------------------------------------------------------------------------


def test_v15_golden_decoder_forward(golden_v15_dir: Path, tiny_turbo: AceStep15DiT):
    t = load_tensors(golden_v15_dir / "dit" / "decoder_forward.safetensors")
    args = (t["in/hidden_states"], t["in/timestep"], t["in/timestep_r"], t["in/encoder_hidden_states"])
    trace: dict = {}
    with torch.no_grad():
        v = tiny_turbo.decoder(*args, t["in/context_latents"], trace=trace)
        cross = tiny_turbo.precompute_cross(t["in/encoder_hidden_states"])
        v_cached = tiny_turbo.decoder(*args[:3], None, t["in/context_latents"], cross=cross)
    assert_close(v, t["out/v"], name="out/v")
    inter = sorted(k for k in t if k.startswith("inter/"))
    assert inter, "fixture holds no intermediates"
    for key in inter:
        assert_close(trace[key.removeprefix("inter/")], t[key], name=key)
    assert torch.equal(v_cached, v)


def test_v15_golden_condition_encoder(golden_v15_dir: Path, tiny_turbo: AceStep15DiT):
    t = load_tensors(golden_v15_dir / "dit" / "condition_encoder.safetensors")
    inputs = [t[f"in/{k}"] for k in ("text_hidden_states", "text_attention_mask", "lyric_hidden_states")]
    inputs += [t[f"in/{k}"] for k in ("lyric_attention_mask", "refer_audio_packed", "refer_audio_order_mask")]
    trace: dict = {}
    with torch.no_grad():
        enc, mask = tiny_turbo.encoder(*inputs, trace=trace)
        enc2, mask2 = tiny_turbo.encode_conditions(*inputs)
    for name in ("text_projected", "lyric_encoder_out", "timbre_embs"):
        assert_close(trace[name], t[f"inter/{name}"], name=name)
    assert torch.equal(trace["timbre_mask"], t["inter/timbre_mask"])
    assert_close(enc, t["out/encoder_hidden_states"], name="encoder_hidden_states")
    assert torch.equal(mask.to(torch.int64), t["out/encoder_attention_mask"])
    assert torch.equal(enc2, enc) and torch.equal(mask2, mask)


def test_v15_golden_tokenizer_roundtrip(golden_v15_dir: Path, tiny_turbo: AceStep15DiT):
    t = load_tensors(golden_v15_dir / "dit" / "tokenizer_roundtrip.safetensors")
    silence = t["in/silence_latent_head"][None]  # [1, Ts, C]
    x, mask = t["in/x_25hz"], t["in/attention_mask"]
    window = tiny_turbo.config.pool_window_size
    pad = (-x.shape[1]) % window
    windows = torch.cat([x, silence[:, :pad].expand(x.shape[0], -1, -1)], dim=1)
    windows = windows.reshape(x.shape[0], -1, window, x.shape[2])
    with torch.no_grad():
        quantized, codes, mask_5hz = tiny_turbo.tokenize(x, silence, mask)
        pooled = tiny_turbo.tokenizer.pool(windows)
        detok = tiny_turbo.detokenize(quantized)
        from_codes = tiny_turbo.codes_to_quantized(t["out/indices"])
    assert_close(pooled, t["inter/pooled_5hz_pre_fsq"], name="pooled_5hz_pre_fsq")
    assert_close(quantized, t["out/quantized_5hz"], name="quantized_5hz")
    assert codes.dtype == torch.int64 and torch.equal(codes, t["out/indices"])
    assert torch.equal(mask_5hz, t["out/mask_5hz"])
    assert_close(detok, t["out/detokenized_25hz"], name="detokenized_25hz")
    assert_close(from_codes, t["out/quantized_from_indices"], name="quantized_from_indices")


# -------------------------------------------------------------------------------------------------------
# behaviour on random tiny models
# -------------------------------------------------------------------------------------------------------


def _random_inputs(cfg: AceStep15Config, batch: int = 2, frames: int = 13, enc_len: int = 7):
    g = torch.Generator().manual_seed(0)
    c = cfg.audio_acoustic_hidden_dim
    x = torch.randn(batch, frames, c, generator=g)
    ctx = torch.randn(batch, frames, cfg.in_channels - c, generator=g)
    enc = torch.randn(batch, enc_len, cfg.condition_width, generator=g)
    return x, ctx, enc


def test_v15_velocity_defaults_and_padding_option():
    torch.manual_seed(0)
    model = AceStep15DiT(AceStep15Config.tiny()).eval()
    x, ctx, enc = _random_inputs(model.config)
    t = torch.tensor([0.7, 0.3])
    enc_mask = torch.ones(2, enc.shape[1], dtype=torch.bool)
    enc_mask[1, 4:] = False
    with torch.no_grad():
        v = model.velocity(x, t, ctx, enc)
        assert torch.equal(v, model.decoder(x, t, t, enc, ctx))
        assert torch.allclose(model.velocity(x[:1], 0.7, ctx[:1], enc[:1]), v[:1], atol=1e-5)
        assert not torch.allclose(model.velocity(x, t, ctx, enc, r=t - 0.2), v)
        masked = model.decoder(x, t, t, enc, ctx, enc_mask=enc_mask, mask_padding=True)
        changed = enc.clone()
        changed[1, 4:] += 5.0
        masked2 = model.decoder(x, t, t, changed, ctx, enc_mask=enc_mask, mask_padding=True)
        unmasked2 = model.decoder(x, t, t, changed, ctx)
    assert v.shape == x.shape
    assert torch.allclose(masked[0], v[0], atol=1e-6)  # item 0 has no padding
    assert torch.allclose(masked2, masked, atol=1e-6)  # padded tokens are ignored with mask_padding
    assert not torch.allclose(unmasked2[1], v[1])  # ...and attended by default (official quirk)


def test_v15_xl_shaped_tiny_config_runs():
    cfg = AceStep15Config.tiny(
        hidden_size=96, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        encoder_hidden_size=64, encoder_intermediate_size=128, encoder_num_attention_heads=4,
        encoder_num_key_value_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AceStep15DiT(cfg).eval()
    assert model.decoder.condition_embedder.weight.shape == (96, 64)
    # attention width (4 heads x 32) differs from the model width
    assert model.decoder.layers[0].self_attn.q_proj.weight.shape == (128, 96)
    assert model.null_condition_emb.shape == (1, 1, 64)
    assert model.encoder.text_projector.weight.shape == (64, cfg.text_hidden_dim)
    g = torch.Generator().manual_seed(1)
    text, lyric = torch.randn(2, 5, 32, generator=g), torch.randn(2, 6, 32, generator=g)
    refs = torch.randn(2, 10, 8, generator=g)
    ones = torch.ones(2, 5, dtype=torch.int64)
    with torch.no_grad():
        enc, mask = model.encode_conditions(text, ones, lyric, torch.ones(2, 6), refs, torch.tensor([0, 1]))
        x, ctx, _ = _random_inputs(cfg)
        v = model.velocity(x, torch.tensor([0.5, 0.9]), ctx, enc)
        quantized, codes, mask_5hz = model.tokenize(x, torch.zeros(1, 10, 8), torch.ones(2, 13))
        latents = model.detokenize(model.codes_to_quantized(codes))
    assert enc.shape == (2, 6 + 1 + 5, 64) and bool(mask.all())
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert quantized.shape == (2, 3, 64) and codes.shape == (2, 3, 1) and mask_5hz.shape == (2, 3)
    assert latents.shape == (2, 15, 8)
    xl = AceStep15Config.xl()
    assert xl.encoder_side().hidden_size == xl.fsq_dim == 2048 and xl.hidden_size == 2560


def test_v15_fsq_indices_round_trip():
    torch.manual_seed(0)
    fsq = ResidualFSQ(16, (8, 5, 5, 3), num_quantizers=2)
    x = torch.randn(3, 7, 16) * 3
    with torch.no_grad():
        quantized, indices = fsq(x)
        assert indices.shape == (3, 7, 2) and indices.dtype == torch.int64
        assert int(indices.min()) >= 0 and int(indices.max()) < fsq.codebook_size
        assert torch.allclose(fsq.codes_to_quantized(indices), quantized, atol=1e-6)
        dropped = indices.clone()
        dropped[..., 1] = -1
        coarse = fsq.codes_to_quantized(dropped)
        single = ResidualFSQ(16, (8, 5, 5, 3), num_quantizers=1)
        single.load_state_dict(fsq.state_dict())
        first_only = single.codes_to_quantized(indices[..., :1])
    assert torch.allclose(coarse, first_only) and not torch.allclose(coarse, quantized)


def test_v15_pack_and_unpack():
    h1 = torch.arange(4.0).view(1, 4, 1)
    h2 = torch.arange(10.0, 13.0).view(1, 3, 1)
    packed, mask = pack_sequences(h1, h2, torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 1]]))
    assert packed.flatten().tolist() == [0.0, 1.0, 10.0, 12.0, 2.0, 3.0, 11.0]
    assert mask.tolist() == [[True] * 4 + [False] * 3]
    embs = torch.arange(8.0).view(4, 2)
    out, valid = unpack_per_item(embs, torch.tensor([1, 0, 1, 1]), batch_size=3)
    assert out.shape == (3, 3, 2)
    assert out[1].tolist() == [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]] and out[0, 0].tolist() == [2.0, 3.0]
    assert valid.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]


# -------------------------------------------------------------------------------------------------------
# config
# -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        AceStep15Config.full(),
        AceStep15Config.full(model_version="base", is_turbo=False),
        AceStep15Config.full(model_version="sft", is_turbo=False),
        AceStep15Config.tiny(),
        AceStep15Config.xl(),
    ],
    ids=["turbo", "base", "sft", "tiny", "xl"],
)
def test_v15_config_json_round_trip(tmp_path: Path, cfg: AceStep15Config):
    path = tmp_path / "config.json"
    cfg.to_json(path)
    data = json.loads(path.read_text())
    assert data["model_type"] == "acestep"
    assert data["architectures"] == ["AceStepConditionGenerationModel"]
    assert data["is_turbo"] is (cfg.variant == "turbo")
    module = "turbo" if cfg.variant == "turbo" else "base"
    assert data["auto_map"]["AutoModel"] == f"modeling_acestep_v15_{module}.AceStepConditionGenerationModel"
    again = AceStep15Config.from_json(path)
    assert again.variant == cfg.variant
    assert dataclasses.replace(again, is_turbo=cfg.is_turbo) == cfg


def test_v15_config_matches_official_files(golden_v15_checkpoints: Path):
    for variant in ("turbo", "base"):
        path = golden_v15_checkpoints / f"acestep-v15-{variant}" / "config.json"
        official = json.loads(path.read_text())
        mine = AceStep15Config.from_json(path).to_dict()
        for key in ("auto_map", "architectures", "model_type", "is_turbo", "layer_types", "fsq_input_levels"):
            assert mine[key] == official[key], key
    first = AceStep15Config.full().layer_types[:3]
    assert first == ("sliding_attention", "full_attention", "sliding_attention")


BAD_CONFIGS = [
    ({"hidden_size": "64"}, "hidden_size"),
    ({"num_attention_heads": 3}, "num_key_value_heads"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ({"layer_types": ["sliding_attention", "full_attention", "causal", "full_attention"]}, "causal"),
    ({"fsq_dim": 32}, "fsq_dim"),
    ({"fsq_input_levels": [8, 1, 5]}, "fsq_input_levels"),
    ({"use_sliding_window": "yes"}, "use_sliding_window"),
    ({"num_lyric_encoder_hidden_layers": 9}, "num_lyric_encoder_hidden_layers"),
    ({"model_type": "qwen3"}, "model_type"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"head_dim": 15}, "head_dim"),
]


@pytest.mark.parametrize(("change", "field_name"), BAD_CONFIGS, ids=[b[1] for b in BAD_CONFIGS])
def test_v15_bad_config_raises(golden_v15_checkpoints: Path, tmp_path: Path, change: dict, field_name: str):
    data = json.loads((golden_v15_checkpoints / "acestep-v15-turbo" / "config.json").read_text())
    data.update(change)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        AceStep15Config.from_json(path)
    assert str(path) in str(info.value) and field_name in str(info.value)


def test_v15_config_errors_without_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        AceStep15Config.from_json(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="hidden_size"):
        AceStep15Config.tiny(hidden_size=0)
    assert AceStep15Config.from_dict({"use_sliding_window": False}).sliding_window is None
