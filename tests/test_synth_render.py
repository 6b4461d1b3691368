"""Synthetic corpus: FluidSynth rendering, MBROLA singing, the clip pipeline and the HF dataset.

Tests that need FluidSynth (+ a GM SoundFont) or MBROLA (+ voices us1/us3) skip with a message naming
``scripts/install_synth_deps.sh`` when those are absent.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from songflow.data.synth.render import SynthDependencyError, check_soundfont, find_soundfont

pretty_midi = pytest.importorskip(
    "pretty_midi", reason="pretty_midi missing: run scripts/install_synth_deps.sh"
)


def _fluidsynth_ok() -> bool:
    try:
        import fluidsynth  # noqa: F401

        find_soundfont()
    except (ImportError, OSError, SynthDependencyError):
        return False
    return True


def _mbrola_ok() -> bool:
    try:
        import pronouncing  # noqa: F401
        import soxr  # noqa: F401

        from songflow.data.synth.sing import mbrola_available
    except ImportError:
        return False
    return mbrola_available()


needs_fluidsynth = pytest.mark.skipif(
    not _fluidsynth_ok(),
    reason="FluidSynth/pyfluidsynth or a GM SoundFont is missing: run scripts/install_synth_deps.sh",
)
needs_mbrola = pytest.mark.skipif(
    not _mbrola_ok(), reason="mbrola or its us1/us3 voices are missing: run scripts/install_synth_deps.sh"
)


# ------------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class StubNote:
    start_s: float
    end_s: float
    midi_pitch: int
    word: str
    syllable_index: int
    word_index: int


@dataclass
class StubSong:
    midi: object
    melody: list
    labels: dict = field(default_factory=dict)
    duration_s: float = 10.0


_WORDS = [("hello", 2), ("my", 1), ("little", 2), ("window", 2), ("sing", 1), ("along", 2), ("tonight", 2)]


def stub_compose(seed: int, duration_s: float, *, genre: str | None = None, vocals: bool | None = None):
    """A tiny seeded song: a claves click on every beat, piano chords, and (with vocals) a lyric line."""
    rng = random.Random(seed)
    bpm = rng.choice([90, 100, 120])
    spb = 60.0 / bpm
    beats = [round(i * spb, 6) for i in range(int(duration_s / spb)) if i * spb < duration_s - 0.2]
    pm = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    click = pretty_midi.Instrument(program=0, is_drum=True, name="click")
    piano = pretty_midi.Instrument(program=0, name="piano")
    for i, t in enumerate(beats):
        click.notes.append(pretty_midi.Note(110 if i % 4 == 0 else 90, 75, t, t + 0.05))
        if i % 4 == 0:
            root = 48 + rng.choice([0, 5, 7, 9])
            for p in (root, root + 4, root + 7):
                piano.notes.append(pretty_midi.Note(60, p, t, min(t + 4 * spb, duration_s)))
    pm.instruments = [click, piano]
    melody, lyrics_words = [], []
    if vocals:
        t, wi = 2 * spb, 0
        while t < duration_s - 1.0:
            word, n = _WORDS[rng.randrange(len(_WORDS))]
            for si in range(n):
                d = spb * rng.choice([1, 1, 2])
                melody.append(StubNote(round(t, 6), round(t + 0.9 * d, 6), rng.randint(57, 69), word, si, wi))
                t += d
            lyrics_words.append(word)
            wi += 1
        while melody and melody[-1].end_s > duration_s - 0.3:  # keep whole words only
            last = melody[-1].word_index
            melody = [n for n in melody if n.word_index != last]
            lyrics_words.pop()
    labels = {
        "tags": f"test, {bpm} bpm, piano",
        "caption": f"a test clip at {bpm} BPM",
        "genre": "test",
        "bpm": bpm,
        "beats": beats,
        "voice": rng.choice(["female", "male"]) if melody else None,
        "lyrics": "[verse]\n" + " ".join(lyrics_words) if melody else "",
        "duration": duration_s,
    }
    return StubSong(pm, melody, labels, duration_s)


def onset_times(x: np.ndarray, sr: int) -> np.ndarray:
    """Click-track onsets: rises of the 1 ms-frame energy envelope over a threshold after a quiet gap."""
    mono = x.mean(axis=0) if x.ndim == 2 else x
    hop = sr // 1000
    frames = mono[: len(mono) // hop * hop].reshape(-1, hop)
    env = np.sqrt((frames**2).mean(axis=1))
    thr = 0.2 * env.max()
    onsets, last = [], -1e9
    for i in range(1, len(env)):
        if env[i] >= thr > env[i - 1] and (i - last) > 100:  # at most one onset per 100 ms
            onsets.append(i * hop / sr)
            last = i
    return np.array(onsets)


def yin_f0(seg: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 700.0) -> float:
    """Fundamental frequency of a steady segment (YIN: cumulative-mean-normalised difference, first dip
    under 0.15, parabolic refinement)."""
    w = min(len(seg) // 2, int(sr / fmin) * 3)
    lags = np.arange(1, int(sr / fmin) + 2)
    x = seg[: w + lags[-1] + 1].astype(np.float64)
    d = np.array([np.sum((x[:w] - x[lag : lag + w]) ** 2) for lag in lags])
    cmnd = d * lags / np.maximum(np.cumsum(d), 1e-12)
    lo = int(sr / fmax)
    cand = np.where(cmnd[lo:] < 0.15)[0]
    k = (cand[0] + lo) if cand.size else int(np.argmin(cmnd[lo:]) + lo)
    while k + 1 < len(cmnd) and cmnd[k + 1] < cmnd[k]:
        k += 1
    if 0 < k < len(cmnd) - 1:
        a, b, c = cmnd[k - 1], cmnd[k], cmnd[k + 1]
        k = k + 0.5 * (a - c) / max(a - 2 * b + c, 1e-12)
    return sr / (k + 1)


# ------------------------------------------------------------------------------------------- soundfont
def test_missing_soundfont_gives_clear_error(tmp_path):
    with pytest.raises(SynthDependencyError, match="install_synth_deps.sh"):
        check_soundfont(tmp_path / "nope.sf2")
    with pytest.raises(SynthDependencyError, match="install_synth_deps.sh"):
        find_soundfont(tmp_path / "nope.sf2")


def test_corrupt_soundfont_gives_clear_error(tmp_path, monkeypatch):
    junk = tmp_path / "junk.sf2"
    junk.write_bytes(b"this is not a soundfont at all")
    with pytest.raises(SynthDependencyError, match="not a SoundFont.*install_synth_deps.sh"):
        check_soundfont(junk)
    truncated = tmp_path / "trunc.sf2"
    truncated.write_bytes(b"RIFF" + (10_000).to_bytes(4, "little") + b"sfbk" + b"\0" * 100)
    with pytest.raises(SynthDependencyError, match="truncated"):
        check_soundfont(truncated)
    monkeypatch.setenv("SONGFLOW_SOUNDFONT", str(junk))
    with pytest.raises(SynthDependencyError, match="not a SoundFont"):
        find_soundfont()
    from songflow.data.synth.render import MidiRenderer

    with pytest.raises(SynthDependencyError):
        MidiRenderer(junk)


# ------------------------------------------------------------------------------------------- rendering
@needs_fluidsynth
@pytest.mark.parametrize("sr,channels", [(44100, 2), (22050, 1)])
def test_rendered_onsets_match_labelled_beats(sr, channels):
    from songflow.data.synth.render import MidiRenderer

    song = stub_compose(3, 8.0)
    song.midi.instruments = song.midi.instruments[:1]  # the click alone
    with MidiRenderer(sample_rate=sr, channels=channels) as r:
        x = r.render(song.midi, duration_s=8.0)
    assert x.shape == (channels, int(8.0 * sr)) and x.dtype == np.float32
    assert 0.01 < np.abs(x).max() < 1.0
    onsets = onset_times(x, sr)
    beats = np.array(song.labels["beats"])
    assert len(onsets) == len(beats), (onsets, beats)
    assert np.max(np.abs(onsets - beats)) < 0.030


@needs_fluidsynth
def test_render_is_independent_of_history():
    from songflow.data.synth.render import MidiRenderer

    a, b = stub_compose(1, 4.0), stub_compose(2, 5.0)
    with MidiRenderer() as fresh:
        ref = fresh.render(b.midi, duration_s=5.0)
    with MidiRenderer() as used:
        used.render(a.midi, duration_s=2.7)  # cut while notes and reverb still sound
        used.render(b.midi, duration_s=1.3)
        again = used.render(b.midi, duration_s=5.0)
    assert np.array_equal(ref, again)


# ------------------------------------------------------------------------------------------- singing
@needs_mbrola
@pytest.mark.parametrize("voice", ["us1", "us3"])
def test_sung_pitch_and_timing_follow_the_notes(voice):
    from songflow.data.synth.sing import MbrolaSinger, midi_hz

    song = stub_compose(11, 12.0, vocals=True)
    sr = 22050
    take = MbrolaSinger(voice, sample_rate=sr).sing(song.melody, duration_s=12.0)
    assert take.audio.shape == (1, 12 * sr)
    assert len(take.syllables) == len(song.melody)
    cents = []
    for syl, note in zip(take.syllables, sorted(song.melody, key=lambda n: n.start_s), strict=True):
        assert syl.word == note.word and syl.midi_pitch == note.midi_pitch + take.transpose
        assert abs(syl.start_s - note.start_s) < 0.3 * (note.end_s - note.start_s) + 1e-6
        a, b = syl.start_s, syl.end_s
        seg = take.audio[0, int((a + 0.25 * (b - a)) * sr) : int((b - 0.25 * (b - a)) * sr)]
        if len(seg) < int(0.04 * sr):
            continue
        cents.append(1200 * np.log2(yin_f0(seg, sr) / midi_hz(syl.midi_pitch)))
    cents = np.abs(np.array(cents))
    assert len(cents) >= 0.8 * len(song.melody)
    assert np.mean(cents < 50) >= 0.9, np.round(cents)


def test_syllables_fit_the_note_count():
    from songflow.data.synth.sing import fit_syllables, syllabify

    assert syllabify(["w", "I", "n", "d", "@U"]) == [["w", "I", "n"], ["d", "@U"]]
    assert syllabify(["{", "s", "t", "r", "@"]) == [["{"], ["s", "t", "r", "@"]]
    assert fit_syllables([["w", "I", "n"], ["d", "@U"]], 1) == [["w", "I", "n", "d", "@U"]]
    assert fit_syllables([["s", "I", "N"]], 3) == [["s", "I"], ["I"], ["I", "N"]]


def test_period_quantisation_fix():
    from songflow.data.synth.sing import quantised_request

    for hz in (110.0, 261.63, 392.0, 440.0):
        request, realised = quantised_request(hz)
        assert int(16000 / request) == round(16000 / hz)  # MBROLA truncates the period
        assert abs(1200 * np.log2(realised / hz)) < 25


# ------------------------------------------------------------------------------------------- corpus
def _corpus_cfg(out: Path, workers: int, **kw):
    from songflow.data.synth.corpus import CorpusConfig

    base = dict(out=str(out), hours=30.0 / 3600, seed=7, workers=workers, sample_rate=22050, channels=2)
    base.update(clip_seconds=(6.0, 9.0), vocal_share=0.5, progress=False)
    base.update(kw)
    return CorpusConfig(**base)


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for sub in ("audio", "vocals", "midi", "labels")
        for p in sorted((out / sub).glob("*"))
    }


@needs_fluidsynth
@needs_mbrola
def test_corpus_is_deterministic_resumable_and_loads(tmp_path):
    datasets = pytest.importorskip("datasets")
    import soundfile as sf

    from songflow.data.synth.corpus import make_corpus, plan_corpus

    a, b = tmp_path / "a", tmp_path / "b"
    cfg_a = _corpus_cfg(a, workers=2)
    plans = plan_corpus(cfg_a)
    assert any(p.vocals for p in plans) and not all(p.vocals for p in plans)
    rep = make_corpus(cfg_a, compose=stub_compose)
    assert rep["made"] == len(plans) and rep["skipped"] == 0
    make_corpus(_corpus_cfg(b, workers=1), compose=stub_compose)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and len(fa) >= 3 * len(plans)
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]

    # audio: length, channels, loudness and peak as labelled
    lab = json.loads((a / "labels" / f"{plans[0].key}.json").read_text())
    x, sr = sf.read(a / lab["files"]["audio"], always_2d=True)
    assert sr == 22050 and x.shape == (int(round(plans[0].duration_s * sr)), 2)
    assert np.abs(x).max() <= 10 ** (-1.0 / 20) + 1e-4
    assert abs(lab["mix"]["loudness_lufs"] - (-16.0)) < 1.0

    # resume: a finished clip is skipped, a removed one is remade identically
    victim = plans[1].key
    (a / "labels" / f"{victim}.json").unlink()
    (a / "audio" / f"{victim}.flac").unlink()
    rep = make_corpus(cfg_a, compose=stub_compose)
    assert rep["made"] == 1 and rep["skipped"] == len(plans) - 1
    assert _files(a) == fa

    # the dataset: official columns, one row per clip, files that exist
    ds = datasets.load_from_disk(str(a / "dataset"))
    for col in ("keys", "filename", "tags", "speaker_emb_path", "norm_lyrics", "recaption", "labels"):
        assert col in ds.column_names
    assert len(ds) == len(plans) and ds["keys"] == [p.key for p in plans]
    row = ds[0]
    assert isinstance(row["tags"], list) and all(isinstance(t, str) for t in row["tags"])
    assert row["speaker_emb_path"] == "" and Path(row["filename"]).is_file()
    assert row["recaption"]["caption"] == lab["caption"]
    for r in ds:
        full = json.loads(r["labels"])
        assert bool(full["syllables"]) == r["has_vocals"] == bool(r["norm_lyrics"])

    # eval prompts: one valid text2music request per clip, labelled for the checkers
    import argparse

    from songflow.interfaces.cli.corpus import add_corpus_parser
    from songflow.requests import request_from_dict

    parser = argparse.ArgumentParser()
    add_corpus_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["corpus", "prompts", str(a), "--out", str(tmp_path / "p.jsonl"), "--duration", "8"]
    )
    assert args.func(args) == 0
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [x["name"] for x in lines] == [p.key for p in plans]
    for line, plan in zip(lines, plans, strict=True):
        label = json.loads((a / "labels" / f"{plan.key}.json").read_text())
        assert line["labels"]["vocals"] == plan.vocals == (line["lyrics"] != "[inst]")
        assert line["labels"]["bpm"] == label["bpm"] and line["labels"].get("tonic") == label.get("tonic")
        req = request_from_dict({k: v for k, v in line.items() if k not in ("name", "labels")})
        assert req.duration_s == 8 and req.params.seeds == (lines.index(line),)

    # other settings in the same folder are refused
    from songflow.errors import ConfigError

    with pytest.raises(ConfigError, match="other settings"):
        make_corpus(_corpus_cfg(a, workers=1, sample_rate=44100), compose=stub_compose)
    shutil.rmtree(b)


def test_cli_parser_registers_corpus_make():
    import argparse

    from songflow.interfaces.cli.corpus import add_corpus_parser

    parser = argparse.ArgumentParser()
    add_corpus_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "corpus",
            "make",
            "--hours",
            "0.5",
            "--out",
            "x",
            "--seed",
            "3",
            "--workers",
            "2",
            "--clip-seconds",
            "10-20",
        ]
    )
    assert args.hours == 0.5 and args.clip_seconds == (10.0, 20.0) and args.vocal_share == 0.6
    assert args.sample_rate == 44100 and args.channels == 2 and callable(args.func)


@needs_fluidsynth
@needs_mbrola
def test_corpus_with_the_real_composer(tmp_path):
    compose = pytest.importorskip("songflow.data.synth.compose", reason="composer not available")
    from songflow.data.synth.corpus import ClipMaker, clip_paths, plan_clip

    cfg = _corpus_cfg(tmp_path, workers=1, vocal_share=1.0, clip_seconds=(10.0, 10.0))
    for sub in ("audio", "vocals", "midi", "labels"):
        (tmp_path / sub).mkdir()
    plan = plan_clip(cfg, 0)
    ClipMaker(cfg, compose.compose_song).make(plan)
    lab = json.loads(clip_paths(tmp_path, plan.key)["labels"].read_text())
    for key in ("tags", "caption", "genre", "bpm", "key", "beats", "downbeats", "sections", "lyrics"):
        assert key in lab, key
    if lab["syllables"]:  # the composer may still choose an instrumental
        assert lab["voice"] in ("female", "male") and lab["voice_engine"].startswith("mbrola-")
        assert clip_paths(tmp_path, plan.key)["vocals"].is_file()
