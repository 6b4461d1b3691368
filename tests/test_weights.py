"""Strict safetensors loading, meta-device construction (songflow.checkpoint.strict) and the v1 checkpoint
folder (songflow.checkpoint.acestep_v1).

The generic loader is tested on small hand-made modules; the golden tiny checkpoint (official key layout)
must load through ``load_checkpoint``; the full-size architectures built on the meta device must match the
official key lists in golden/keys/ key for key and shape for shape.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from songflow.checkpoint import device as device_mod
from songflow.checkpoint.acestep_v1 import (
    CHECKPOINT_FILES,
    CHECKPOINT_FOLDERS,
    WEIGHTS_NAME,
    load_checkpoint,
    load_dcae,
    load_transformer,
    load_vocoder,
    save_component,
    validate_checkpoint_dir,
)
from songflow.checkpoint.device import DTYPES, resolve_device, resolve_dtype
from songflow.checkpoint.strict import (
    build_on_meta,
    init_empty_weights,
    load_state_dict_strict,
    state_dict_shapes,
)
from songflow.errors import CheckpointError, ConfigError

# ------------------------------------------------------------------------------------------------------
# small modules for the generic loader
# ------------------------------------------------------------------------------------------------------


class Toy(nn.Module):
    """Linear + norm + an integer persistent buffer + a non-persistent buffer computed at construction."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.lin = nn.Linear(width, 3)
        self.norm = nn.LayerNorm(3)
        self.register_buffer("steps", torch.arange(5, dtype=torch.int64))
        self.register_buffer("table", self._table(), persistent=False)

    @staticmethod
    def _table() -> torch.Tensor:
        return torch.linspace(0.0, 1.0, 7).exp()


