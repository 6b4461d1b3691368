"""ACE-Step DiT: parity with the official model on the golden fixtures, key layout, configs and invariants.

Parity cases (``dit/*.safetensors``, produced by the official code in float32 with the tiny checkpoint in
``models/ace_step_transformer``): encoder states and mask, velocity, every intermediate the fixture records
(through forward hooks on our modules, which carry the official names), the three ERG variants, T = 1 and
empty lyrics. Run with ``-s`` to see the max abs errors.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import assert_close, load_tensors
from songflow.errors import ConfigError
from songflow.models.acestep_v1.lyric_encoder import LyricEncoder, LyricEncoderConfig
from songflow.models.acestep_v1.transformer import (
    OPTIONAL_CHECKPOINT_KEY_PATTERNS,
    UNUSED_CHECKPOINT_KEY_PATTERNS,
    ACEStepTransformer,
    Conditions,
    GLUMBConv,
    TransformerConfig,
)
from songflow.nn.attention import rope_table
from songflow.nn.embeddings import relative_position_table

RTOL = 1e-5


def _matches(key: str, patterns) -> bool:
    return any(p.match(key) for p in patterns)


def _load_model(models_dir: Path, *, with_projectors: bool = False) -> ACEStepTransformer:
    folder = models_dir / "ace_step_transformer"
    config = TransformerConfig.from_json(folder / "config.json")
    lyric_config = LyricEncoderConfig.from_file(folder / "lyric_encoder_config.json")
    model = ACEStepTransformer(config, lyric_config, with_projectors=with_projectors)
    state = load_tensors(folder / "diffusion_pytorch_model.safetensors")
    unused = [k for k in state if _matches(k, UNUSED_CHECKPOINT_KEY_PATTERNS)]
    assert len(unused) == 8 * config.num_layers
    state = {k: v for k, v in state.items() if k not in unused}
    if not with_projectors:
        state = {k: v for k, v in state.items() if not _matches(k, OPTIONAL_CHECKPOINT_KEY_PATTERNS)}
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def model(golden_models_dir: Path) -> ACEStepTransformer:
    return _load_model(golden_models_dir)


def _case(golden_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_tensors(golden_dir / "dit" / f"{name}.safetensors")


def _encode(model: ACEStepTransformer, case: dict[str, torch.Tensor], **kwargs) -> Conditions:
    return model.encode(
        case["in/encoder_text_hidden_states"],
        case["in/text_attention_mask"],
        case["in/speaker_embeds"],
        case["in/lyric_token_idx"],
        case["in/lyric_mask"],
        **kwargs,
    )


def _sigma(case: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flow time whose float32 ``* 1000`` reproduces the official timestep exactly."""
    t = case["in/timestep"]
    sigma = t / 1000.0
    assert torch.equal(sigma * 1000.0, t), "sigma*1000 does not round-trip the fixture timestep"
    return sigma


def _report(name: str, err: float) -> None:
    print(f"  parity {name:40s} max abs err {err:.3e}")


# ----------------------------------------------------------------------------------------------- parity


def test_parity_basic_with_intermediates(model: ACEStepTransformer, golden_dir: Path) -> None:
    case = _case(golden_dir, "basic")
    hooked: dict[str, torch.nn.Module] = {
        "time_proj": model.time_proj,
        "timestep_embedder": model.timestep_embedder,
        "t_block": model.t_block,
        "proj_in": model.proj_in,
        "speaker_embedder": model.speaker_embedder,
        "genre_embedder": model.genre_embedder,
        "lyric_embs": model.lyric_embs,
        "lyric_encoder_embed": model.lyric_encoder.embed,
        "lyric_encoder_out": model.lyric_encoder,
        "lyric_proj": model.lyric_proj,
        "final_layer": model.final_layer,
    }
    hooked.update({f"lyric_encoder_block_{i}": m for i, m in enumerate(model.lyric_encoder.encoders)})
    hooked.update({f"transformer_block_{i:02d}": m for i, m in enumerate(model.transformer_blocks)})
    captured: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name, module in hooked.items()
    ]
    try:
        with torch.no_grad():
            cond = _encode(model, case)
            velocity = model(
                case["in/hidden_states"], _sigma(case), cond, latent_mask=case["in/attention_mask"]
            )
    finally:
        for handle in handles:
            handle.remove()

    _report(
        "basic/encoder_hidden_states", assert_close(cond.states, case["out/encoder_hidden_states"], rtol=RTOL)
    )
    assert cond.mask.dtype == torch.float32
    assert torch.equal(cond.mask, case["out/encoder_hidden_mask"])
    _report("basic/velocity", assert_close(velocity, case["out/velocity"], rtol=RTOL, name="velocity"))
    errors = {
        name: assert_close(captured[name], case[f"intermediate/{name}"], rtol=RTOL, name=name)
        for name in hooked
    }
    for name in (
        "time_proj",
        "timestep_embedder",
        "t_block",
        "proj_in",
        "lyric_encoder_out",
        "lyric_proj",
        "final_layer",
    ):
        _report(f"basic/intermediate/{name}", errors[name])
    worst = max(errors, key=errors.get)
    _report(f"basic/intermediates worst of {len(errors)} ({worst})", errors[worst])

    seq, seq_c = case["in/hidden_states"].shape[-1], cond.states.shape[1]
    head_dim = model.config.attention_head_dim
    for suffix, length in (("latent", seq), ("encoder", seq_c)):
        cos, sin = model.rotary_emb(length, torch.device("cpu"), torch.float32)
        assert torch.equal(cos, case[f"intermediate/rope_cos_{suffix}"])
        assert torch.equal(sin, case[f"intermediate/rope_sin_{suffix}"])
        assert torch.equal(rope_table(length, head_dim, model.config.rope_theta)[0], cos)
    lyric_len = case["in/lyric_token_idx"].shape[1]
    pos = relative_position_table(lyric_len, model.lyric_config.output_size)
    assert torch.equal(pos, case["intermediate/lyric_encoder_embed_pos_emb"])


