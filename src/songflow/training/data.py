"""Training data: official-format dataset -> cached latents/text states/lyric ids -> padded batches.

:func:`preprocess` reads an HF dataset in the official layout (``keys``, ``filename``, ``tags``,
``speaker_emb_path``, ``norm_lyrics``, ``recaption``), runs the frozen codec, text encoder, lyric tokenizer
and (for REPA) the SSL models once, and writes safetensors shards plus ``index.json``. Rows whose audio is
missing, unreadable or silent (or whose lyrics do not tokenize) are skipped and counted, never fatal.
:class:`LatentCache` is a ``torch.utils.data.Dataset`` over that cache and :func:`collate` pads a batch.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from songflow.errors import AudioError, ConfigError, SongflowError

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
SOURCE_RATE_HZ = 48000  # the official loader resamples every clip to 48 kHz
SILENT_FRACTION = 0.95
CACHE_VERSION = 1


@dataclass
class PreprocessReport:
    cache_dir: Path
    written: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"cache_dir": str(self.cache_dir), "written": self.written, "skipped": dict(self.skipped)}


# ---------------------------------------------------------------------------------------------------------
# audio


def prepare_audio(path: Path, *, min_seconds: float, max_seconds: float) -> tuple[Tensor, str | None]:
    """``([2, N] at 48 kHz, None)`` or ``(empty, reason)`` with reason in missing/unreadable/silent."""
    from songflow.audio.io import load_audio, to_stereo
    from songflow.audio.resample import resample

    if not path.is_file():
        return torch.empty(0), "missing"
    try:
        wav, rate = load_audio(path)
        wav = to_stereo(wav)
    except (AudioError, OSError, RuntimeError):
        return torch.empty(0), "unreadable"
    if wav.shape[-1] == 0 or (wav == 0).all(dim=0).float().mean().item() > SILENT_FRACTION:
        return torch.empty(0), "silent"
    if rate != SOURCE_RATE_HZ:
        wav = resample(wav.float(), rate, SOURCE_RATE_HZ)
    wav = wav.clamp(-1.0, 1.0)
    min_n, max_n = int(min_seconds * SOURCE_RATE_HZ), int(max_seconds * SOURCE_RATE_HZ)
    if wav.shape[-1] < min_n:
        wav = torch.nn.functional.pad(wav, (0, min_n - wav.shape[-1]))
    return wav[:, :max_n].contiguous(), None


@torch.no_grad()
def ssl_features(model: torch.nn.Module, wav: Tensor, rate_hz: int, target_hz: int, chunk_s: float) -> Tensor:
    """SSL ``last_hidden_state`` ``[T, D]`` of a stereo clip (the official REPA recipe, any HF audio model).

    Mean of the channels, resampled to ``target_hz``, normalised to zero mean / unit variance, split into
    ``chunk_s`` chunks (last one zero-padded); each chunk's features are trimmed to its valid share.
    """
    from songflow.audio.resample import resample

    mono = wav.float().mean(0, keepdim=True)
    mono = resample(mono, rate_hz, target_hz)[0]
    mono = (mono - mono.mean()) / torch.sqrt(mono.var(unbiased=False) + 1e-7)
    chunk = max(1, int(round(chunk_s * target_hz)))
    device = next(model.parameters()).device
    out = []
    for start in range(0, mono.numel(), chunk):
        piece = mono[start : start + chunk]
        valid = piece.numel()
        piece = torch.nn.functional.pad(piece, (0, chunk - valid)) if valid < chunk else piece
        hidden = model(piece[None].to(device)).last_hidden_state[0].float().cpu()
        keep = max(1, math.ceil(hidden.shape[0] * valid / chunk))
        out.append(hidden[:keep])
    return torch.cat(out)


def load_ssl_model(path: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A local HF audio model folder (Hubert, Wav2Vec2, MERT with its code, ...) in eval mode, frozen."""
    from transformers import AutoModel

    if not Path(path).is_dir():
        raise ConfigError(f"SSL model folder not found: {path} (give a local transformers model folder)")
    model = AutoModel.from_pretrained(path, trust_remote_code=False)
    return model.eval().requires_grad_(False).to(device)


