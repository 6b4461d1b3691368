"""Model families: recognising a checkpoint folder, describing it, loading its pipeline; the task registry
and the public API."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

import songflow
from songflow.checkpoint.acestep_v1 import CHECKPOINT_FOLDERS, load_checkpoint
from songflow.checkpoint.hub import resolve_checkpoint
from songflow.errors import CheckpointError, ConfigError
from songflow.families import FAMILIES, describe_folder, family_for, load_pipeline
from songflow.families.acestep_v1 import ACESTEP_V1
from songflow.pipeline import Components, Pipeline, PipelineOptions, Placement
from songflow.requests import TASKS, GenerationParams, Text2Music
from songflow.tasks.registry import TASK_SPECS, spec_for

REQUEST = Text2Music(
    tags="pop, piano", lyrics="[verse]\nla la", duration_s=1.0, params=GenerationParams(steps=3, seeds=(7,))
)


def _n_tensor_values(module: torch.nn.Module) -> int:
    """What a safetensors file of ``module`` holds: every state-dict tensor (parameters and buffers), tied
    weights (UMT5's shared embedding) once."""
    unique = {v.data_ptr(): v.numel() for v in module.state_dict().values()}
    return sum(unique.values())


def _assert_counts_match_modules(root) -> None:
    report = describe_folder(root)
    assert report.family == ACESTEP_V1.name and report.root == root.resolve()
    parts = {c.name: c for c in report.components}
    assert [c.folder for c in report.components] == list(CHECKPOINT_FOLDERS)
    ckpt = load_checkpoint(root)
    assert parts["transformer"].n_params == _n_tensor_values(ckpt.transformer)
    assert parts["dcae"].n_params == _n_tensor_values(ckpt.codec.dcae)
    assert parts["vocoder"].n_params == _n_tensor_values(ckpt.codec.vocoder)
    assert parts["text_encoder"].n_params == _n_tensor_values(ckpt.text_encoder.module)
    assert report.n_params == sum(c.n_params or 0 for c in report.components) > 0
    assert all(c.dtype and c.kind for c in report.components)


def test_shipped_model_is_recognised_with_its_parameter_counts():
    root = resolve_checkpoint(None)
    assert family_for(root) is ACESTEP_V1
    _assert_counts_match_modules(root)


def test_random_checkpoint_is_recognised_with_its_parameter_counts(tiny_ckpt):
    assert family_for(tiny_ckpt) is ACESTEP_V1
    _assert_counts_match_modules(tiny_ckpt)


def test_missing_path_file_and_empty_folder_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        describe_folder(tmp_path / "nope")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a file"):
        describe_folder(tmp_path / "weights.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty folder") as info:
        family_for(empty)
    assert all(folder in str(info.value) for folder in CHECKPOINT_FOLDERS)  # what was expected
    with pytest.raises(CheckpointError, match="empty folder"):
        load_pipeline(empty, device="cpu")


def test_component_folder_instead_of_the_root_is_explained(tiny_ckpt):
    with pytest.raises(CheckpointError, match="single component folder") as info:
        describe_folder(tiny_ckpt / "ace_step_transformer")
    assert str(tiny_ckpt) in str(info.value)  # points at the probable root


def test_partial_folder_names_what_is_missing(tiny_ckpt, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_ckpt, partial)
    shutil.rmtree(partial / "music_vocoder")
    (partial / "music_dcae_f8c8" / "config.json").unlink()
    assert family_for(partial) is ACESTEP_V1  # the layout is v1's, only incomplete
    with pytest.raises(CheckpointError) as info:
        describe_folder(partial)
    message = str(info.value)
    assert "missing folders: music_vocoder" in message and "music_dcae_f8c8/config.json" in message
    with pytest.raises(CheckpointError, match="music_vocoder"):
        load_pipeline(partial, device="cpu")


def test_load_pipeline_equals_a_direct_construction(tiny_ckpt):
    from songflow.text.lyric_tokenizer import LyricTokenizer

    pipe = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    assert pipe.family is ACESTEP_V1 and FAMILIES[pipe.family.name] is ACESTEP_V1
    assert pipe.checkpoint_root == tiny_ckpt.resolve()
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    ckpt = load_checkpoint(tiny_ckpt)
    direct = Pipeline(
        Components(ckpt.transformer, ckpt.codec, ckpt.text_encoder, LyricTokenizer(tiny_ckpt / "vocab.json")),
        Placement("cpu", torch.float32),
    )
    assert direct.family is None and direct.output_sample_rate_hz == 48000
    a, b = pipe.generate(REQUEST), direct.generate(REQUEST)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.audio, b.audio)


def test_load_pipeline_passes_the_pipeline_options(tiny_ckpt):
    pipe = load_pipeline(tiny_ckpt, device="cpu", output_sample_rate_hz=44100, batch_passes=False)
    assert pipe.options == PipelineOptions(output_sample_rate_hz=44100, batch_passes=False)
    assert pipe.generate(REQUEST).sample_rate_hz == 44100
    with pytest.raises(TypeError):
        load_pipeline(tiny_ckpt, device="cpu", no_such_option=1)


def test_every_task_has_one_registry_entry():
    assert list(TASK_SPECS) == list(TASKS) == list(ACESTEP_V1.tasks)
    for name, spec in TASK_SPECS.items():
        assert spec.name == name and spec.request_cls is TASKS[name]
    assert {n for n, s in TASK_SPECS.items() if s.batchable} == {"text2music", "retake"}
    with pytest.raises(ConfigError, match="choose one of") as info:
        spec_for("karaoke")
    assert all(name in str(info.value) for name in TASKS)


def test_public_api_is_exported_lazily():
    from songflow.families import load_pipeline as loader
    from songflow.requests import Edit

    assert songflow.Pipeline is Pipeline and songflow.load_pipeline is loader and songflow.Edit is Edit
    assert {"Pipeline", "Text2Music", "load_pipeline"} <= set(songflow.__all__) <= set(dir(songflow))
    with pytest.raises(AttributeError):
        songflow.no_such_name  # noqa: B018
    code = "import sys, songflow; assert 'torch' not in sys.modules, 'import songflow loaded torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
