"""ACE-Step 1.5 training data: songs -> cached VAE latents + encoder states -> padded batches.

Sources (:func:`read_songs`, picked from ``data.dataset_path``):

* the official 1.5 dataset JSON (``{"metadata": {...}, "samples": [...]}``, the official dataset
  builder's ``save_dataset``): only ``labeled`` samples are used, the caption is the official training
  prompt (``custom_tag`` placed by ``tag_position``, ``genre`` for ``prompt_override`` / the ``genre_ratio``
  share of samples, drawn as the official ``random.seed(42)`` shuffle), lyrics ``[Instrumental]`` when
  empty; relative ``audio_path`` values are read from the JSON's folder;
* a ``songflow corpus make`` folder (its ``dataset/``) or any saved HF dataset in the official v1 layout
  (``filename``, ``tags``, ``norm_lyrics``, ``recaption``; a ``labels`` JSON column adds bpm, key, meter);
* a folder of audio files with the official scanner's sidecars: ``<stem>.caption.txt``, ``<stem>.lyrics.txt``
  (or ``<stem>.txt``), ``<stem>.json`` (``caption``, ``bpm``, ``keyscale``, ``timesignature``, ``language``).

:func:`preprocess_v15` builds each song's conditions with the 1.5 pipeline's own code
(``Pipeline15.encode_conditions`` and ``context`` of a text2music request, ``conditions="pipeline"``) so the
conditions the LoRA learns are those it gets at generation time, or as the official preprocessing does
(``"official"``: prompts padded to 256 / 512 tokens, bare lyrics, a one-frame zero timbre reference). The
target latents are VAE posterior samples (one seeded draw per song, as the official ``latent_dist.sample()``).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from songflow.errors import ConfigError, SongflowError
from songflow.training.data import (
    INDEX_NAME,
    SOURCE_RATE_HZ,
    PreprocessReport,
    ShardWriter,
    is_saved_dataset,
    load_saved_dataset,
    prepare_audio,
    resolve_audio,
)

logger = logging.getLogger(__name__)

FAMILY = "acestep-v15"
CACHE_VERSION = 1
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".opus")  # the official scanner's formats
OFFICIAL_TEXT_TOKENS = 256  # official preprocessing: caption prompt padded/truncated to 256 tokens
OFFICIAL_LYRIC_TOKENS = 512  # ... lyrics to 512
INSTRUMENTAL = "[Instrumental]"
#: ``(checkpoint folder, device) -> loaded 1.5 pipeline`` (see :func:`preprocess_v15`)
LoadHost = Callable[[str | Path, str], Any]
_VAE_SEED = 0x15_DA7A
CACHE_NAMES = ("target_latents", "context_latents", "encoder_states", "encoder_mask")


@dataclass(frozen=True)
class Song15:
    """One training song: the audio file and what its text2music request would say."""

    key: str
    audio_path: Path
    caption: str
    lyrics: str = ""
    bpm: int | None = None
    key_scale: str | None = None
    time_signature: str | None = None
    language: str = "unknown"
    duration_s: float | None = None  # the metas' duration (None: the clip's own length)


# ---------------------------------------------------------------------------------------------------------
# metadata


def _bpm(value: Any) -> int | None:
    try:
        bpm = round(float(value))
    except (TypeError, ValueError):
        return None
    return bpm if bpm > 0 else None


def _meter(value: Any) -> str | None:
    """``"3/4"``, ``3`` or ``"3"`` -> ``"3"``; anything the 1.5 prompts do not know -> None."""
    text = str(value or "").strip().split("/")[0]
    return text if text in ("2", "3", "4", "6") else None


def _key(value: Any) -> str | None:
    from songflow.requests_v15 import VALID_KEYSCALES

    text = " ".join(str(value or "").split())
    return text if text in VALID_KEYSCALES else None


def _language(value: Any, lyrics: str) -> str:
    from songflow.requests_v15 import VALID_LANGUAGES

    text = str(value or "").strip().lower()
    if text in VALID_LANGUAGES:
        return text
    return "unknown" if not lyrics.strip() or lyrics.strip() == INSTRUMENTAL else "en"


# ---------------------------------------------------------------------------------------------------------
# the official 1.5 dataset JSON


def _with_tag(text: str, tag: str, position: str) -> str:
    """The official ``get_full_caption`` / ``get_full_genre``: ``tag`` placed by ``position``."""
    if not tag:
        return text
    if position == "prepend":
        return f"{tag}, {text}" if text else tag
    if position == "append":
        return f"{text}, {tag}" if text else tag
    return tag if position == "replace" else text


def _genre_rows(n: int, genre_ratio: float) -> set[int]:
    """The official ``select_genre_indices``: ``int(n * ratio / 100)`` rows of a seed-42 shuffle."""
    order = list(range(n))
    random.Random(42).shuffle(order)
    return set(order[: int(n * float(genre_ratio or 0) / 100)])


def _official_song(sample: dict[str, Any], meta: dict[str, Any], use_genre: bool, base: Path) -> Song15:
    position = str(meta.get("tag_position") or "prepend")
    tag = str(sample.get("custom_tag") or "")
    override = sample.get("prompt_override")
    genre = override == "genre" or (override != "caption" and use_genre)
    text = str(sample.get("genre" if genre else "caption") or "")
    lyrics = str(sample.get("lyrics") or "") or INSTRUMENTAL
    audio = str(sample.get("audio_path") or sample.get("filename") or "")
    duration = sample.get("duration")
    return Song15(
        key=str(sample.get("id") or Path(audio).stem),
        audio_path=resolve_audio(audio, base),
        caption=_with_tag(text, tag, position),
        lyrics=lyrics,
        bpm=_bpm(sample.get("bpm")),
        key_scale=_key(sample.get("keyscale")),
        time_signature=_meter(sample.get("timesignature")),
        language=_language(sample.get("language"), lyrics),
        duration_s=float(duration) if isinstance(duration, int | float) and duration > 0 else None,
    )


def read_official_json(path: Path) -> tuple[list[Song15], Counter]:
    """The labeled samples of an official 1.5 dataset JSON (module doc) and the skip counts."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the dataset JSON ({exc})") from exc
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise ConfigError(
            f"{path} is not an ACE-Step 1.5 dataset JSON: expected an object with a 'samples' list of "
            "objects (the official dataset builder's save_dataset output)"
        )
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    labeled = [s for s in samples if s.get("labeled")]
    skipped = Counter({"unlabeled": len(samples) - len(labeled)} if len(labeled) < len(samples) else {})
    genre_rows = _genre_rows(len(labeled), meta.get("genre_ratio", 0))
    songs = [_official_song(s, meta, i in genre_rows, path) for i, s in enumerate(labeled)]
    return songs, skipped