# ---------------------------------------------------------------------------------------------------------
# preprocessing


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a ``datasets.save_to_disk`` folder (a Dataset or a DatasetDict)."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def load_saved_dataset(path: Path, split: str = "train"):
    """The ``datasets.Dataset`` saved in ``path`` (``split`` of a DatasetDict)."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    return ds[split] if isinstance(ds, datasets.DatasetDict) else ds


def resolve_audio(filename: str, dataset_path: Path) -> Path:
    """``filename`` as given when it exists (or is absolute), else under ``dataset_path`` or its parent."""
    p = Path(filename).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for base in (dataset_path, dataset_path.parent):
        if (base / p).exists():
            return base / p
    return p


class ShardWriter:
    """Collects cache items into ``shard-NNNNN.safetensors`` files of ``shard_size`` items each."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, max(1, shard_size)
        self.tensors: dict[str, Tensor] = {}
        self.count, self.shard = 0, 0
        self.items: list[dict[str, Any]] = []

    def add(self, key: str, tensors: dict[str, Tensor], *, frames: int | None = None) -> None:
        """Item ``key``; ``frames`` (default: the last dim of ``latents``) is recorded in the index."""
        name = f"shard-{self.shard:05d}.safetensors"
        i = self.count
        for k, v in tensors.items():
            self.tensors[f"{i}.{k}"] = v.detach().cpu().contiguous()
        if frames is None:
            frames = int(tensors["latents"].shape[-1])
        self.items.append({"key": key, "shard": name, "item": i, "frames": frames})
        self.count += 1
        if self.count >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        from songflow.fileio import atomic_path

        if not self.tensors:
            return
        with atomic_path(self.folder / f"shard-{self.shard:05d}.safetensors") as tmp:
            save_file(self.tensors, str(tmp))
        self.tensors, self.count, self.shard = {}, 0, self.shard + 1


@dataclass
class _Encoders:
    """What :func:`preprocess` runs on each row: codec, tag encoder, lyric tokenizer, REPA SSL models."""

    codec: Any
    text_encoder: Any
    tokenizer: Any
    ssl: list[tuple[torch.nn.Module, Any]]
    device: str

    def encode_row(
        self, row: dict[str, Any], dataset_path: Path, min_seconds: float, max_seconds: float
    ) -> tuple[dict[str, Tensor], str | None]:
        """The cached tensors of one dataset row, or ``({}, reason)`` when the row is skipped."""
        wav, reason = prepare_audio(
            resolve_audio(str(row.get("filename", "")), dataset_path),
            min_seconds=min_seconds,
            max_seconds=max_seconds,
        )
        if reason is None:
            try:
                lyric_ids = self.tokenizer.tokenize_lyrics(str(row.get("norm_lyrics") or ""))
            except SongflowError:
                reason = "bad_lyrics"
        if reason is not None:
            return {}, reason
        tags = row.get("tags") or []
        prompt = ", ".join(tags) if isinstance(tags, list) else str(tags)
        states, mask = self.text_encoder.encode([prompt or " "])
        n_text = max(1, int(mask[0].sum()))
        with torch.no_grad():
            latents = self.codec.encode(wav[None].to(self.device), SOURCE_RATE_HZ)[0]
        tensors = {
            "latents": latents.float(),
            "text_states": states[0, :n_text].float(),
            "lyric_ids": torch.tensor(lyric_ids, dtype=torch.long),
            "lyric_mask": torch.tensor(self.tokenizer.lyric_mask_for(lyric_ids), dtype=torch.long),
        }
        for j, (model, m) in enumerate(self.ssl):
            tensors[f"ssl.{j}"] = ssl_features(model, wav, SOURCE_RATE_HZ, m.sample_rate_hz, m.chunk_seconds)
        return tensors, None


def _write_index(
    cache_dir: Path,
    writer: ShardWriter,
    report: PreprocessReport,
    speaker_dim: int,
    ssl_paths: list[str],
    checkpoint_dir: Path,
) -> None:
    from songflow.fileio import atomic_write_text

    index = {
        "version": CACHE_VERSION,
        "items": writer.items,
        "skipped": dict(report.skipped),
        "speaker_dim": speaker_dim,
        "ssl_models": ssl_paths,
        "checkpoint_dir": str(checkpoint_dir),
    }
    atomic_write_text(cache_dir / INDEX_NAME, json.dumps(index, indent=1) + "\n")