class ToyNoHook(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("table", torch.ones(3), persistent=False)


def _random_state(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        out[k] = torch.randn(v.shape, generator=g) if v.is_floating_point() else torch.arange(v.numel()) + 10
    return out


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_load_fills_module_exactly(tmp_path):
    state = _random_state(Toy())
    path = _write(tmp_path / "toy.safetensors", state)
    model = Toy()
    load_state_dict_strict(model, path, dtype=None, device="cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_init_empty_weights_puts_only_parameters_on_meta():
    with init_empty_weights():
        model = Toy()
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    assert torch.equal(model.table, Toy._table())
    assert not nn.Linear(2, 2).weight.is_meta  # the patch is gone after the block


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "float16"])
def test_meta_materialisation_and_dtype_cast(tmp_path, dtype):
    state = _random_state(Toy())
    path = _write(tmp_path / "toy.safetensors", state)
    with init_empty_weights():
        model = Toy()
    load_state_dict_strict(model, path, dtype=dtype, device="cpu")
    want = DTYPES[dtype] if isinstance(dtype, str) else dtype
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.lin.weight.dtype == want and model.table.dtype == want
    assert model.steps.dtype == torch.int64  # integers are never cast
    assert torch.equal(model.lin.weight, state["lin.weight"].to(want))
    assert torch.equal(model.steps, state["steps"])
    assert torch.equal(model.table, Toy._table().to(want))


def test_fully_meta_module_loads_when_the_file_holds_every_tensor(tmp_path):
    state = _random_state(Toy())
    state["table"] = torch.full((7,), 3.0)
    path = _write(tmp_path / "toy.safetensors", state)
    with torch.device("meta"):
        model = Toy()
    load_state_dict_strict(model, path, dtype=torch.bfloat16, optional_patterns=[r"^table$"])
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert torch.equal(model.lin.weight, state["lin.weight"].bfloat16())
    assert torch.equal(model.table, torch.full((7,), 3.0, dtype=torch.bfloat16))


def test_meta_buffer_not_in_the_file_is_reported(tmp_path):
    path = _write(tmp_path / "t.safetensors", _random_state(ToyNoHook()))
    with torch.device("meta"):
        model = ToyNoHook()
    with pytest.raises(RuntimeError, match="init_empty_weights") as info:
        load_state_dict_strict(model, path, dtype=None, device="cpu")
    assert "buffer table" in str(info.value)
    assert all(t.is_meta for t in model.state_dict().values())  # reported before anything is allocated


def test_loaded_tensors_do_not_depend_on_the_file(tmp_path):
    state = _random_state(Toy())
    path = _write(tmp_path / "toy.safetensors", state)
    with init_empty_weights():
        model = Toy()
    load_state_dict_strict(model, path, dtype=None)
    path.write_bytes(b"")  # overwritten in place: the parameters are copies, not views of the mapped file
    assert torch.equal(model.lin.weight, state["lin.weight"])


def test_tied_parameters_stay_tied(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2, bias=False)
            self.b = nn.Linear(2, 2, bias=False)
            self.b.weight = self.a.weight

    weight = torch.randn(2, 2)
    path = _write(tmp_path / "tied.safetensors", {"a.weight": weight, "b.weight": weight.clone()})
    with torch.device("meta"):
        model = Tied()
    load_state_dict_strict(model, path, dtype=torch.bfloat16)
    assert model.a.weight is model.b.weight
    assert torch.equal(model.a.weight, weight.bfloat16())


def test_module_load_hooks_run(tmp_path):
    class Cached(nn.Linear):
        def __init__(self):
            super().__init__(2, 2)
            self.cache = "stale"

        def _load_from_state_dict(self, *args, **kwargs):
            self.cache = None
            super()._load_from_state_dict(*args, **kwargs)

    path = _write(tmp_path / "c.safetensors", _random_state(Cached()))
    model = Cached()
    load_state_dict_strict(model, path, dtype=None)
    assert model.cache is None


def test_mismatches_are_reported_together(tmp_path):
    state = _random_state(Toy())
    del state["norm.bias"]
    state["lin.weight"] = torch.zeros(3, 5)
    state["extra.weight"] = torch.zeros(2)
    path = _write(tmp_path / "bad.safetensors", state)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(Toy(), path, dtype=None)
    msg = str(info.value)
    assert str(path) in msg
    assert "missing from the file (1): norm.bias" in msg
    assert "unexpected in the file (1): extra.weight" in msg
    assert "shape mismatches (1): lin.weight: file [3, 5] vs model [3, 4]" in msg


def test_long_key_lists_are_truncated_with_counts(tmp_path):
    state = _random_state(Toy())
    state.update({f"extra.{i}": torch.zeros(1) for i in range(25)})
    path = _write(tmp_path / "many.safetensors", state)
    with pytest.raises(CheckpointError, match=r"unexpected in the file \(25\): .*\(\+15 more\)"):
        load_state_dict_strict(Toy(), path, dtype=None)


def test_error_leaves_meta_module_unallocated(tmp_path):
    state = _random_state(Toy())
    state["surprise"] = torch.zeros(1)
    path = _write(tmp_path / "bad.safetensors", state)
    with init_empty_weights():
        model = Toy()
    with pytest.raises(CheckpointError):
        load_state_dict_strict(model, path, dtype=None)
    assert all(p.is_meta for p in model.parameters())


def test_ignore_and_optional_patterns(tmp_path):
    class WithHead(Toy):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(3, 2)

    full = _random_state(WithHead())
    full["lin.add_q_proj.weight"] = torch.zeros(2, 2)
    path = _write(tmp_path / "full.safetensors", full)
    kwargs = dict(dtype=None, ignore_patterns=[r"\.add_q_proj\."], optional_patterns=[r"^head\."])
    # optional keys in file and module: loaded; the ignored key is dropped
    with_head = WithHead()
    load_state_dict_strict(with_head, path, **kwargs)
    assert torch.equal(with_head.head.weight, full["head.weight"])
    # optional keys only in the file: dropped
    load_state_dict_strict(Toy(), path, **kwargs)
    # optional keys only in the module: kept (a meta module gets reset_parameters())
    without = _write(
        tmp_path / "without.safetensors", {k: v for k, v in full.items() if not k.startswith("head")}
    )
    with init_empty_weights():
        meta_head = WithHead()
    load_state_dict_strict(meta_head, without, **kwargs)
    assert not meta_head.head.weight.is_meta and torch.isfinite(meta_head.head.weight).all()
    assert meta_head.head.weight.abs().max() <= 1 / 3**0.5 + 1e-6  # nn.Linear's own init range
    # without the patterns the same files are errors
    with pytest.raises(CheckpointError, match="unexpected"):
        load_state_dict_strict(Toy(), path, dtype=None)
    with pytest.raises(CheckpointError, match="missing"):
        load_state_dict_strict(WithHead(), without, dtype=None)


def test_optional_key_may_name_a_non_persistent_buffer(tmp_path):
    state = _random_state(Toy())
    state["table"] = torch.full((7,), 3.0)
    path = _write(tmp_path / "t.safetensors", state)
    model = Toy()
    load_state_dict_strict(model, path, dtype=None, optional_patterns=[r"^table$"])
    assert torch.equal(model.table, torch.full((7,), 3.0))


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".pth"])
def test_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(b"\x80\x04 not even opened")
    with pytest.raises(CheckpointError, match="safetensors required"):
        load_state_dict_strict(Toy(), path, dtype=None)