# ---------------------------------------------------------------------------------------------------------
# a saved HF dataset (songflow corpus, official v1 layout) and a folder of audio files with sidecars


def _dataset_song(row: dict[str, Any], base: Path) -> Song15:
    labels = row.get("labels") or {}
    if isinstance(labels, str):
        labels = json.loads(labels) if labels.strip() else {}
    tags = row.get("tags") or []
    tags_text = ", ".join(tags) if isinstance(tags, list) else str(tags)
    recaption = row.get("recaption")
    caption = str(recaption.get("caption") or "") if isinstance(recaption, dict) else ""
    lyrics = str(row.get("norm_lyrics") or labels.get("lyrics") or "")
    tonic, mode = labels.get("tonic"), labels.get("mode")
    filename = str(row.get("filename") or "")
    return Song15(
        key=str(row.get("keys") or Path(filename).stem),
        audio_path=resolve_audio(filename, base),
        caption=caption or tags_text,
        lyrics=lyrics,
        bpm=_bpm(labels.get("bpm", row.get("bpm"))),
        key_scale=_key(f"{tonic} {mode}" if tonic and mode else None),
        time_signature=_meter(labels.get("time_signature")),
        language=_language(labels.get("language"), lyrics),
    )


def read_saved_dataset(path: Path) -> list[Song15]:
    ds = load_saved_dataset(path)
    return [_dataset_song(ds[i], path) for i in range(len(ds))]


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _folder_song(audio: Path) -> Song15:
    stem = audio.with_suffix("")
    caption = _text(stem.with_name(stem.name + ".caption.txt")) or ""
    lyrics = _text(stem.with_name(stem.name + ".lyrics.txt"))
    if lyrics is None:
        lyrics = _text(stem.with_suffix(".txt"))
    meta: dict[str, Any] = {}
    if stem.with_suffix(".json").is_file():
        try:
            meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{stem.with_suffix('.json')}: not valid JSON ({exc})") from exc
    lyrics = lyrics or INSTRUMENTAL
    return Song15(
        key=audio.stem,
        audio_path=audio,
        caption=str(meta.get("caption") or caption),
        lyrics=lyrics,
        bpm=_bpm(meta.get("bpm")),
        key_scale=_key(meta.get("keyscale")),
        time_signature=_meter(meta.get("timesignature")),
        language=_language(meta.get("language"), lyrics),
    )