def preprocess(
    dataset_path: str | Path,
    checkpoint_dir: str | Path,
    cache_dir: str | Path,
    *,
    ssl_models: Sequence[Any] = (),
    min_seconds: float = 3.0,
    max_seconds: float = 240.0,
    shard_size: int = 256,
    device: str = "cpu",
    progress: bool = False,
) -> PreprocessReport:
    """Encode every usable row of the dataset once; returns written/skipped counts.

    ``ssl_models``: :class:`~songflow.training.config.SSLModelConfig` entries (REPA targets, in projector
    order); their features are cached as ``ssl.<j>``.
    """
    import datasets

    from songflow.checkpoint.acestep_v1 import load_codec
    from songflow.models.acestep_v1.text_encoder import UMT5TextEncoder
    from songflow.text.lyric_tokenizer import LyricTokenizer

    dataset_path, cache_dir, root = Path(dataset_path), Path(cache_dir), Path(checkpoint_dir)
    if not dataset_path.exists():
        raise ConfigError(f"dataset not found: {dataset_path}")
    ds = datasets.load_from_disk(str(dataset_path))
    cache_dir.mkdir(parents=True, exist_ok=True)
    codec = load_codec(root / "music_dcae_f8c8", root / "music_vocoder", torch.float32, device)
    text_encoder = UMT5TextEncoder(root / "umt5-base", device=device)
    tokenizer = LyricTokenizer(root / "vocab.json")
    ssl = [(load_ssl_model(m.path, device), m) for m in ssl_models]
    speaker_dim = json.loads((root / "ace_step_transformer" / "config.json").read_text()).get(
        "speaker_embedding_dim", 512
    )
    report = PreprocessReport(cache_dir)
    writer = ShardWriter(cache_dir, shard_size)
    encoders = _Encoders(codec, text_encoder, tokenizer, ssl, device)
    rows = range(len(ds))
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc="preprocess", unit="clip")
    for r in rows:
        row = ds[r]
        tensors, reason = encoders.encode_row(row, dataset_path, min_seconds, max_seconds)
        if reason is not None:
            report.skipped[reason] += 1
            logger.info("skipping row %d (%s): %s", r, row.get("keys"), reason)
            continue
        writer.add(str(row.get("keys", r)), tensors)
        report.written += 1
    writer.flush()
    _write_index(cache_dir, writer, report, int(speaker_dim), [m.path for _, m in ssl], root)
    logger.info("preprocess: %d clips cached, skipped %s", report.written, dict(report.skipped))
    return report


# ---------------------------------------------------------------------------------------------------------
# dataset and batching


class LatentCache(torch.utils.data.Dataset):
    """Items of a preprocessed cache: dict of tensors (``latents [8,16,L]``, ``text_states [Lt,D]``, ...)."""

    def __init__(self, cache_dir: str | Path, *, n_ssl: int = 0):
        self.folder = Path(cache_dir)
        index_path = self.folder / INDEX_NAME
        if not index_path.is_file():
            raise ConfigError(f"no preprocessed cache at {self.folder} (run `songflow train preprocess`)")
        self.index = json.loads(index_path.read_text(encoding="utf-8"))
        self.items = self.index["items"]
        self.speaker_dim = int(self.index.get("speaker_dim", 512))
        if n_ssl > len(self.index.get("ssl_models", [])):
            raise ConfigError(
                f"REPA needs {n_ssl} SSL feature set(s) but the cache at {self.folder} has "
                f"{len(self.index.get('ssl_models', []))}; preprocess again with repa.ssl_models set"
            )
        self.n_ssl = n_ssl
        if not self.items:
            skipped = self.index.get("skipped")
            raise ConfigError(f"the cache at {self.folder} holds no usable clips (skipped: {skipped})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from safetensors import safe_open

        item = self.items[i]
        names = ["latents", "text_states", "lyric_ids", "lyric_mask"]
        names += [f"ssl.{j}" for j in range(self.n_ssl)]
        with safe_open(str(self.folder / item["shard"]), framework="pt") as f:
            out: dict[str, Any] = {n: f.get_tensor(f"{item['item']}.{n}") for n in names}
        out["key"] = item["key"]
        out["speaker_dim"] = self.speaker_dim
        return out


def _pad_stack(tensors: list[Tensor], dim: int) -> tuple[Tensor, Tensor]:
    """Right-pad along ``dim`` to the longest, stack; also the ``[B, Lmax]`` validity mask."""
    longest = max(t.shape[dim] for t in tensors)
    padded, masks = [], []
    for t in tensors:
        extra = longest - t.shape[dim]
        pad = [0, 0] * (t.ndim - 1 - dim % t.ndim) + [0, extra]
        padded.append(torch.nn.functional.pad(t, pad))
        masks.append(torch.cat([torch.ones(t.shape[dim]), torch.zeros(extra)]))
    return torch.stack(padded), torch.stack(masks).long()


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of cache items into a batch (``*_mask`` 1 = valid); speaker embeddings are zeros."""
    latents, latent_mask = _pad_stack([it["latents"] for it in items], -1)
    text_states, text_mask = _pad_stack([it["text_states"] for it in items], 0)
    lyric_ids, _ = _pad_stack([it["lyric_ids"] for it in items], 0)
    lyric_mask, _ = _pad_stack([it["lyric_mask"] for it in items], 0)
    batch: dict[str, Any] = {
        "keys": [it["key"] for it in items],
        "latents": latents,
        "latent_mask": latent_mask,
        "text_states": text_states,
        "text_mask": text_mask,
        "lyric_ids": lyric_ids,
        "lyric_mask": lyric_mask,
        "speaker_embeds": torch.zeros(len(items), int(items[0]["speaker_dim"])),
        "ssl": [],
    }
    j = 0
    while f"ssl.{j}" in items[0]:
        feats, mask = _pad_stack([it[f"ssl.{j}"] for it in items], 0)
        batch["ssl"].append((feats, mask))
        j += 1
    return batch
