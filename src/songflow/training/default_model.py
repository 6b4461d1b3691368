"""The recipe of ``songflow-tiny``, the model shipped inside the package (see its ``MODEL_CARD.md``).

Steps (``scripts/train_songflow_tiny.sh`` runs them all):

1. ``songflow corpus make`` - the labelled synthetic corpus;
2. ``songflow train-codec vocoder|dcae`` - the mel codec (``configs/codec/songflow_tiny_*.yaml``);
3. :func:`build_initial_checkpoint` (``songflow train init``) - a checkpoint folder with the trained codec,
   a fresh DiT + lyric Conformer of :func:`songflow_tiny_configs`, and a small frozen random UMT5 whose
   word-level tokenizer knows every word of the corpus tags (nothing to download: it works offline);
4. ``songflow train configs/train/songflow_tiny.yaml`` - flow matching on the cached latents;
5. :func:`package_model` (``songflow train package``) - a self-contained copy (no links, DiT in bf16)
   plus its model card, into ``src/songflow/assets/songflow-tiny``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from songflow.errors import CheckpointError, ConfigError
from songflow.fileio import atomic_write_text

TEXT_WIDTH = 128  # d_model of the small UMT5 (= the DiT's text_embedding_dim)
TEXT_LAYERS = 2
TEMPO_WORDS = tuple(str(bpm) for bpm in range(30, 251))  # every tempo a prompt may name, seen or not
CARD_NAME = "MODEL_CARD.md"


def songflow_tiny_configs():
    """``(TransformerConfig, LyricEncoderConfig)`` of songflow-tiny: the released DiT structure at 6 blocks
    of width 256 (4 heads of 64), a 2-block Conformer of width 256, the real lyric vocabulary size."""
    from songflow.models.acestep_v1.lyric_encoder import LyricEncoderConfig
    from songflow.models.acestep_v1.transformer import TransformerConfig

    tcfg = TransformerConfig(
        num_layers=6,
        attention_head_dim=64,
        num_attention_heads=4,
        text_embedding_dim=TEXT_WIDTH,
        lyric_hidden_size=256,
        ssl_encoder_depths=(1, 1),
        ssl_latent_dims=(64, 64),
    )
    lcfg = LyricEncoderConfig(
        input_size=256, output_size=256, attention_heads=4, linear_units=512, num_blocks=2
    )
    return tcfg, lcfg


def tag_vocabulary(tag_texts: Iterable[str]) -> tuple[str, ...]:
    """Every word of ``tag_texts`` (as the tag tokenizer splits them) plus :data:`TEMPO_WORDS`, sorted."""
    from songflow.checkpoint.random_checkpoint import TAG_WORDS, tag_tokens

    words: set[str] = set(TEMPO_WORDS) | set(TAG_WORDS)
    for text in tag_texts:
        words.update(tag_tokens(text))
    return tuple(sorted(words))


def _dataset_tags(dataset_path: Path) -> list[str]:
    from songflow.training.data import is_saved_dataset, load_saved_dataset

    if not is_saved_dataset(dataset_path):
        raise ConfigError(f"{dataset_path} is not a datasets.save_to_disk folder (official dataset format)")
    ds = load_saved_dataset(dataset_path)
    if "tags" not in ds.column_names:
        raise ConfigError(f"dataset {dataset_path} has no 'tags' column")
    return [", ".join(t) if isinstance(t, list) else str(t) for t in ds["tags"]]


def _component_dir(path: Path, name: str) -> Path:
    """``path`` itself when it is the component folder, else ``path/name``."""
    for candidate in (path, path / name):
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(f"no {name} (config.json + weights) in {path}")


def build_initial_checkpoint(
    out: str | Path, *, dataset: str | Path, dcae: str | Path, vocoder: str | Path, seed: int = 0
) -> Path:
    """Write the untrained songflow-tiny checkpoint folder ``out`` (official layout + ``vocab.json``)."""
    from songflow.checkpoint.acestep_v1 import save_component
    from songflow.checkpoint.random_checkpoint import build_lyric_vocab, write_text_encoder
    from songflow.models.acestep_v1.transformer import ACEStepTransformer

    out = Path(out)
    words = tag_vocabulary(_dataset_tags(Path(dataset)))
    tcfg, lcfg = songflow_tiny_configs()
    torch.manual_seed(seed)
    save_component(ACEStepTransformer(tcfg, lcfg), tcfg, out / "ace_step_transformer")
    lcfg.to_file(out / "ace_step_transformer" / "lyric_encoder_config.json")
    for name, src in (("music_dcae_f8c8", dcae), ("music_vocoder", vocoder)):
        shutil.copytree(_component_dir(Path(src), name), out / name, dirs_exist_ok=True)
    write_text_encoder(out / "umt5-base", d_model=TEXT_WIDTH, n_layers=TEXT_LAYERS, seed=seed, words=words)
    build_lyric_vocab(out / "vocab.json")
    return out


def package_model(checkpoint: str | Path, dest: str | Path, *, card: str | Path | None = None) -> Path:
    """Copy ``checkpoint`` into ``dest`` as plain files (links resolved), the DiT weights in bfloat16, plus
    the model card; the copy is assembled beside ``dest`` and swapped in, so ``dest`` is never half-written.
    """
    from safetensors.torch import load_file, save_file

    from songflow.checkpoint.acestep_v1 import CHECKPOINT_FOLDERS, WEIGHTS_NAME, validate_checkpoint_dir

    src = validate_checkpoint_dir(checkpoint)
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (*CHECKPOINT_FOLDERS, "vocab.json"):
        source = (src / name).resolve()
        if source.is_dir():
            shutil.copytree(source, tmp / name)
        elif source.is_file():
            shutil.copy2(source, tmp / name)
    weights = tmp / "ace_step_transformer" / WEIGHTS_NAME
    tensors = load_file(str(weights))
    save_file(
        {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}, str(weights)
    )
    if card is not None:
        atomic_write_text(tmp / CARD_NAME, Path(card).read_text(encoding="utf-8"))
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
