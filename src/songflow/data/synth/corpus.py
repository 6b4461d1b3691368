"""A labelled synthetic music corpus made offline: compose -> render -> sing -> mix -> files -> HF dataset.

``make_corpus(CorpusConfig(out=..., hours=1, seed=0))`` writes, per clip ``clip_000123``::

    audio/clip_000123.flac    the mix (FLAC 16-bit, config sample rate and channels)
    vocals/clip_000123.flac   the dry vocal stem (sung clips only)
    midi/clip_000123.mid      the backing MIDI
    labels/clip_000123.json   every label (written last: its presence marks the clip as done)

then ``dataset/`` (``datasets.load_from_disk``) with the official ACE-Step columns ``keys``, ``filename``,
``tags`` (list of str), ``speaker_emb_path`` (""), ``norm_lyrics``, ``recaption`` ({"caption": ...}) plus
``labels`` (the JSON of the label file) and a few flat columns for filtering.

Determinism: clip ``i`` depends only on ``(seed, i)`` and the config (its own seed is
:func:`clip_seed`), never on the worker or the order, so the same seed gives byte-identical labels and
audio, and a corpus of more hours extends a smaller one. Resuming skips the clips whose label file exists
and rebuilds the dataset at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from songflow.audio.loudness import integrated_loudness
from songflow.errors import ConfigError, SongflowError

FORMAT_VERSION = 1
KEY_PREFIX = "clip_"


@dataclass(frozen=True)
class CorpusConfig:
    out: str
    hours: float = 1.0
    seed: int = 0
    workers: int = 1
    sample_rate: int = 44100
    channels: int = 2
    clip_seconds: tuple[float, float] = (10.0, 30.0)
    vocal_share: float = 0.6
    loudness_lufs: float = -16.0  # integrated loudness (BS.1770 K-weighted, gated) of the mix
    peak_dbfs: float = -1.0  # sample-peak ceiling of the limiter
    soundfont: str | None = None  # default: the first installed GM SoundFont (render.find_soundfont)
    progress: bool = True

    def validate(self) -> None:
        lo, hi = self.clip_seconds
        if not 1.0 <= lo <= hi <= 600.0:
            raise ConfigError(f"clip seconds must satisfy 1 <= min <= max <= 600, got {lo}-{hi}")
        if self.hours <= 0:
            raise ConfigError(f"--hours must be positive, got {self.hours}")
        if not 0.0 <= self.vocal_share <= 1.0:
            raise ConfigError(f"--vocal-share must be within [0, 1], got {self.vocal_share}")
        if self.channels not in (1, 2):
            raise ConfigError(f"--channels must be 1 or 2, got {self.channels}")
        if not 16000 <= self.sample_rate <= 96000:
            raise ConfigError(f"--sample-rate must be 16000-96000 Hz, got {self.sample_rate}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")

    def identity(self) -> dict:
        """The settings that decide the content of a clip (a resumed run must match them)."""
        return {
            "format_version": FORMAT_VERSION,
            "seed": self.seed,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "clip_seconds": list(self.clip_seconds),
            "vocal_share": self.vocal_share,
            "loudness_lufs": self.loudness_lufs,
            "peak_dbfs": self.peak_dbfs,
            "soundfont": Path(self.soundfont).name if self.soundfont else None,
        }


@dataclass(frozen=True)
class ClipPlan:
    index: int
    key: str
    seed: int
    duration_s: float
    vocals: bool
    vocal_gain_db: float  # vocal loudness relative to the backing


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` in corpus ``seed`` (31-bit, independent of the other clips)."""
    h = hashlib.blake2b(f"songflow-corpus/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def plan_clip(cfg: CorpusConfig, index: int) -> ClipPlan:
    s = clip_seed(cfg.seed, index)
    rng = random.Random(s ^ 0x5EED)
    lo, hi = cfg.clip_seconds
    duration = round(rng.uniform(lo, hi) * 2.0) / 2.0 if hi > lo else float(lo)
    duration = min(max(duration, lo), hi)
    vocals = rng.random() < cfg.vocal_share
    return ClipPlan(index, f"{KEY_PREFIX}{index:06d}", s, duration, vocals, round(rng.uniform(-1.0, 3.0), 2))


def plan_corpus(cfg: CorpusConfig) -> list[ClipPlan]:
    """Clips 0, 1, ... until their durations add up to ``cfg.hours``."""
    plans, total, target = [], 0.0, cfg.hours * 3600.0
    while total < target - 1e-6:
        p = plan_clip(cfg, len(plans))
        plans.append(p)
        total += p.duration_s
    return plans


# --------------------------------------------------------------------------------------------- mixing
def limit_peaks(x: np.ndarray, sr: int, ceiling: float, lookahead_s: float = 0.005) -> np.ndarray:
    """Look-ahead peak limiter: a smooth gain that keeps every sample at or below ``ceiling``.

    The gain each sample needs is spread by a minimum filter of width 2w and smoothed by a moving average
    of width w (w = lookahead), so the smoothed gain never exceeds what any sample needs; a final clip
    catches float rounding."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    peak = np.abs(x).max(axis=0)
    if peak.max(initial=0.0) <= ceiling:
        return x
    need = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    w = max(3, int(lookahead_s * sr) | 1)
    gain = minimum_filter1d(need, size=2 * w + 1, mode="nearest")
    gain = uniform_filter1d(gain, size=w, mode="nearest")
    return np.clip(x * gain[None, :].astype(np.float32), -ceiling, ceiling)


def _reverb_ir(sr: int, seed: int, seconds: float = 0.9) -> np.ndarray:
    """A small seeded room: exponentially decaying noise (RT60 ~ ``seconds``) after a 15 ms pre-delay."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / seconds)
    ir[: int(0.015 * sr)] = 0.0
    return (ir / np.sqrt(np.sum(ir * ir))).astype(np.float32)


def _gain_to(x: np.ndarray, sr: int, target_lufs: float) -> float:
    lufs = integrated_loudness(x, sr)
    return 1.0 if not math.isfinite(lufs) else 10.0 ** ((target_lufs - lufs) / 20.0)


# --------------------------------------------------------------------------------------------- one clip
def _atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    writer(tmp)
    os.replace(tmp, path)


def _write_flac(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    _atomic_write(path, lambda p: sf.write(str(p), audio.T, sr, format="FLAC", subtype="PCM_16"))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float):
        return round(obj, 6)
    if hasattr(obj, "__dataclass_fields__"):
        return _json_safe(asdict(obj))
    return obj


def _default_compose() -> Callable[..., Any]:
    try:
        from songflow.data.synth.compose import compose_song
    except ImportError as exc:  # pragma: no cover - the composer ships with the package
        raise SongflowError(f"songflow.data.synth.compose is not available ({exc})") from exc
    return compose_song


def clip_paths(out: Path, key: str) -> dict[str, Path]:
    return {
        "audio": out / "audio" / f"{key}.flac",
        "vocals": out / "vocals" / f"{key}.flac",
        "midi": out / "midi" / f"{key}.mid",
        "labels": out / "labels" / f"{key}.json",
    }


def clip_done(out: Path, key: str) -> bool:
    p = clip_paths(out, key)
    return p["labels"].is_file() and p["audio"].is_file()


class ClipMaker:
    """Per-worker state: one MIDI renderer (one synth, SoundFont loaded once) and one singer per voice."""

    def __init__(self, cfg: CorpusConfig, compose: Callable[..., Any] | None = None) -> None:
        from songflow.data.synth.render import MidiRenderer

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.compose = compose or _default_compose()
        self.renderer = MidiRenderer(cfg.soundfont, sample_rate=cfg.sample_rate, channels=cfg.channels)
        self._singers: dict[str, Any] = {}

    def singer(self, gender: str | None, seed: int):
        from songflow.data.synth.sing import DEFAULT_VOICE, MbrolaSinger

        if gender not in DEFAULT_VOICE:
            gender = "female" if seed % 2 else "male"
        name = DEFAULT_VOICE[gender]
        if name not in self._singers:
            self._singers[name] = MbrolaSinger(name, sample_rate=self.cfg.sample_rate, channels=1)
        return self._singers[name]

    def make(self, plan: ClipPlan) -> dict[str, float]:
        """Make one clip's files; returns CPU seconds per stage."""
        cfg, sr = self.cfg, self.cfg.sample_rate
        cpu: dict[str, float] = {}
        c0 = time.process_time()
        song = self.compose(plan.seed, plan.duration_s, vocals=plan.vocals)
        labels = dict(song.labels)
        cpu["compose"] = time.process_time() - c0

        c0 = time.process_time()
        n = int(round(plan.duration_s * sr))
        backing = self.renderer.render(song.midi, duration_s=plan.duration_s)
        cpu["render"] = time.process_time() - c0

        c0 = time.process_time()
        melody = list(song.melody) if plan.vocals else []
        take = None
        if melody:
            take = self.singer(labels.get("voice"), plan.seed).sing(melody, duration_s=plan.duration_s)
        cpu["sing"] = time.process_time() - c0

        c0 = time.process_time()
        mix, vocal_gain, gain = self._mix(plan, backing, take, n)
        ceiling = 10.0 ** (cfg.peak_dbfs / 20.0)
        mix = limit_peaks(mix, sr, ceiling)
        final_lufs = integrated_loudness(mix, sr)
        cpu["mix"] = time.process_time() - c0

        c0 = time.process_time()
        paths = clip_paths(self.out, plan.key)
        _write_flac(paths["audio"], mix, sr)
        if take is not None:
            stem = take.audio[:, :n] * np.float32(vocal_gain * gain)
            stem_peak = float(np.abs(stem).max(initial=0.0))
            if stem_peak > ceiling:
                stem *= np.float32(ceiling / stem_peak)
            _write_flac(paths["vocals"], np.repeat(stem[:1], cfg.channels, axis=0), sr)
        _atomic_write(paths["midi"], lambda p: song.midi.write(str(p)))
        self._update_labels(labels, plan, take, mix, final_lufs)
        text = json.dumps(_json_safe(labels), sort_keys=True, ensure_ascii=False, indent=1)
        _atomic_write(paths["labels"], lambda p: p.write_text(text + "\n", encoding="utf-8"))
        cpu["write"] = time.process_time() - c0
        return cpu

    def _mix(self, plan: ClipPlan, backing: np.ndarray, take: Any, n: int) -> tuple[np.ndarray, float, float]:
        """Backing plus the reverberated vocal at its loudness offset, normalised to the target loudness,
        with a 30 ms fade-out; returns (mix ``[C, n]``, vocal gain, loudness gain), before the limiter."""
        from scipy.signal import oaconvolve

        cfg, sr = self.cfg, self.cfg.sample_rate
        mix = backing[:, :n].astype(np.float32, copy=True)
        vocal_gain = 0.0
        if take is not None:
            dry = take.audio[0, :n]
            wet = dry + 0.2 * oaconvolve(dry, _reverb_ir(sr, plan.seed))[:n].astype(np.float32)
            back_lufs = integrated_loudness(mix, sr)
            voc_lufs = integrated_loudness(np.repeat(wet[None], cfg.channels, axis=0), sr)
            if math.isfinite(voc_lufs):
                ref = back_lufs if math.isfinite(back_lufs) else cfg.loudness_lufs
                vocal_gain = 10.0 ** ((ref + plan.vocal_gain_db - voc_lufs) / 20.0)
                mix += (vocal_gain * wet)[None, :]
        gain = _gain_to(mix, sr, cfg.loudness_lufs)
        mix *= np.float32(gain)
        fade = min(n, int(0.03 * sr))
        mix[:, n - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[None, :]
        return mix, vocal_gain, gain

    def _update_labels(
        self, labels: dict, plan: ClipPlan, take: Any, mix: np.ndarray, final_lufs: float
    ) -> None:
        """Add the clip's file, render and mix facts (and the sung take's, if any) to ``labels``."""
        labels.update(
            key=plan.key,
            seed=plan.seed,
            duration=plan.duration_s,
            sample_rate=self.cfg.sample_rate,
            channels=self.cfg.channels,
            render=self.renderer.description,
            mix={
                "loudness_lufs": round(final_lufs, 2) if math.isfinite(final_lufs) else None,
                "peak_dbfs": round(20 * math.log10(max(float(np.abs(mix).max(initial=0.0)), 1e-9)), 2),
                "vocal_gain_db": plan.vocal_gain_db if take is not None else None,
            },
            files={
                "audio": f"audio/{plan.key}.flac",
                "vocals": f"vocals/{plan.key}.flac" if take is not None else None,
                "midi": f"midi/{plan.key}.mid",
            },
        )
        if take is not None:
            labels.update(
                voice=take.gender,
                voice_engine=f"mbrola-{take.voice}",
                vocal_transpose=take.transpose,
                syllables=[s.to_dict() for s in take.syllables],
                sung_words=take.words,
            )
        else:
            labels.update(voice=None, lyrics="", syllables=[], sung_words=[])


# --------------------------------------------------------------------------------------------- workers
_WORKER: ClipMaker | None = None


def _worker_init(cfg: CorpusConfig, compose: Callable[..., Any] | None) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = ClipMaker(cfg, compose)


def _worker_make(plan: ClipPlan) -> tuple[int, dict[str, float]]:
    assert _WORKER is not None
    return plan.index, _WORKER.make(plan)


def _run_clips(cfg: CorpusConfig, todo: list[ClipPlan], compose, bar) -> dict[str, float]:
    totals: dict[str, float] = {}

    def add(cpu: dict[str, float], plan_s: float) -> None:
        for k, v in cpu.items():
            totals[k] = totals.get(k, 0.0) + v
        bar.update(plan_s)

    dur = {p.index: p.duration_s for p in todo}
    if cfg.workers == 1 or len(todo) <= 1:
        maker = ClipMaker(cfg, compose)
        for p in todo:
            add(maker.make(p), p.duration_s)
        maker.renderer.close()
        return totals
    # spawn, not fork: a child forked from a process that already ran FluidSynth can deadlock in it
    ctx = mp.get_context("spawn")
    with ctx.Pool(cfg.workers, initializer=_worker_init, initargs=(cfg, compose)) as pool:
        for idx, cpu in pool.imap_unordered(_worker_make, todo, chunksize=1):
            add(cpu, dur[idx])
    return totals


def _check_dependencies(cfg: CorpusConfig) -> None:
    from songflow.data.synth.render import find_soundfont

    find_soundfont(cfg.soundfont)
    if cfg.vocal_share > 0:
        from songflow.data.synth.sing import find_mbrola, find_voice

        find_mbrola()
        for v in ("us1", "us3"):
            find_voice(v)


def _check_manifest(out: Path, cfg: CorpusConfig) -> None:
    manifest = out / "corpus.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text()).get("config", {})
        new = cfg.identity()
        diff = sorted(k for k in new if old.get(k) != new[k])
        if diff:
            raise ConfigError(
                f"{out} holds a corpus made with other settings ({', '.join(diff)} differ); "
                "use another --out or the same settings to resume"
            )


def make_corpus(cfg: CorpusConfig, *, compose: Callable[..., Any] | None = None) -> dict:
    """Make (or resume) the corpus described by ``cfg``; returns a report with counts and speed.

    ``compose`` replaces :func:`songflow.data.synth.compose.compose_song` (it must be a picklable,
    module-level function when ``workers > 1``).
    """
    from tqdm import tqdm

    cfg.validate()
    out = Path(cfg.out)
    _check_dependencies(cfg)
    _check_manifest(out, cfg)
    for sub in ("audio", "vocals", "midi", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(cfg)
    todo = [p for p in plans if not clip_done(out, p.key)]
    total_s = sum(p.duration_s for p in plans)
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done_s = total_s - sum(p.duration_s for p in todo)
    with tqdm(
        total=total_s,
        initial=done_s,
        disable=not cfg.progress,
        file=sys.stderr,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}]",
        desc="corpus",
    ) as bar:
        stages = _run_clips(cfg, todo, compose, bar)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) + (
        c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    )
    made_s = sum(p.duration_s for p in todo)
    t_ds = time.perf_counter()
    build_dataset(out, plans, progress=cfg.progress)
    report = {
        "out": str(out),
        "clips": len(plans),
        "made": len(todo),
        "skipped": len(plans) - len(todo),
        "audio_hours": round(total_s / 3600.0, 4),
        "made_audio_hours": round(made_s / 3600.0, 4),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "dataset_s": round(time.perf_counter() - t_ds, 2),
        "cpu_s_by_stage": {k: round(v, 2) for k, v in sorted(stages.items())},
        "audio_hours_per_cpu_hour": round(made_s / cpu, 1) if cpu > 0 and made_s else None,
        "audio_hours_per_wall_hour": round(made_s / wall, 1) if wall > 0 and made_s else None,
    }
    manifest = {"config": cfg.identity(), "clips": len(plans), "audio_hours": report["audio_hours"]}
    _atomic_write(out / "corpus.json", lambda p: p.write_text(json.dumps(manifest, indent=1) + "\n"))
    return report