def read_audio_folder(path: Path) -> list[Song15]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    return [_folder_song(p) for p in files]


def read_songs(dataset_path: str | Path) -> tuple[list[Song15], Counter]:
    """The songs of ``dataset_path`` (see the module doc for the three kinds) and the skip counts."""
    path = Path(dataset_path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"dataset not found: {path} (give data.dataset_path: an ACE-Step 1.5 dataset JSON, a "
            "`songflow corpus make` folder, a saved HF dataset or a folder of audio files)"
        )
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise ConfigError(f"{path}: a dataset file must be an ACE-Step 1.5 dataset JSON (.json)")
        songs, skipped = read_official_json(path)
    elif is_saved_dataset(path):
        songs, skipped = read_saved_dataset(path), Counter()
    elif is_saved_dataset(path / "dataset"):
        songs, skipped = read_saved_dataset(path / "dataset"), Counter()
    else:
        songs, skipped = read_audio_folder(path), Counter()
    if not songs:
        raise ConfigError(
            f"{path} holds no training songs (skipped: {dict(skipped) or 'none'}); expected audio files "
            f"({', '.join(AUDIO_SUFFIXES)}) with captions, a corpus folder or a 1.5 dataset JSON with "
            "labeled samples"
        )
    return songs, skipped


# ---------------------------------------------------------------------------------------------------------
# conditions