def test_truncated_file_is_reported_as_damaged(tmp_path):
    path = _write(tmp_path / "toy.safetensors", _random_state(Toy()))
    data = path.read_bytes()
    for n in (len(data) - 16, 40, 3):
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="damaged.*download it again"):
            load_state_dict_strict(Toy(), path, dtype=None)


def test_missing_weight_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_strict(Toy(), tmp_path / "nope.safetensors", dtype=None)


def test_save_component_roundtrip(tmp_path):
    from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig

    config = DCAEConfig.tiny()
    torch.manual_seed(0)
    model = DCAE(config)
    folder = save_component(model, config, tmp_path / "music_dcae_f8c8")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS_NAME]
    assert DCAEConfig.from_json(folder / "config.json") == config
    loaded = load_dcae(folder, "float32", "cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    save_component(nn.Linear(2, 2), {"in": 2}, tmp_path / "plain")  # a dict config is fine too
    assert json.loads((tmp_path / "plain" / "config.json").read_text()) == {"in": 2}


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has native bf16, so dtype plumbing is tested the same on every CPU."""
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)


def test_resolve_device_and_dtype(native_bf16):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    assert resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("float8", "cpu")


def test_cpu_bf16_kept_only_with_native_bf16(monkeypatch, caplog):
    """bf16 on a CPU without AVX512-BF16/AMX is emulated and many times slower: float32 and one warning."""
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger=device_mod.__name__):
        assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert not caplog.records
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger=device_mod.__name__):
        assert resolve_dtype("bfloat16", "cpu") == torch.float32
        assert resolve_dtype("float16", "cpu") == torch.float16  # only bf16 is redirected
        assert resolve_dtype("auto", "cpu") == torch.float32
    assert len(caplog.records) == 1 and "no native bfloat16" in caplog.records[0].getMessage()


def test_pipeline_load_in_bf16_on_a_cpu_without_it_warns_once(monkeypatch, caplog):
    from songflow.families import load_pipeline

    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        pipe = load_pipeline(None, device="cpu", dtype="bfloat16")  # the shipped songflow-tiny
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float32}
    assert sum("no native bfloat16" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n", False),
        (None, None),  # no /proc/cpuinfo: torch's capability decides
    ],
)
def test_cpu_has_native_bf16_reads_cpuinfo_flags(tmp_path, monkeypatch, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    monkeypatch.setattr(device_mod, "_CPUINFO", path)
    device_mod.cpu_has_native_bf16.cache_clear()
    try:
        if expected is None:
            monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
            assert device_mod.cpu_has_native_bf16() is False
            device_mod.cpu_has_native_bf16.cache_clear()
            monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
            expected = True
        assert device_mod.cpu_has_native_bf16() is expected
    finally:
        device_mod.cpu_has_native_bf16.cache_clear()


# ------------------------------------------------------------------------------------------------------
# the golden tiny checkpoint
# ------------------------------------------------------------------------------------------------------


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_golden_checkpoint_loads(golden_models_dir, dtype, native_bf16):
    name = "float32" if dtype == torch.float32 else "bfloat16"
    ckpt = load_checkpoint(golden_models_dir, dtype=name, device="cpu")
    assert ckpt.root == golden_models_dir.resolve()
    assert ckpt.text_encoder is not None and ckpt.text_encoder.is_loaded
    for module in (ckpt.transformer, ckpt.codec):
        assert not module.training
        tensors = [*module.parameters(), *module.buffers()]
        assert not any(t.is_meta for t in tensors)
        assert {t.dtype for t in tensors if t.is_floating_point()} == {dtype}
    # every tensor holds the file's values (the fixture weights are exact in bf16)
    for folder, module in (
        ("ace_step_transformer", ckpt.transformer),
        ("music_dcae_f8c8", ckpt.codec.dcae),
        ("music_vocoder", ckpt.codec.vocoder),
    ):
        stored = _file_state(golden_models_dir / folder / WEIGHTS_NAME)
        for key, value in module.state_dict().items():
            assert torch.equal(value, stored[key].to(dtype)), f"{folder}: {key}"
    dropped = set(_file_state(golden_models_dir / "ace_step_transformer" / WEIGHTS_NAME)) - set(
        ckpt.transformer.state_dict()
    )
    assert dropped and all(".add_" in k or "to_add_out" in k or k.startswith("projectors.") for k in dropped)


def test_golden_checkpoint_without_text_encoder_and_with_projectors(golden_models_dir):
    ckpt = load_checkpoint(golden_models_dir, load_text_encoder=False)
    assert ckpt.text_encoder is None
    dit = load_transformer(golden_models_dir / "ace_step_transformer", "float32", "cpu", with_projectors=True)
    stored = _file_state(golden_models_dir / "ace_step_transformer" / WEIGHTS_NAME)
    projectors = {k: v for k, v in dit.state_dict().items() if k.startswith("projectors.")}
    assert len(projectors) == 12
    assert all(torch.equal(v, stored[k].float()) for k, v in projectors.items())


def _link_checkpoint(src: Path, dst: Path) -> Path:
    """A checkpoint folder of symlinks to ``src``'s files (cheap to modify one file)."""
    for folder in CHECKPOINT_FOLDERS:
        (dst / folder).mkdir(parents=True)
        for f in (src / folder).iterdir():
            (dst / folder / f.name).symlink_to(f)
    return dst


def _replace(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.unlink()
    save_file(tensors, str(path))


def test_vocoder_mel_buffers_are_optional(golden_models_dir, tmp_path):
    root = _link_checkpoint(golden_models_dir, tmp_path / "ckpt")
    file = root / "music_vocoder" / WEIGHTS_NAME
    stored = _file_state(file)
    _replace(file, {k: v for k, v in stored.items() if not k.startswith("mel_transform.")})
    vocoder = load_vocoder(root / "music_vocoder", "float32", "cpu")
    # the module's own buffers are kept; they equal torchaudio's values stored in the golden file
    for key in ("mel_transform.spectrogram.window", "mel_transform.mel_scale.fb"):
        got = dict(vocoder.named_buffers())[key]
        assert torch.allclose(got, stored[key], atol=1e-6), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocoder_buffers_computed_at_construction_survive_the_load(tmp_path, dtype, native_bf16):
    import dataclasses

    from songflow.models.acestep_v1.vocoder import Vocoder, VocoderConfig

    config = dataclasses.replace(VocoderConfig.tiny(), head_type="istft", phase_refiner_bins=8)
    torch.manual_seed(0)
    reference = Vocoder(config)
    folder = save_component(reference, config, tmp_path / "music_vocoder")
    vocoder = load_vocoder(folder, dtype, "cpu")
    stored = set(_file_state(folder / WEIGHTS_NAME))
    computed = {k: v for k, v in reference.named_buffers() if k not in stored}
    assert {"head.window", "head.mel_spread"} <= set(computed)  # not state: computed at construction
    got = dict(vocoder.named_buffers())
    for key, value in computed.items():
        assert not got[key].is_meta and torch.equal(got[key], value.to(dtype)), key
    for key, value in reference.state_dict().items():
        assert torch.equal(vocoder.state_dict()[key], value.to(dtype)), key


def test_validate_checkpoint_dir_errors(golden_models_dir, tmp_path):
    assert validate_checkpoint_dir(golden_models_dir) == golden_models_dir.resolve()
    with pytest.raises(CheckpointError, match="does not exist.*songflow download"):
        validate_checkpoint_dir(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="single component folder.*" + str(golden_models_dir.name)):
        validate_checkpoint_dir(golden_models_dir / "ace_step_transformer")
    partial = tmp_path / "partial"
    shutil.copytree(golden_models_dir / "ace_step_transformer", partial / "ace_step_transformer")
    (partial / "umt5-base").mkdir()
    with pytest.raises(CheckpointError) as info:
        validate_checkpoint_dir(partial)
    msg = str(info.value)
    assert "missing folders: music_dcae_f8c8, music_vocoder" in msg
    assert "umt5-base/model.safetensors" in msg and "songflow download" in msg
    with pytest.raises(CheckpointError, match="missing folders"):
        load_checkpoint(partial)


def test_pickle_only_component_is_refused(golden_models_dir, tmp_path):
    root = _link_checkpoint(golden_models_dir, tmp_path / "ckpt")
    (root / "music_dcae_f8c8" / WEIGHTS_NAME).unlink()
    (root / "music_dcae_f8c8" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.bin.*safetensors required"):
        load_checkpoint(root, load_text_encoder=False)


def test_hf_cache_layout_resolves_to_snapshot(golden_models_dir, tmp_path):
    cache = tmp_path / "models--ACE-Step--ACE-Step-v1-3.5B"
    snap = _link_checkpoint(golden_models_dir, cache / "snapshots" / "abc123")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("abc123")
    assert validate_checkpoint_dir(tmp_path) == snap.resolve()
    assert validate_checkpoint_dir(cache) == snap.resolve()


@pytest.mark.parametrize(
    ("folder", "edit", "expected"),
    [
        ("music_dcae_f8c8", "truncate", "damaged"),
        ("ace_step_transformer", "extra_key", r"unexpected in the file \(1\): surprise\.weight"),
        (
            "music_vocoder",
            "wrong_shape",
            r"shape mismatches \(1\): head\.conv_post\.bias: file \[2\] vs model \[1\]",
        ),
        ("ace_step_transformer", "drop_key", r"missing from the file \(1\): final_layer\.linear\.bias"),
    ],
)
def test_bad_component_files(golden_models_dir, tmp_path, folder, edit, expected):
    root = _link_checkpoint(golden_models_dir, tmp_path / "ckpt")
    file = root / folder / WEIGHTS_NAME
    if edit == "truncate":
        data = file.read_bytes()
        file.unlink()
        file.write_bytes(data[: len(data) // 2])
    else:
        tensors = _file_state(file)
        if edit == "extra_key":
            tensors["surprise.weight"] = torch.zeros(3)
        elif edit == "wrong_shape":
            tensors["head.conv_post.bias"] = torch.zeros(2)
        else:
            del tensors["final_layer.linear.bias"]
        _replace(file, tensors)
    with pytest.raises(CheckpointError, match=expected) as info:
        load_checkpoint(root, load_text_encoder=False)
    assert f"{folder}/{WEIGHTS_NAME}" in str(info.value)


# ------------------------------------------------------------------------------------------------------
# full-size architectures vs the official key lists
# ------------------------------------------------------------------------------------------------------


def _official_keys(golden_dir: Path, name: str) -> dict[str, list[int]]:
    return json.loads((golden_dir / "keys" / name).read_text())


def _assert_same_keys(ours: dict[str, list[int]], official: dict[str, list[int]]) -> None:
    assert sorted(set(official) - set(ours)) == [], "keys we lack"
    assert sorted(set(ours) - set(official)) == [], "keys the official model lacks"
    wrong = {k: (ours[k], official[k]) for k in ours if list(ours[k]) != list(official[k])}
    assert wrong == {}


@pytest.mark.parametrize("with_projectors", [False, True])
def test_full_size_transformer_keys(golden_dir, with_projectors):
    import re

    from songflow.models.acestep_v1 import transformer as dit
    from songflow.models.acestep_v1.lyric_encoder import LyricEncoderConfig

    config = dit.TransformerConfig()
    model = build_on_meta(
        lambda: dit.ACEStepTransformer(
            config,
            LyricEncoderConfig.official(input_size=config.lyric_hidden_size),
            with_projectors=with_projectors,
        )
    )
    official = _official_keys(golden_dir, "dit_full.json")
    dropped = [re.compile(p) if isinstance(p, str) else p for p in dit.UNUSED_CHECKPOINT_KEY_PATTERNS]
    if not with_projectors:
        dropped += [re.compile(p) if isinstance(p, str) else p for p in dit.OPTIONAL_CHECKPOINT_KEY_PATTERNS]
    expected = {k: v for k, v in official.items() if not any(p.search(k) for p in dropped)}
    assert len(expected) == (682 if with_projectors else 670)  # 874 - 192 add_* (- 12 projectors)
    _assert_same_keys(state_dict_shapes(model), expected)


def test_full_size_dcae_and_vocoder_keys(golden_dir):
    from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig
    from songflow.models.acestep_v1.vocoder import Vocoder, VocoderConfig

    _assert_same_keys(
        state_dict_shapes(build_on_meta(lambda: DCAE(DCAEConfig()))),
        _official_keys(golden_dir, "dcae_full.json"),
    )
    vocoder = build_on_meta(lambda: Vocoder(VocoderConfig()))
    _assert_same_keys(state_dict_shapes(vocoder), _official_keys(golden_dir, "vocoder_full.json"))


def test_full_size_umt5_keys(golden_dir):
    from transformers import UMT5Config, UMT5EncoderModel

    # google/umt5-base
    config = UMT5Config(
        vocab_size=256384,
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
        scalable_attention=True,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = build_on_meta(lambda: UMT5EncoderModel(config))
    _assert_same_keys(state_dict_shapes(model), _official_keys(golden_dir, "umt5_base_encoder.json"))


def test_checkpoint_file_table_matches_golden_folder(golden_models_dir):
    for folder, names in CHECKPOINT_FILES.items():
        for name in names:
            assert (golden_models_dir / folder / name).is_file(), f"{folder}/{name}"
    with safe_open(str(golden_models_dir / "umt5-base" / "model.safetensors"), "pt") as f:
        assert "shared.weight" in f.keys()
    assert os.path.basename(WEIGHTS_NAME) == "diffusion_pytorch_model.safetensors"