# --------------------------------------------------------------------------------------------- dataset
def _tags_list(tags: Any) -> list[str]:
    if isinstance(tags, str):
        return [t.strip() for t in tags.split(",") if t.strip()]
    return [str(t) for t in tags or []]


def iter_clip_labels(out: Path, plans: list[ClipPlan] | None = None) -> Iterator[dict]:
    keys = (
        [p.key for p in plans]
        if plans is not None
        else sorted(p.stem for p in (out / "labels").glob("*.json"))
    )
    for key in keys:
        path = out / "labels" / f"{key}.json"
        if path.is_file():
            yield json.loads(path.read_text(encoding="utf-8"))


EVAL_LABEL_KEYS = ("bpm", "tonic", "mode", "genre", "instruments", "time_signature")


def eval_requests(
    out: str | os.PathLike[str], *, duration_s: float = 10.0, limit: int | None = None
) -> list[dict]:
    """text2music requests for ``songflow eval --generate``, one per clip of the corpus in ``out``: its tags
    and lyrics (``[inst]`` when it has none), ``duration_s`` seconds, seed = clip index, and the labels the
    checkers read (``vocals`` says whether the clip is sung)."""
    lines = []
    for i, label in enumerate(iter_clip_labels(Path(out))):
        if limit is not None and i >= limit:
            break
        lyrics = str(label.get("lyrics") or "").strip()
        labels = {k: label[k] for k in EVAL_LABEL_KEYS if k in label}
        labels["vocals"] = bool(lyrics)
        lines.append(
            {
                "name": label["key"],
                "task": "text2music",
                "tags": ", ".join(_tags_list(label.get("tags"))),
                "lyrics": lyrics or "[inst]",
                "duration_s": duration_s,
                "params": {"seeds": [i]},
                "labels": labels,
            }
        )
    return lines


