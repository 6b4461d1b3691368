"""Run the checkers over a set of clips and aggregate: terminal table, JSON summary, CSV rows, plots.

Inputs are :class:`EvalItem` s: one audio file plus its labels. :func:`items_from_corpus` reads a corpus
folder (``<key>.flac`` + ``<key>.json`` [+ ``<key>_vocals.flac``]); :func:`items_from_jsonl` reads a JSONL of
requests with a ``labels`` object and an ``audio`` path.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from songflow.eval import checkers as ck

log = logging.getLogger(__name__)

ALL_CHECKS = ("tempo", "meter", "key", "instruments", "vocals", "pitch", "loudness", "clipping", "wer")
DEFAULT_CHECKS = ALL_CHECKS

# rough tempo ranges per genre, used as a prior against octave errors (``--genre-prior``)
GENRE_BPM = {
    "pop": (90, 130), "rock": (100, 160), "metal": (130, 200), "hip hop": (75, 100), "house": (118, 130),
    "techno": (120, 150), "jazz": (90, 180), "funk": (90, 120), "reggae": (65, 95), "country": (90, 135),
    "blues": (65, 125), "bossa nova": (115, 150), "waltz": (80, 125), "ambient": (55, 90),
    "disco": (110, 130), "drum and bass": (160, 180), "trap": (130, 170), "r&b": (60, 110), "edm": (120, 132),
}  # fmt: skip

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3")


@dataclass
class EvalItem:
    """One clip to score: its mix, optional vocal stem, and labels (bpm, key, instruments, vocals, ...)."""

    key: str
    audio: Path
    labels: dict[str, Any]
    vocals_stem: Path | None = None


@dataclass
class ClipReport:
    key: str
    results: dict[str, ck.CheckResult] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        """Flat per-clip CSV row."""
        row: dict[str, Any] = {"key": self.key, "eval_s": round(self.seconds, 2)}
        for name, r in self.results.items():
            row[f"{name}_measured"] = r.measured if not isinstance(r.measured, list) else " ".join(r.measured)
            row[f"{name}_expected"] = (
                " ".join(map(str, r.expected)) if isinstance(r.expected, list | tuple) else r.expected
            )
            row[f"{name}_passed"] = r.passed
            row[f"{name}_score"] = r.score
            if r.error:
                row[f"{name}_error"] = r.error
        if "tempo" in self.results:
            row["tempo_acc1"] = self.results["tempo"].details.get("acc1")
        return row


# ---------------------------------------------------------------------------------------------- inputs


def expected_vocals(labels: dict[str, Any]) -> bool | None:
    """Whether the labels ask for vocals: ``vocals`` bool, else ``voice``/``lyrics``/'vocals' instrument."""
    for k in ("vocals", "has_vocals", "vocal"):
        if isinstance(labels.get(k), bool):
            return labels[k]
    if "voice" in labels or "lyrics" in labels or "words" in labels:
        return bool(labels.get("voice") or labels.get("words") or str(labels.get("lyrics") or "").strip())
    inst = labels.get("instruments")
    if inst:
        return any(ck.instrument_family(i) == "vocals" for i in inst)
    return None


def expected_key(labels: dict[str, Any]) -> str | None:
    """The musical key label: ``key`` when it parses as one ('E minor'), else ``tonic`` + ``mode``."""
    for name in ("musical_key", "key_name", "key"):
        value = labels.get(name)
        if isinstance(value, str):
            try:
                ck.parse_key(value)
                return value
            except ValueError:
                pass
    if labels.get("tonic") and labels.get("mode"):
        text = f"{labels['tonic']} {labels['mode']}"
        try:
            ck.parse_key(text)
            return text
        except ValueError:
            return None
    return None


def expected_time_signature(labels: dict[str, Any]) -> str | None:
    """The ``time_signature`` (or ``meter``) label when it names a duple or triple meter ('3/4', '6/8',
    '4/4'); None when absent, unparsable or irregular (5/4, 7/8), so the meter check skips the clip."""
    for name in ("time_signature", "meter"):
        value = labels.get(name)
        if isinstance(value, str) and value.strip():
            try:
                return value if ck.meter_family(value) is not None else None
            except ValueError:
                log.debug("unparsable %s label %r", name, value)
                return None
    return None


def _first_existing(paths: Iterable[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def items_from_corpus(folder: str | Path) -> list[EvalItem]:
    """Labelled clips of a corpus folder, in either layout:

    * flat: ``<key>.json`` next to ``<key>.{flac,wav,...}`` and an optional ``<key>_vocals.*``;
    * split: ``labels/<key>.json`` whose ``files`` object names ``audio`` (and ``vocals``) relative to
      the corpus root, e.g. ``audio/<key>.flac`` and ``vocals/<key>.flac``.
    """
    folder = Path(folder)
    items = []
    for js in sorted(folder.rglob("*.json")):
        try:
            labels = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.debug("skipping %s: %s", js, exc)
            continue
        if not isinstance(labels, dict):
            continue
        files = labels.get("files") if isinstance(labels.get("files"), dict) else {}
        roots = [folder, js.parent, js.parent.parent]
        audio = _first_existing(js.with_suffix(s) for s in AUDIO_SUFFIXES)
        if audio is None and files.get("audio"):
            audio = _first_existing(r / files["audio"] for r in roots)
        if audio is None:
            continue
        stem = _first_existing(js.with_name(js.stem + "_vocals" + s) for s in AUDIO_SUFFIXES)
        if stem is None and files.get("vocals"):
            stem = _first_existing(r / files["vocals"] for r in roots)
        items.append(EvalItem(str(js.relative_to(folder).with_suffix("")), audio, labels, stem))
    return items


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    lines = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{i}: each line must be a JSON object")
        lines.append(obj)
    return lines


def labels_of_request(line: dict[str, Any]) -> dict[str, Any]:
    """The ``labels`` object, with ``lyrics`` taken from the request when the labels lack it."""
    labels = dict(line.get("labels") or {})
    if "lyrics" not in labels and line.get("lyrics"):
        labels["lyrics"] = line["lyrics"]
    return labels


def items_from_jsonl(path: str | Path, audio_dir: str | Path | None = None) -> list[EvalItem]:
    """One item per line with an ``audio`` path (relative paths resolve against the JSONL's folder)."""
    path = Path(path)
    items = []
    for i, line in enumerate(read_jsonl(path)):
        key = str(line.get("name") or line.get("key") or f"line{i:04d}")
        audio = line.get("audio")
        if audio is None and audio_dir is not None:
            audio = next((str(Path(audio_dir) / (key + s)) for s in AUDIO_SUFFIXES
                          if (Path(audio_dir) / (key + s)).exists()), None)  # fmt: skip
        if audio is None:
            raise ValueError(f"{path}: line {i + 1} has no 'audio' path (use --generate to make it)")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        stem = line.get("vocals_audio")
        items.append(
            EvalItem(key, audio_path, labels_of_request(line), (path.parent / stem) if stem else None)
        )
    return items


# ------------------------------------------------------------------------------------------ evaluation


def _load(path: Path) -> tuple[np.ndarray, int]:
    from songflow.audio.io import load_audio

    wav, sr = load_audio(path)
    return wav.numpy(), sr


def _bpm_range(labels: dict[str, Any], genre_prior: bool) -> tuple[float, float] | None:
    rng = labels.get("bpm_range")
    if rng and len(rng) == 2:
        return float(rng[0]), float(rng[1])
    if genre_prior and str(labels.get("genre", "")).lower() in GENRE_BPM:
        return GENRE_BPM[str(labels["genre"]).lower()]
    return None


def evaluate_item(
    item: EvalItem,
    checks: Sequence[str] = DEFAULT_CHECKS,
    *,
    genre_prior: bool = False,
    target_lufs: float | None = None,
    vocal_threshold: float = 0.05,
    vocal_backend: str = "auto",
) -> ClipReport:
    """Run the requested checkers whose labels exist; a failing checker records its error and moves on."""
    t0 = time.perf_counter()
    audio, sr = _load(item.audio)
    lab = item.labels
    rep = ClipReport(item.key)
    stem = None

    def run(name: str, fn, *args, **kwargs) -> None:
        try:
            rep.results[name] = fn(*args, **kwargs)
        except Exception as exc:  # a broken backend must not stop the whole run
            log.warning("%s: %s checker failed: %s", item.key, name, exc)
            rep.results[name] = ck.CheckResult(name, error=f"{type(exc).__name__}: {exc}")

    if "tempo" in checks and lab.get("bpm"):
        run("tempo", ck.check_tempo, audio, sr, float(lab["bpm"]), bpm_range=_bpm_range(lab, genre_prior))
    meter_label = expected_time_signature(lab)
    if "meter" in checks and meter_label:
        run("meter", ck.check_meter, audio, sr, meter_label)
    key_label = expected_key(lab)
    if "key" in checks and key_label:
        run("key", ck.check_key, audio, sr, key_label)
    want_vocals = expected_vocals(lab)
    if "vocals" in checks and want_vocals is not None:
        run(
            "vocals",
            ck.check_vocals,
            audio,
            sr,
            want_vocals,
            threshold=vocal_threshold,
            backend=vocal_backend,
        )
    if "instruments" in checks and lab.get("instruments"):
        voc = rep.results.get("vocals")
        run("instruments", ck.check_instruments, audio, sr, list(lab["instruments"]),
            vocals_detected=voc.measured if voc is not None and voc.error is None else None)  # fmt: skip
    sung = lab.get("syllables") or lab.get("sung_words") or lab.get("words") or lab.get("notes")
    if "pitch" in checks and sung and want_vocals is not False:
        notes = lab.get("notes") or lab
        if item.vocals_stem is not None and item.vocals_stem.exists():
            stem = _load(item.vocals_stem)
            run("pitch", ck.check_pitch, stem[0], stem[1], notes)
            rep.results["pitch"].details["source"] = "vocal stem"
        else:
            run("pitch", ck.check_pitch, audio, sr, notes)
            rep.results["pitch"].details["source"] = "mix"
    if "loudness" in checks:
        run("loudness", ck.check_loudness, audio, sr, target_lufs)
    if "clipping" in checks:
        run("clipping", ck.check_clipping, audio, sr)
    lyrics = lab.get("lyrics")
    if (
        "wer" in checks
        and isinstance(lyrics, str)
        and ck.normalize_words(lyrics)
        and want_vocals is not False
    ):
        src = stem if stem is not None else (audio, sr)
        run("wer", ck.check_wer, src[0], src[1], lyrics)
        if rep.results["wer"].error:  # no recogniser installed: leave the metric absent
            rep.results.pop("wer")
    rep.seconds = time.perf_counter() - t0
    return rep


def evaluate(
    items: Iterable[EvalItem],
    checks: Sequence[str] = DEFAULT_CHECKS,
    *,
    progress: bool = False,
    **kwargs: Any,
) -> list[ClipReport]:
    items = list(items)
    reports = []
    for i, item in enumerate(items, 1):
        reports.append(evaluate_item(item, checks, **kwargs))
        if progress:
            print(f"[{i}/{len(items)}] {item.key} ({reports[-1].seconds:.1f} s)", flush=True)
    return reports


# ----------------------------------------------------------------------------------------- aggregation


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def summarize(reports: Sequence[ClipReport]) -> dict[str, Any]:
    """Aggregate metrics. Keys are present (``None`` when no clip had the label) except ``wer``, which is
    present only when a recogniser ran."""

    def ok(name: str) -> list[ck.CheckResult]:
        return [r.results[name] for r in reports if name in r.results and r.results[name].error is None]

    tempo, meter, key = ok("tempo"), ok("meter"), ok("key")
    inst, voc = ok("instruments"), ok("vocals")
    pitch, loud, clip, wer = ok("pitch"), ok("loudness"), ok("clipping"), ok("wer")
    per_family: dict[str, list[bool]] = {}
    for r in inst:
        for name, hit in r.details.get("per_instrument", {}).items():
            per_family.setdefault(ck.instrument_family(name), []).append(bool(hit))
    all_hits = [h for hits in per_family.values() for h in hits]
    vocal_pos = [r for r in voc if r.expected]
    vocal_neg = [r for r in voc if r.expected is False]
    out: dict[str, Any] = {
        "n": len(reports),
        "tempo_n": len(tempo),
        "tempo_acc_octave": _mean(r.details["acc2"] for r in tempo),
        "tempo_acc_strict": _mean(r.details["acc1"] for r in tempo),
        "tempo_median_abs_err_bpm": float(np.median([r.details["abs_err_bpm"] for r in tempo]))
        if tempo
        else None,
        "meter_n": len(meter),
        "meter_acc": _mean(r.passed for r in meter),
        "key_n": len(key),
        "key_acc": _mean(r.passed for r in key),
        "key_mirex": _mean(r.score for r in key),
        "instrument_n": len(all_hits),
        "instrument_recall": _mean(all_hits),
        "instrument_recall_by_family": {f: _mean(h) for f, h in sorted(per_family.items())},
        "vocal_n": len(voc),
        "vocal_acc": _mean(r.passed for r in voc),
        "vocal_recall": _mean(r.passed for r in vocal_pos),
        "vocal_specificity": _mean(r.passed for r in vocal_neg),
        "pitch_n": len(pitch),
        "pitch_acc": _mean(r.score for r in pitch),
        "pitch_acc_octave_folded": _mean(r.details.get("octave_folded") for r in pitch),
        "loudness_lufs_mean": _mean(r.measured for r in loud),
        "loudness_lufs_min": min((r.measured for r in loud if r.measured is not None), default=None),
        "loudness_lufs_max": max((r.measured for r in loud if r.measured is not None), default=None),
        "clipping_share_mean": _mean(r.measured for r in clip),
        "clipped_clip_rate": _mean((not r.passed) for r in clip),
        "errors": sum(1 for rep in reports for r in rep.results.values() if r.error),
        "eval_s_mean": _mean(r.seconds for r in reports),
        "backends": sorted(
            {
                str(r.details.get("backend"))
                for rep in reports
                for r in rep.results.values()
                if r.details.get("backend")
            }
        ),
    }
    if wer:
        out["wer"] = _mean(r.measured for r in wer)
        out["wer_n"] = len(wer)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "-"
    return str(value)


def format_table(reports: Sequence[ClipReport], summary: dict[str, Any] | None = None) -> str:
    """Per-clip table (measured/expected, * marks a failed check) and the summary lines."""
    names = [n for n in ALL_CHECKS if any(n in r.results for r in reports)]
    header = ["clip"] + names
    rows = []
    for rep in reports:
        cells = [rep.key]
        for n in names:
            r = rep.results.get(n)
            if r is None:
                cells.append("")
            elif r.error:
                cells.append("ERR")
            else:
                if n == "instruments":
                    text = _fmt(r.score)
                elif n in ("pitch", "vocals", "clipping", "wer"):
                    text = _fmt(r.score if n == "pitch" else r.measured)
                else:
                    text = (
                        f"{_fmt(r.measured)}/{_fmt(r.expected)}"
                        if r.expected is not None
                        else _fmt(r.measured)
                    )
                cells.append(text + ("*" if r.passed is False else ""))
        rows.append(cells)
    widths = (
        [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
        if rows
        else [len(h) for h in header]
    )
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    summary = summary if summary is not None else summarize(reports)
    lines.append("")
    for k, v in summary.items():
        if k != "backends":
            lines.append(f"{k:28s} {_fmt(v) if not isinstance(v, dict) else json.dumps(v)}")
    lines.append(f"{'backends':28s} {', '.join(summary.get('backends', []))}")
    return "\n".join(lines)


def write_json(
    path: str | Path, reports: Sequence[ClipReport], summary: dict[str, Any] | None = None
) -> None:
    summary = summary if summary is not None else summarize(reports)
    doc = {
        **summary,
        "clips": [
            {"key": r.key, "eval_s": r.seconds, "results": {n: res.to_dict() for n, res in r.results.items()}}
            for r in reports
        ],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(ck._plain(doc), indent=1))


def write_csv(path: str | Path, reports: Sequence[ClipReport]) -> None:
    rows = [r.row() for r in reports]
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_plots(folder: str | Path, reports: Sequence[ClipReport]) -> list[Path]:
    """One PNG per metric (histogram / bar chart); returns the files, or [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots")
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def values(name: str, get) -> list[float]:
        out = []
        for rep in reports:
            r = rep.results.get(name)
            if r is not None and r.error is None:
                v = get(r)
                if v is not None and np.isfinite(v):
                    out.append(float(v))
        return out

    specs = [
        ("tempo", "tempo error (%)", lambda r: 100 * (r.measured - r.expected) / r.expected, "hist"),
        ("key", "MIREX key score", lambda r: r.score, "hist"),
        ("instruments", "instrument recall", lambda r: r.score, "hist"),
        ("vocals", "sung-frame share (vocal detector score)", lambda r: r.score, "hist"),
        ("pitch", "notes within 50 cents", lambda r: r.score, "hist"),
        ("loudness", "integrated loudness (LUFS)", lambda r: r.measured, "hist"),
        ("clipping", "clipped sample share", lambda r: r.measured, "hist"),
        ("wer", "word error rate", lambda r: r.measured, "hist"),
    ]
    for name, label, get, _ in specs:
        vals = values(name, get)
        if not vals:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if name == "vocals":
            pos = values(name, lambda r: r.score if r.expected else None)
            neg = values(name, lambda r: r.score if r.expected is False else None)
            ax.hist([pos, neg], bins=20, label=["vocals expected", "instrumental"], stacked=False)
            ax.legend()
        else:
            ax.hist(vals, bins=min(30, max(5, len(vals))))
        ax.set_xlabel(label)
        ax.set_ylabel("clips")
        ax.set_title(f"{name} (n={len(vals)}, mean {np.mean(vals):.3g})")
        fig.tight_layout()
        out = folder / f"{name}.png"
        fig.savefig(out, dpi=90)
        plt.close(fig)
        written.append(out)
    return written
