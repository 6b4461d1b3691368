"""LoRA and LyCORIS (LoKr, LoHa) adapters on ACE-Step 1.5, per request, on a tiny random checkpoint.

The adapters are written in the official 1.5 trainer's layouts: a PEFT ``save_pretrained`` folder
(``<out>/adapter/adapter_model.safetensors``, keys ``base_model.model.layers.<i>.<self|cross>_attn
.<q|k|v|o>_proj.lora_A.weight``, and ``adapter_config.json``) and a LyCORIS ``lokr_weights.safetensors``
(``lycoris_layers_<i>_self_attn_q_proj.lokr_w1`` ... with the ``lokr_config`` header). Shown: weight 0 is the
base song bit-exactly, a request without adapters after one with them has the base weights bit-exactly,
two adapters at once equal one adapter holding their summed delta (to float rounding), the LoKr/LoHa deltas
are the Kronecker/Hadamard formulas, each request's adapters give what a fresh pipeline gives, the CLI's
``--lora DIR:WEIGHT`` works, and a v1 LoRA on 1.5 is refused naming its first key.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import load_cpu, tiny_v15_root
from songflow.errors import CheckpointError
from songflow.requests import LoraRef
from songflow.requests_v15 import Params15, Text2Music15

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # the official 1.5 trainer's LoRAConfig.target_modules


@pytest.fixture(scope="module")
def ckpt15(tmp_path_factory) -> Path:
    return tiny_v15_root(tmp_path_factory, "v15lora", seed=3)


@pytest.fixture(scope="module")
def pipe15(ckpt15):
    return load_cpu(ckpt15)


def _song(*loras: LoraRef, seed: int = 5) -> Text2Music15:
    params = Params15(seeds=(seed,), timesteps=(1.0, 0.5))
    return Text2Music15(
        caption="dark synth", lyrics="[verse]\nla", duration_s=6.0, params=params, loras=loras
    )


def _targets(decoder: nn.Module) -> list[str]:
    return [n for n, m in decoder.named_modules() if type(m) is nn.Linear and n.rsplit(".", 1)[-1] in TARGETS]


def _lora_pairs(decoder: nn.Module, r: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (A [r, in], B [out, r])}``, a trained-looking (B != 0) adapter on every target."""
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for layer in _targets(decoder):
        m = decoder.get_submodule(layer)
        a = torch.randn(r, m.in_features, generator=g) / m.in_features**0.5
        pairs[layer] = (a, torch.randn(m.out_features, r, generator=g) * 0.3)
    return pairs


def _write_peft(out: Path, pairs: dict, r: int, alpha: float) -> Path:
    """The official trainer's output folder ``out`` (the adapter in ``out/adapter``, as save_pretrained)."""
    folder = out / "adapter"
    folder.mkdir(parents=True)
    tensors = {}
    for layer, (a, b) in pairs.items():
        tensors[f"base_model.model.{layer}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{layer}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": r, "lora_alpha": alpha,
        "lora_dropout": 0.1, "target_modules": list(TARGETS), "bias": "none", "use_rslora": False,
    }  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return out