def build_dataset(
    out: str | os.PathLike[str], plans: list[ClipPlan] | None = None, *, progress: bool = False
):
    """(Re)build ``out/dataset`` (HF ``datasets``, ``load_from_disk``) from the label files."""
    import datasets
    from datasets.utils import logging as ds_logging

    out = Path(out).resolve()
    rows: dict[str, list] = {
        c: []
        for c in (
            "keys",
            "filename",
            "tags",
            "speaker_emb_path",
            "norm_lyrics",
            "recaption",
            "labels",
            "genre",
            "bpm",
            "duration",
            "has_vocals",
            "vocals_filename",
            "midi_filename",
        )
    }
    for lab in iter_clip_labels(out, plans):
        files = lab.get("files", {})
        rows["keys"].append(lab["key"])
        rows["filename"].append(str(out / files["audio"]))
        rows["tags"].append(_tags_list(lab.get("tags")))
        rows["speaker_emb_path"].append("")
        rows["norm_lyrics"].append(lab.get("lyrics") or "")
        rows["recaption"].append({"caption": str(lab.get("caption") or "")})
        rows["labels"].append(json.dumps(lab, sort_keys=True, ensure_ascii=False))
        rows["genre"].append(str(lab.get("genre") or ""))
        rows["bpm"].append(float(lab.get("bpm") or 0.0))
        rows["duration"].append(float(lab.get("duration") or 0.0))
        rows["has_vocals"].append(bool(files.get("vocals")))
        rows["vocals_filename"].append(str(out / files["vocals"]) if files.get("vocals") else "")
        rows["midi_filename"].append(str(out / files["midi"]))
    features = datasets.Features(
        {
            "keys": datasets.Value("string"),
            "filename": datasets.Value("string"),
            "tags": datasets.Sequence(datasets.Value("string")),
            "speaker_emb_path": datasets.Value("string"),
            "norm_lyrics": datasets.Value("string"),
            "recaption": {"caption": datasets.Value("string")},
            "labels": datasets.Value("string"),
            "genre": datasets.Value("string"),
            "bpm": datasets.Value("float32"),
            "duration": datasets.Value("float32"),
            "has_vocals": datasets.Value("bool"),
            "vocals_filename": datasets.Value("string"),
            "midi_filename": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(rows, features=features)
    target, tmp = out / "dataset", out / ".dataset.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    was_enabled = ds_logging.is_progress_bar_enabled()
    if not progress:
        ds_logging.disable_progress_bar()
    try:
        ds.save_to_disk(str(tmp))
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return ds