@dataclass
class ConditionBuilder:
    """Turns a song into cached tensors with a loaded ``Pipeline15`` (``conditions``: pipeline | official)."""

    pipe: Any
    conditions: str = "pipeline"

    def request(self, song: Song15, duration_s: float) -> Any:
        from songflow.requests_v15 import Params15, Text2Music15

        return Text2Music15(
            caption=song.caption,
            lyrics=song.lyrics,
            bpm=song.bpm,
            key_scale=song.key_scale,
            time_signature=song.time_signature,  # type: ignore[arg-type]
            vocal_language=song.language,
            duration_s=max(1.0, duration_s),
            params=Params15(seeds=(0,)),
        )

    def latents(self, wav: Tensor, index: int) -> Tensor:
        """VAE posterior sample ``[T, C]`` of ``wav [2, N]`` at 48 kHz (tiled as at inference; the draw is
        seeded by the song's index)."""
        vae = self.pipe.vae
        gen = torch.Generator().manual_seed(_VAE_SEED + index)
        shapes = [
            (1, vae.frames_for_samples(w.win_end - w.win_start), vae.latent_channels)
            for w in vae.encode_windows(wav.shape[-1])
        ]
        noise = [torch.randn(shape, generator=gen) for shape in shapes]
        device, dtype = self.pipe.device, self.pipe.dtype
        with self.pipe.placement.on_device(vae), torch.inference_mode():
            out = vae.encode_tiled(wav[None].to(device, dtype), noise=[n.to(device, dtype) for n in noise])
        return out[0].float()

    def encoder_states(self, song: Song15, duration_s: float) -> tuple[Tensor, Tensor]:
        from songflow.text.acestep_v15_prompts import instruction_for

        request = self.request(song, song.duration_s or duration_s)
        if self.conditions == "pipeline":
            return self.pipe.encode_conditions(request, instruction_for("text2music"), request.duration_s, 1)
        return self._official_states(song, request)

    def _official_states(self, song: Song15, request: Any) -> tuple[Tensor, Tensor]:
        """The official preprocessing's encoder call: padded prompts, bare lyrics, zero reference."""
        from songflow.text import acestep_v15_prompts as prompts

        pipe, enc = self.pipe, self.pipe.text_encoder
        metas = prompts.metas_block(song.bpm, song.time_signature, song.key_scale, request.duration_s)
        caption = prompts.caption_prompt(prompts.instruction_for("text2music"), song.caption, metas)
        ids, mask = _padded(enc, caption, OFFICIAL_TEXT_TOKENS)
        lids, lmask = _padded(enc, song.lyrics, OFFICIAL_LYRIC_TOKENS)
        dim = pipe.dit.config.audio_acoustic_hidden_dim
        refs = torch.zeros(1, 1, dim, device=pipe.device, dtype=pipe.dtype)
        with pipe.placement.on_device(getattr(enc, "model", None)), torch.inference_mode():
            states = enc.encode_text(ids.to(pipe.device)).to(pipe.dtype)
            lyrics = enc.embed_lyrics(lids.to(pipe.device)).to(pipe.dtype)
        with pipe.placement.on_device(pipe.dit), torch.inference_mode():
            return pipe.dit.encode_conditions(
                states, mask.to(pipe.device), lyrics, lmask.to(pipe.device), refs,
                torch.zeros(1, dtype=torch.long, device=pipe.device),
            )  # fmt: skip

    def context(self, n_frames: int) -> Tensor:
        """The text2music context ``[T, 2C]``: silence-latent source, chunk mask all ones, no cover."""
        from songflow.tasks.acestep_v15 import inputs

        src = inputs.silence_frames(self.pipe.silence_latent, n_frames)
        return self.pipe.context(src, torch.ones_like(src), torch.zeros(1))[0].float()

    def encode(self, song: Song15, wav: Tensor, index: int) -> dict[str, Tensor]:
        latents = self.latents(wav, index)
        enc, enc_mask = self.encoder_states(song, wav.shape[-1] / SOURCE_RATE_HZ)
        return {
            "target_latents": latents,
            "context_latents": self.context(latents.shape[0]),
            "encoder_states": enc[0].float(),
            "encoder_mask": enc_mask[0].long(),
        }


def _padded(enc: Any, text: str, length: int) -> tuple[Tensor, Tensor]:
    """``text`` tokenized, truncated and right-padded to ``length`` (the official ``padding="max_length"``):
    ids, mask ``[1, length]``."""
    ids, mask = enc.tokenize([text], length)
    extra = length - ids.shape[1]
    if extra <= 0:
        return ids[:, :length], mask[:, :length]
    ids = torch.nn.functional.pad(ids, (0, extra), value=enc.pad_token_id)
    return ids, torch.nn.functional.pad(mask, (0, extra), value=0)


# ---------------------------------------------------------------------------------------------------------
# preprocessing and the cache


def _rows(songs: list[Song15], progress: bool) -> Iterable[tuple[int, Song15]]:
    if not progress:
        return enumerate(songs)
    from tqdm import tqdm

    return tqdm(list(enumerate(songs)), desc="preprocess 1.5", unit="song")