def test_parity_erg(model: ACEStepTransformer, golden_dir: Path) -> None:
    meta = json.loads((golden_dir / "dit" / "dit.json").read_text())["cases"]["erg"]
    case = _case(golden_dir, "erg")
    # the hooked blocks and tau of this case, as dit.json records them
    lyric_scale = {i: meta["tau"] for i in meta["erg_lyric_blocks"]}
    dit_scale = {i: meta["tau"] for i in meta["erg_diffusion_blocks"]}
    x, sigma, mask = case["in/hidden_states"], _sigma(case), case["in/attention_mask"]
    with torch.no_grad():
        plain = _encode(model, case)
        erg = _encode(model, case, lyric_query_scale=lyric_scale)
        outputs = {
            "velocity_erg_lyric_and_diffusion": model(x, sigma, erg, latent_mask=mask, query_scale=dit_scale),
            "velocity_erg_diffusion_only": model(x, sigma, plain, latent_mask=mask, query_scale=dit_scale),
            "velocity_erg_lyric_only": model(x, sigma, erg, latent_mask=mask),
        }
    _report(
        "erg/encoder_hidden_states_erg_lyric",
        assert_close(erg.states, case["out/encoder_hidden_states_erg_lyric"], rtol=RTOL),
    )
    assert torch.equal(erg.mask, case["out/encoder_hidden_mask"])
    for name, value in outputs.items():
        _report(f"erg/{name}", assert_close(value, case[f"out/{name}"], rtol=RTOL, name=name))


@pytest.mark.parametrize("name", ["t1", "empty_lyrics"])
def test_parity_edge_cases(model: ACEStepTransformer, golden_dir: Path, name: str) -> None:
    case = _case(golden_dir, name)
    with torch.no_grad():
        cond = _encode(model, case)
        velocity = model(case["in/hidden_states"], _sigma(case), cond, latent_mask=case["in/attention_mask"])
    assert torch.isfinite(cond.states).all()
    _report(
        f"{name}/encoder_hidden_states",
        assert_close(cond.states, case["out/encoder_hidden_states"], rtol=RTOL),
    )
    assert torch.equal(cond.mask, case["out/encoder_hidden_mask"])
    _report(f"{name}/velocity", assert_close(velocity, case["out/velocity"], rtol=RTOL, name="velocity"))


def test_batch_equals_singles(model: ACEStepTransformer, golden_dir: Path) -> None:
    case = _case(golden_dir, "basic")
    with torch.no_grad():
        cond = _encode(model, case)
        batch = model(case["in/hidden_states"], _sigma(case), cond, latent_mask=case["in/attention_mask"])
        for i in range(case["in/hidden_states"].shape[0]):
            one = {k: v[i : i + 1] for k, v in case.items() if k.startswith("in/")}
            single = model(
                one["in/hidden_states"],
                _sigma(one),
                _encode(model, one),
                latent_mask=one["in/attention_mask"],
            )
            assert_close(single, batch[i : i + 1], rtol=1e-5, name=f"item {i}")


def test_checkpoint_with_projectors_loads_strictly(golden_models_dir: Path) -> None:
    model = _load_model(golden_models_dir, with_projectors=True)
    dims = model.config.ssl_latent_dims  # from the checkpoint's config.json
    assert model.projectors is not None and len(model.projectors) == len(dims)
    assert [p[4].out_features for p in model.projectors] == list(dims)