def _lokr_factors(decoder: nn.Module, seed: int, dim: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """LoKr factors on the self-attention projections: ``lokr_w1 [4, 4]`` and ``lokr_w2_a [out/4, dim]``,
    ``lokr_w2_b [dim, in/4]``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in _targets(decoder):
        if ".self_attn." in layer:
            m = decoder.get_submodule(layer)
            out[layer] = {
                "lokr_w1": torch.randn(4, 4, generator=g),
                "lokr_w2_a": torch.randn(m.out_features // 4, dim, generator=g) * 0.1,
                "lokr_w2_b": torch.randn(dim, m.in_features // 4, generator=g) * 0.1,
            }
    return out


def _write_lycoris(path: Path, factors: dict, alpha: float, *, extra: dict | None = None) -> Path:
    """A LyCORIS ``save_weights`` file: ``lycoris_<layer with _>.<factor>`` and a scalar ``alpha`` each."""
    tensors = {}
    for layer, parts in factors.items():
        stem = "lycoris_" + layer.replace(".", "_")
        tensors.update({f"{stem}.{k}": v.contiguous() for k, v in parts.items()})
        tensors[f"{stem}.alpha"] = torch.tensor(float(alpha))
    tensors.update(extra or {})
    config = {"linear_dim": 2, "linear_alpha": alpha, "factor": 4, "rs_lora": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), {"algo": "lokr", "format": "lycoris", "lokr_config": json.dumps(config)})
    return path


@pytest.fixture(scope="module")
def adapters(pipe15, tmp_path_factory) -> dict[str, Path]:
    decoder = pipe15.dit.decoder
    root = tmp_path_factory.mktemp("adapters")
    conv_zero = {  # LyCORIS may wrap the patch-embedding Conv1d too; untrained, its delta is zero
        "lycoris_proj_in_1.lokr_w1": torch.randn(4, 4),
        "lycoris_proj_in_1.lokr_w2": torch.zeros(16, 6, 2),
        "lycoris_proj_in_1.alpha": torch.tensor(2.0),
    }
    return {
        "p": _write_peft(root / "p", _lora_pairs(decoder, 4, seed=1), r=4, alpha=8),
        "q": _write_peft(root / "q", _lora_pairs(decoder, 4, seed=2), r=4, alpha=4),
        "lokr": _write_lycoris(
            root / "k" / "lokr_weights.safetensors", _lokr_factors(decoder, 3), 4.0, extra=conv_zero
        ),
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The Kronecker product written out: ``out[i*p + k, j*q + l] = a[i, j] * b[k, l]``."""
    return torch.einsum("ij,kl->ikjl", a, b).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


# ---------------------------------------------------------------------------------------------------------
# the file layouts and the delta maths
# ---------------------------------------------------------------------------------------------------------


def test_official_peft_folder_maps_onto_every_decoder_attention_projection(pipe15, adapters):
    from songflow.checkpoint.lora import load_lora
    from songflow.nn.lora import lora_modules

    decoder = copy.deepcopy(pipe15.dit.decoder)
    name = load_lora(decoder, adapters["p"], weight=0.5)
    layers = lora_modules(decoder, name)
    assert (
        sorted(layers) == sorted(_targets(pipe15.dit.decoder))
        and len(layers) == 8 * decoder.config.num_hidden_layers
    )
    pairs = _lora_pairs(pipe15.dit.decoder, 4, seed=1)
    layer = "layers.1.cross_attn.k_proj"
    a, b = pairs[layer]
    assert torch.allclose(layers[layer].delta_weight(name), 0.5 * (8 / 4) * (b @ a), atol=1e-6)


def test_lokr_and_loha_deltas_are_the_kronecker_and_hadamard_formulas(pipe15, adapters, tmp_path):
    from songflow.checkpoint.lora import load_lora
    from songflow.nn.lora import lora_modules

    decoder = copy.deepcopy(pipe15.dit.decoder)
    base = _state(decoder)
    name = load_lora(decoder, adapters["lokr"].parent, weight=0.8)
    layers = lora_modules(decoder, name)
    factors = _lokr_factors(pipe15.dit.decoder, 3)
    assert sorted(layers) == sorted(factors)  # the zero Conv1d entry is skipped
    for layer, f in factors.items():
        want = 0.8 * (4.0 / 2) * _kron(f["lokr_w1"], f["lokr_w2_a"] @ f["lokr_w2_b"])  # alpha / dim = 2
        assert torch.allclose(layers[layer].delta_weight(name), want, atol=1e-6), layer
    # a LoKr without a factored part has scale 1, whatever its alpha tensor says (LyCORIS: alpha = dim)
    layer = "layers.0.self_attn.o_proj"
    full = {layer: {"lokr_w1": torch.randn(4, 8), "lokr_w2": torch.randn(16, 8) * 0.1}}
    name = load_lora(decoder, _write_lycoris(tmp_path / "full.safetensors", full, 64.0))
    got = lora_modules(decoder, name)[layer].delta_weight(name)
    assert torch.allclose(got, _kron(full[layer]["lokr_w1"], full[layer]["lokr_w2"]), atol=1e-6)
    # LoHa: (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r
    g = torch.Generator().manual_seed(9)
    hada = {k: torch.randn(*s, generator=g) for k, s in [("hada_w1_a", (64, 3)), ("hada_w1_b", (3, 64))]}
    hada |= {k: torch.randn(*s, generator=g) for k, s in [("hada_w2_a", (64, 3)), ("hada_w2_b", (3, 64))]}
    name = load_lora(decoder, _write_lycoris(tmp_path / "loha.safetensors", {layer: hada}, 1.5), weight=2.0)
    want = 2.0 * (1.5 / 3) * (hada["hada_w1_a"] @ hada["hada_w1_b"]) * (hada["hada_w2_a"] @ hada["hada_w2_b"])
    assert torch.allclose(lora_modules(decoder, name)[layer].delta_weight(name), want, atol=1e-5)
    from songflow.checkpoint.lora import set_loras

    set_loras(decoder, [])
    assert _same(_state(decoder), base) and not lora_modules(decoder)


# ---------------------------------------------------------------------------------------------------------
# per request on the pipeline
# ---------------------------------------------------------------------------------------------------------


def test_weight_zero_is_the_base_song_and_no_adapters_restores_the_base_weights(pipe15, adapters):
    from songflow.nn.lora import lora_modules

    base_state = _state(pipe15.dit)
    base = pipe15.generate(_song())
    off = pipe15.generate(_song(LoraRef(str(adapters["p"]), 0.0), LoraRef(str(adapters["lokr"]), 0.0)))
    assert torch.equal(off.audio, base.audio) and torch.equal(off.latents, base.latents)
    on = pipe15.generate(_song(LoraRef(str(adapters["p"]), 1.0), LoraRef(str(adapters["lokr"]), 0.7)))
    assert not torch.allclose(on.latents, base.latents, atol=1e-3), "the adapters change the song"
    assert [r.weight for r in on.request.loras] == [1.0, 0.7], "the sidecar request keeps the adapters"
    again = pipe15.generate(_song())  # the next request without adapters: the base weights, bit-exactly
    assert _same(_state(pipe15.dit), base_state) and not lora_modules(pipe15.dit)
    assert torch.equal(again.audio, base.audio)


def test_two_adapters_at_once_equal_one_adapter_holding_their_summed_delta(pipe15, adapters, tmp_path):
    decoder = pipe15.dit.decoder
    p, q = _lora_pairs(decoder, 4, seed=1), _lora_pairs(decoder, 4, seed=2)
    w_p, w_q = 0.7, -0.5
    summed = {  # [w_p s_p B_p, w_q s_q B_q] @ [A_p; A_q] at scale 1 (alpha = r = 8)
        layer: (
            torch.cat([p[layer][0], q[layer][0]]),
            torch.cat([w_p * 2 * p[layer][1], w_q * q[layer][1]], 1),
        )
        for layer in p
    }
    one = _write_peft(tmp_path / "sum", summed, r=8, alpha=8)
    both = pipe15.generate(_song(LoraRef(str(adapters["p"]), w_p), LoraRef(str(adapters["q"]), w_q)))
    single = pipe15.generate(_song(LoraRef(str(one))))
    base = pipe15.generate(_song())
    assert torch.allclose(both.latents, single.latents, rtol=1e-4, atol=1e-5)
    assert (both.latents - single.latents).abs().max() < 1e-3 * (both.latents - base.latents).abs().max()


def test_each_requests_adapters_give_what_a_fresh_pipeline_gives(pipe15, ckpt15, adapters):
    sets = {
        "p": (LoraRef(str(adapters["p"]), 0.9),),
        "lokr": (LoraRef(str(adapters["lokr"]), 1.0),),
        "both": (LoraRef(str(adapters["lokr"]), 0.5), LoraRef(str(adapters["p"]), 0.3)),
    }
    shared = {key: pipe15.generate(_song(*refs, seed=8)).latents for key, refs in sets.items()}
    shared["p again"] = pipe15.generate(_song(*sets["p"], seed=8)).latents
    fresh = load_cpu(ckpt15)
    for key, refs in sets.items():
        assert torch.equal(fresh.generate(_song(*refs, seed=8)).latents, shared[key]), key
        fresh.apply_loras(())
    assert torch.equal(shared["p again"], shared["p"])


def test_a_v1_lora_on_15_is_refused_naming_its_first_key_and_leaves_the_base(pipe15, adapters, tmp_path):
    pipe15.apply_loras(())
    base_state = _state(pipe15.dit)
    pipe15.apply_loras((LoraRef(str(adapters["p"])),))  # loaded before: the failed request unloads it
    folder = tmp_path / "v1_lora"
    folder.mkdir()
    v1 = {
        "transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 64),
        "transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(64, 4),
    }
    save_file(v1, str(folder / "pytorch_lora_weights.safetensors"))
    with pytest.raises(CheckpointError) as err:
        pipe15.generate(_song(LoraRef(str(folder))))
    message = str(err.value)
    assert "transformer_blocks.0.attn.to_q.lora_A.weight" in message and "ACE-Step v1" in message, message
    assert "does not fit this DiTDecoder (width 64, 4 blocks)" in message, message
    layer = {"transformer_blocks.0.attn.to_q": {"lokr_w1": torch.randn(4, 4), "lokr_w2": torch.randn(16, 16)}}
    lokr = _write_lycoris(tmp_path / "v1_lokr.safetensors", layer, 1.0)
    with pytest.raises(CheckpointError, match="lycoris_transformer_blocks_0_attn_to_q.lokr_w1"):
        pipe15.generate(_song(LoraRef(str(lokr))))
    assert _same(_state(pipe15.dit), base_state)
    pipe15.generate(_song())  # the pipeline still runs


# ---------------------------------------------------------------------------------------------------------
# front ends
# ---------------------------------------------------------------------------------------------------------


def test_cli_generate_with_lora_dir_and_weight_records_and_replays_it(ckpt15, adapters, tmp_path):
    from songflow.audio.io import load_audio
    from songflow.interfaces.cli import main

    out = tmp_path / "song.wav"
    argv = ["generate", "--checkpoint", str(ckpt15), "--caption", "dark synth", "--duration", "10"]
    argv += [
        "--timesteps",
        "1,0.5",
        "--seed",
        "4",
        "--lora",
        f"{adapters['p']}:0.5",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    request = json.loads(out.with_suffix(".json").read_text())["request"]
    assert request["loras"] == [{"path": str(adapters["p"]), "weight": 0.5}]
    again = tmp_path / "again.wav"
    assert main(["generate", "--from", str(out.with_suffix(".json")), "--out", str(again), "--quiet"]) == 0
    assert torch.equal(load_audio(out)[0], load_audio(again)[0])


def test_studio_discovers_official_adapter_folders_and_lokr_files(adapters):
    from songflow.checkpoint.lora import discover_loras

    found = discover_loras(adapters["p"].parent)  # p/adapter/..., q/adapter/..., k/lokr_weights.safetensors
    assert found == [(key, str(adapters["p"].parent / key)) for key in ("k", "p", "q")]