def preprocess_v15(
    dataset_path: str | Path,
    checkpoint_dir: str | Path,
    cache_dir: str | Path,
    *,
    load_host: LoadHost,
    conditions: str = "pipeline",
    min_seconds: float = 3.0,
    max_seconds: float = 240.0,
    shard_size: int = 256,
    device: str = "cpu",
    progress: bool = False,
) -> PreprocessReport:
    """Encode every usable song of ``dataset_path`` once (module doc); returns written/skipped counts.

    Songs whose audio is missing, unreadable or silent, or whose metadata a 1.5 request refuses, are skipped
    and counted, never fatal. ``load_host(checkpoint_dir, device)`` loads the 1.5 pipeline whose condition
    code builds the cache (the caller's: training code never imports the inference pipelines), e.g.
    ``lambda root, device: songflow.families.load_pipeline(root, device=device, dtype="float32")``."""
    from songflow.checkpoint.acestep_v15 import validate_v15
    from songflow.fileio import atomic_write_text

    songs, skipped = read_songs(dataset_path)
    validate_v15(checkpoint_dir)
    pipe = load_host(checkpoint_dir, device)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    builder = ConditionBuilder(pipe, conditions)
    report = PreprocessReport(cache, skipped=Counter(skipped))
    writer = ShardWriter(cache, shard_size)
    for i, song in _rows(songs, progress):
        wav, reason = prepare_audio(song.audio_path, min_seconds=min_seconds, max_seconds=max_seconds)
        tensors: dict[str, Tensor] = {}
        if reason is None:
            try:
                tensors = builder.encode(song, wav, i)
            except SongflowError as exc:
                reason = "bad_metadata"
                logger.info("skipping %s: %s", song.key, exc)
        if reason is not None:
            report.skipped[reason] += 1
            logger.info("skipping %s (%s): %s", song.key, song.audio_path, reason)
            continue
        writer.add(song.key, tensors, frames=int(tensors["target_latents"].shape[0]))
        report.written += 1
    writer.flush()
    index = {
        "version": CACHE_VERSION,
        "family": FAMILY,
        "conditions": conditions,
        "items": writer.items,
        "skipped": dict(report.skipped),
        "checkpoint_dir": str(Path(checkpoint_dir)),
        "dataset_path": str(Path(dataset_path)),
    }
    atomic_write_text(cache / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    logger.info("preprocess 1.5: %d songs cached, skipped %s", report.written, dict(report.skipped))
    return report


class V15Cache(torch.utils.data.Dataset):
    """Items of a 1.5 cache: ``target_latents [T, C]``, ``context_latents [T, 2C]``, ``encoder_states
    [L, H]``, ``encoder_mask [L]``. ``conditions``: the condition kind the run wants (a cache built with
    the other kind is refused)."""

    def __init__(self, cache_dir: str | Path, *, conditions: str | None = None):
        self.folder = Path(cache_dir)
        index_path = self.folder / INDEX_NAME
        if not index_path.is_file():
            raise ConfigError(f"no preprocessed cache at {self.folder} (set data.dataset_path to build one)")
        self.index = json.loads(index_path.read_text(encoding="utf-8"))
        if self.index.get("family") != FAMILY:
            raise ConfigError(
                f"the cache at {self.folder} was built for another model family; give another "
                "data.cache_dir (or delete it) to preprocess for ACE-Step 1.5"
            )
        if conditions is not None and self.index.get("conditions") != conditions:
            raise ConfigError(
                f"the cache at {self.folder} holds {self.index.get('conditions')!r} conditions but "
                f"v15.conditions is {conditions!r}; give another data.cache_dir (or delete it)"
            )
        self.items = self.index["items"]
        if not self.items:
            raise ConfigError(
                f"the cache at {self.folder} holds no usable songs (skipped: {self.index.get('skipped')})"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from safetensors import safe_open

        item = self.items[i]
        with safe_open(str(self.folder / item["shard"]), framework="pt") as f:
            out: dict[str, Any] = {n: f.get_tensor(f"{item['item']}.{n}") for n in CACHE_NAMES}
        out["key"] = item["key"]
        return out


def _pad_rows(tensors: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad ``[L, ...]`` tensors with zeros to the longest and stack; the ``[B, L]`` 1/0 mask."""
    longest = max(t.shape[0] for t in tensors)
    out = torch.zeros(len(tensors), longest, *tensors[0].shape[1:], dtype=tensors[0].dtype)
    mask = torch.zeros(len(tensors), longest, dtype=torch.long)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = 1
    return out, mask


def collate_v15(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of cache items into a batch (zeros, as the official collate; ``latent_mask`` 1 = valid)."""
    latents, latent_mask = _pad_rows([it["target_latents"] for it in items])
    context, _ = _pad_rows([it["context_latents"] for it in items])
    enc, _ = _pad_rows([it["encoder_states"] for it in items])
    enc_mask, _ = _pad_rows([it["encoder_mask"] for it in items])
    return {
        "keys": [it["key"] for it in items],
        "target_latents": latents,
        "latent_mask": latent_mask,
        "context_latents": context,
        "encoder_states": enc,
        "encoder_mask": enc_mask,
    }