# ----------------------------------------------------------------------------------------- key layout


def test_full_size_keys_match_official(golden_dir: Path) -> None:
    official = json.loads((golden_dir / "keys" / "dit_full.json").read_text())
    expected = {k: tuple(v) for k, v in official.items() if not _matches(k, UNUSED_CHECKPOINT_KEY_PATTERNS)}
    assert len(official) - len(expected) == 24 * 8
    with torch.device("meta"):
        full = ACEStepTransformer(TransformerConfig(), with_projectors=True)
        bare = ACEStepTransformer(TransformerConfig())
    ours = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert ours == expected
    without = {k: v for k, v in expected.items() if not _matches(k, OPTIONAL_CHECKPOINT_KEY_PATTERNS)}
    assert {k: tuple(v.shape) for k, v in bare.state_dict().items()} == without
    assert len(without) == 874 - 24 * 8 - 12
    assert not list(full.buffers())  # RoPE tables are not state
    assert next(full.parameters()).is_meta


# -------------------------------------------------------------------------------------------- configs


def test_config_defaults_are_released_values() -> None:
    c = TransformerConfig()
    released = dict(
        in_channels=8,
        num_layers=24,
        inner_dim=2560,
        attention_head_dim=128,
        num_attention_heads=20,
        mlp_ratio=2.5,
        out_channels=8,
        max_position=32768,
        rope_theta=1e6,
        speaker_embedding_dim=512,
        text_embedding_dim=768,
        ssl_encoder_depths=(8, 8),
        ssl_names=("mert", "m-hubert"),
        ssl_latent_dims=(1024, 768),
        patch_size=(16, 1),
        max_height=16,
        max_width=32768,
        lyric_encoder_vocab_size=6693,
        lyric_hidden_size=1024,
    )
    assert {k: getattr(c, k) for k in released} == released
    assert c.ffn_hidden == 6400
    lc = LyricEncoderConfig.official(1024)
    assert (lc.output_size, lc.attention_heads, lc.linear_units, lc.num_blocks) == (1024, 16, 4096, 6)


def test_config_json_round_trip(golden_models_dir: Path, tmp_path: Path) -> None:
    path = golden_models_dir / "ace_step_transformer" / "config.json"
    config = TransformerConfig.from_json(path)
    raw = json.loads(path.read_text())
    assert config.num_layers == raw["num_layers"] and config.patch_size == tuple(raw["patch_size"])
    assert config.inner_dim == raw["num_attention_heads"] * raw["attention_head_dim"]
    data = config.to_dict()
    assert data["_class_name"] == "ACEStepTransformer2DModel"
    official = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    assert {k: v for k, v in data.items() if not k.startswith("_")} == official
    config.to_json(tmp_path / "config.json")
    assert TransformerConfig.from_json(tmp_path / "config.json") == config
    # the released file's class name is "Transformer2DModel" (sic); bookkeeping keys are ignored
    assert (
        TransformerConfig.from_dict({"_class_name": "Transformer2DModel", "inner_dim": 2560})
        == TransformerConfig()
    )


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="inner_dim"):
        TransformerConfig.from_dict({"inner_dim": 2048})
    with pytest.raises(ConfigError, match="unknown key"):
        TransformerConfig.from_dict({"not_a_key": 1})
    for bad in (
        {"use_cnn_module": True},
        {"macaron_style": True},
        {"causal": True},
        {"pos_enc_layer_type": "rel_pos"},
        {"static_chunk_size": 4},
        {"input_layer": "conv2d"},
    ):
        with pytest.raises(ConfigError):
            LyricEncoderConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="lyric_hidden_size"):
        ACEStepTransformer(TransformerConfig.tiny(), LyricEncoderConfig.tiny(input_size=16))


def test_lyric_config_from_file(golden_models_dir: Path, tmp_path: Path) -> None:
    path = golden_models_dir / "ace_step_transformer" / "lyric_encoder_config.json"
    lc = LyricEncoderConfig.from_file(path)
    args = json.loads(path.read_text())["conformer_encoder_args"]
    sizes = ("input_size", "output_size", "attention_heads", "linear_units", "num_blocks")
    assert {k: getattr(lc, k) for k in sizes} == {k: args[k] for k in sizes}
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(dataclasses.asdict(lc)))
    assert LyricEncoderConfig.from_file(flat) == lc
    lc.to_file(tmp_path / "lyric_encoder_config.json")
    assert LyricEncoderConfig.from_file(tmp_path / "lyric_encoder_config.json") == lc


