"""ACE-Step v1 (3.5 B DiT over a mel DC-AE + vocoder, UMT5 tags, Conformer lyrics) as a model family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from songflow.audio.geometry import OFFICIAL_GEOMETRY, LatentGeometry
from songflow.checkpoint.acestep_v1 import CHECKPOINT_FOLDERS, validate_checkpoint_dir
from songflow.errors import SongflowError
from songflow.families.base import ComponentInfo, FolderReport, ModelFamily
from songflow.pipeline import Components, Pipeline, PipelineOptions, Placement

TASKS = ("text2music", "retake", "repaint", "extend", "audio2audio", "edit")

# component name, folder, weights file, what it is
_COMPONENTS = (
    ("transformer", "ace_step_transformer", "diffusion_pytorch_model.safetensors", "DiT + lyric Conformer"),
    ("dcae", "music_dcae_f8c8", "diffusion_pytorch_model.safetensors", "mel DC-AE (f8c8)"),
    ("vocoder", "music_vocoder", "diffusion_pytorch_model.safetensors", "mel vocoder"),
    ("text_encoder", "umt5-base", "model.safetensors", "UMT5 tag encoder"),
)


def recognises(root: Path) -> bool:
    """A v1 folder holds at least one of the four official component folders."""
    return any((root / folder).is_dir() for folder in CHECKPOINT_FOLDERS)


def describe(root: Path) -> FolderReport:
    from songflow.checkpoint.strict import safetensors_summary

    root = validate_checkpoint_dir(root)
    parts = []
    for name, folder, weights, kind in _COMPONENTS:
        n_params, dtypes = safetensors_summary(root / folder / weights)
        parts.append(ComponentInfo(name, folder, kind, n_params, ", ".join(dtypes)))
    return FolderReport(family=ACESTEP_V1.name, root=root, components=tuple(parts))


def build_pipeline(
    transformer: Any,
    codec: Any,
    text_encoder: Any,
    lyric_tokenizer: Any,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    offload: bool = False,
    geometry: LatentGeometry = OFFICIAL_GEOMETRY,
    **options: Any,
) -> Pipeline:
    """A v1 pipeline over loaded (or random) components; ``options`` are :class:`PipelineOptions` fields
    (``output_sample_rate_hz``, ``batch_passes``, ``merge_loras``)."""
    pipe = Pipeline(
        Components(transformer, codec, text_encoder, lyric_tokenizer),
        Placement(device, dtype, offload),
        geometry,
        PipelineOptions(**options),
    )
    pipe.family = ACESTEP_V1
    return pipe


def load(
    root: Path,
    *,
    device: str = "auto",
    dtype: str = "float32",
    offload: bool = False,
    vocab_path: str | Path | None = None,
    **options: Any,
) -> Pipeline:
    """Load a checkpoint folder in the official four-folder layout (``root`` already validated) and build
    its pipeline; ``options`` as :func:`build_pipeline` (``geometry`` and the :class:`PipelineOptions`)."""
    from songflow.checkpoint import load_checkpoint, resolve_device, resolve_dtype
    from songflow.checkpoint.hub import find_lyric_vocab
    from songflow.text.lyric_tokenizer import LyricTokenizer

    root = Path(root).expanduser()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    vocab = Path(vocab_path) if vocab_path else find_lyric_vocab(root)
    if vocab is None:
        raise SongflowError(
            f"no lyric vocabulary (vocab.json) found in {root}; run `songflow download --dir {root}` "
            "to fetch it, or pass --vocab PATH"
        )
    ckpt = load_checkpoint(root, dtype=dt, device=torch.device("cpu") if offload else dev)
    pipe = build_pipeline(
        ckpt.transformer,
        ckpt.codec,
        ckpt.text_encoder,
        LyricTokenizer(vocab),
        device=dev,
        dtype=dt,
        offload=offload,
        **options,
    )
    pipe.checkpoint_root = ckpt.root
    return pipe


ACESTEP_V1 = ModelFamily(
    name="acestep-v1",
    title="ACE-Step v1",
    recognises=recognises,
    validate=validate_checkpoint_dir,
    describe=describe,
    load=load,
    tasks=TASKS,
)