# ----------------------------------------------------------------------------------------- invariants


def _tiny_model(seed: int = 0) -> ACEStepTransformer:
    torch.manual_seed(seed)
    config = TransformerConfig.tiny()
    model = ACEStepTransformer(config, LyricEncoderConfig.tiny(config.lyric_hidden_size)).eval()
    with torch.no_grad():  # default inits leave adaLN gates etc. small; make every path matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _tiny_inputs(model: ACEStepTransformer, batch: int, frames: int, lyric_len: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    text = torch.randn(batch, 4, c.text_embedding_dim, generator=g)
    text_mask = torch.ones(batch, 4, dtype=torch.long)
    speaker = torch.randn(batch, c.speaker_embedding_dim, generator=g)
    lyric_ids = torch.randint(0, c.lyric_encoder_vocab_size, (batch, lyric_len), generator=g)
    lyric_mask = torch.ones(batch, lyric_len, dtype=torch.long)
    x = torch.randn(batch, 8, 16, frames, generator=g)
    sigma = torch.rand(batch, generator=g)
    return x, sigma, (text, text_mask, speaker, lyric_ids, lyric_mask)


@pytest.mark.parametrize("frames", [1, 7, 64])
def test_shapes_with_masks_and_empty_lyrics(frames: int) -> None:
    model = _tiny_model()
    x, sigma, enc = _tiny_inputs(model, 2, frames)
    text, text_mask, speaker, lyric_ids, lyric_mask = enc
    text_mask[1, 2:] = 0
    lyric_ids[1], lyric_mask[1] = 0, 0  # empty lyrics for item 1 (ids 0, mask 0)
    latent_mask = torch.ones(2, frames)
    with torch.no_grad():
        cond = model.encode(text, text_mask, speaker, lyric_ids, lyric_mask)
        v = model(x, sigma, cond, latent_mask=latent_mask)
        v_nomask = model(x, sigma, cond)
    assert cond.states.shape == (2, 1 + 4 + 5, model.config.inner_dim)
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()
    assert torch.equal(v, v_nomask)


def test_erg_tau_one_equals_none_and_tau_changes_output() -> None:
    model = _tiny_model()
    x, sigma, enc = _tiny_inputs(model, 2, 9)
    with torch.no_grad():
        cond = model.encode(*enc)
        cond_one = model.encode(*enc, lyric_query_scale={0: 1.0, 1: 1.0})
        assert torch.equal(cond_one.states, cond.states)
        v = model(x, sigma, cond)
        assert torch.equal(model(x, sigma, cond, query_scale={0: 1.0, 1: 1.0}), v)
        assert not torch.allclose(model(x, sigma, cond, query_scale={1: 0.01}), v)
        assert not torch.allclose(model.encode(*enc, lyric_query_scale={1: 0.01}).states, cond.states)
    with pytest.raises(ValueError, match="out of range"):
        model(x, sigma, cond, query_scale={2: 0.5})


def test_sigma_scalar_broadcast_and_return_hidden() -> None:
    model = _tiny_model()
    x, _, enc = _tiny_inputs(model, 2, 6)
    captured = {}
    model.transformer_blocks[1].register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out))
    with torch.no_grad():
        cond = model.encode(*enc)
        v_scalar = model(x, torch.tensor(0.25), cond)
        v_vec, hidden = model(x, torch.full((2,), 0.25), cond, return_hidden_at=1)
    assert torch.equal(v_scalar, v_vec)
    assert torch.equal(hidden, captured["h"])


def test_gradient_checkpointing_matches_and_meta_construction() -> None:
    model = _tiny_model().train()
    x, sigma, enc = _tiny_inputs(model, 2, 5)
    with torch.no_grad():
        cond = model.encode(*enc)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(x, sigma, cond).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)
    with torch.device("meta"):
        ACEStepTransformer(TransformerConfig.tiny(), LyricEncoderConfig.tiny(32), with_projectors=True)


def test_glumbconv_matches_conv1d_reference() -> None:
    torch.manual_seed(0)
    ff = GLUMBConv(8, 12).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    out = ff(x)
    h = torch.nn.functional.silu(ff.inverted_conv.conv(x.transpose(1, 2)))
    h = ff.depth_conv.conv(h)
    value, gate = h.chunk(2, dim=1)
    ref = ff.point_conv.conv(value * torch.nn.functional.silu(gate)).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    (g_out,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g_out, g_ref)


def test_lyric_encoder_fully_masked_row_is_finite_in_training() -> None:
    torch.manual_seed(0)
    enc = LyricEncoder(LyricEncoderConfig.tiny(16)).train()
    x = torch.randn(2, 4, 16, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    out = enc(x, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
