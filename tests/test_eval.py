"""Offline adherence checkers on synthetic signals, and the eval CLI end to end."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json

import numpy as np
import pytest
import soundfile as sf

from songflow.eval import checkers as ck
from songflow.eval import report as rp
from songflow.interfaces.cli.eval import add_eval_parser

SR = 22050
HAS_LIBROSA = importlib.util.find_spec("librosa") is not None
needs_librosa = pytest.mark.skipif(not HAS_LIBROSA, reason="librosa is not installed")


def click_track(bpm: float, seconds: float = 10.0, sr: int = SR) -> np.ndarray:
    x = np.zeros(int(sr * seconds), np.float32)
    n = int(0.02 * sr)
    burst = np.random.default_rng(0).standard_normal(n) * np.exp(-np.arange(n) / (0.003 * sr))
    for t in np.arange(0.0, seconds - 0.05, 60.0 / bpm):
        i = int(t * sr)
        x[i : i + n] += 0.8 * burst
    return x


def tone(
    midi: float, seconds: float, amp: float = 0.2, vibrato_cents: float = 0.0, sr: int = SR
) -> np.ndarray:
    """Additive harmonic tone with a short fade; optional 5.5 Hz vibrato (a crude 'voice')."""
    t = np.arange(int(seconds * sr)) / sr
    f = ck.midi_to_hz(midi)
    phase = 2 * np.pi * f * t
    if vibrato_cents:
        depth = f * (2 ** (vibrato_cents / 1200) - 1)
        phase = phase + depth / 5.5 * np.sin(2 * np.pi * 5.5 * t)
    y = sum(amp / k * np.sin(k * phase) for k in range(1, 6))
    env = np.minimum(1.0, np.minimum(t / 0.01, (seconds - t) / 0.05))
    return (y * env).astype(np.float32)


def progression(tonic: int, minor: bool) -> np.ndarray:
    third = 3 if minor else 4
    chords = [(0, third, 7), (5, 5 + (3 if minor else 4), 12), (7, 11, 14), (0, third, 7)]
    return np.concatenate([sum(tone(48 + tonic + i, 1.2) for i in ch) for ch in chords * 2])


def meter_clip(
    beats_per_bar: int, bpm: float, seconds: float = 8.0, split: int = 2, sr: int = SR
) -> np.ndarray:
    """A loop with ``beats_per_bar`` beats a bar: kick, bass note and a new chord on each downbeat, a hat
    on every beat (louder on the downbeat) and soft ticks splitting each beat into ``split``."""
    n = int(seconds * sr)
    beat_s = 60.0 / bpm
    x = np.zeros(n + int((beats_per_bar * beat_s + 1) * sr), np.float32)  # room for the last bar's tails
    rng = np.random.default_rng(0)
    t = np.arange(int(0.25 * sr)) / sr
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-t / 0.02)) * t) * np.exp(-t / 0.08)
    hat = rng.standard_normal(int(0.03 * sr)) * np.exp(-np.arange(int(0.03 * sr)) / (0.004 * sr))
    roots = (0, 5, 7, 9)
    for i, start_s in enumerate(np.arange(0.0, seconds, beat_s)):
        j = int(start_s * sr)
        down = i % beats_per_bar == 0
        x[j : j + len(hat)] += (0.35 if down else 0.25) * hat
        for k in range(1, split):
            s = int((start_s + k * beat_s / split) * sr)
            x[s : s + len(hat)] += 0.12 * hat
        if down:
            root = roots[(i // beats_per_bar) % len(roots)]
            x[j : j + len(kick)] += 0.8 * kick
            tb = np.arange(int(beat_s * sr)) / sr
            x[j : j + len(tb)] += 0.4 * np.sin(2 * np.pi * ck.midi_to_hz(36 + root) * tb) * np.exp(-tb / 0.3)
            tc = np.arange(int(beats_per_bar * beat_s * sr)) / sr
            chord = sum(np.sin(2 * np.pi * ck.midi_to_hz(60 + root + p) * tc) for p in (0, 4, 7))
            x[j : j + len(tc)] += 0.06 * chord * np.exp(-tc / 1.5)
    return x[:n]


SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def melody(notes=SCALE, dur=0.4, vibrato=0.0):
    audio = np.concatenate([tone(m, dur, vibrato_cents=vibrato) for m in notes])
    return audio, [(i * dur, (i + 1) * dur, m) for i, m in enumerate(notes)]


# ---------------------------------------------------------------------------------------------- pure helpers


def test_parse_key_and_mirex_score():
    assert ck.parse_key("E minor") == (4, "minor")
    assert ck.parse_key("Eb major") == (3, "major")
    assert ck.parse_key("F#m") == (6, "minor")
    assert ck.parse_key("D dorian") == (2, "minor")
    assert ck.key_score("C major", "C major") == 1.0
    assert ck.key_score("G major", "C major") == 0.5  # fifth above
    assert ck.key_score("A minor", "C major") == 0.3  # relative
    assert ck.key_score("C major", "A minor") == 0.3
    assert ck.key_score("C minor", "C major") == 0.2  # parallel
    assert ck.key_score("F# major", "C major") == 0.0
    if importlib.util.find_spec("mir_eval"):
        import mir_eval

        for est in ("C major", "G major", "A minor", "C minor", "F major", "E minor", "D# major"):
            for ref in ("C major", "A minor"):
                assert ck.key_score(est, ref) == pytest.approx(mir_eval.key.weighted_score(ref, est)), (
                    est,
                    ref,
                )


def test_tempo_accuracy_octaves():
    assert ck.tempo_accuracy(121, 120) == (True, True)
    assert ck.tempo_accuracy(240, 120) == (False, True)
    assert ck.tempo_accuracy(40.5, 120) == (False, True)
    assert ck.tempo_accuracy(130, 120) == (False, False)
    assert ck._apply_range_prior(161.5 / 2, (120, 145)) == pytest.approx(121.125)


def test_word_error_rate():
    assert ck.word_error_rate("[verse]\nHello, world!", "hello world") == 0.0
    assert ck.word_error_rate("a b c d", "a x c") == pytest.approx(0.5)


def test_meter_family():
    fam = ck.meter_family
    assert fam("3/4") == fam("6/8") == fam("12/8") == fam("9/8") == fam("waltz") == "triple"
    assert fam("4/4") == fam("2/4") == fam("2/2") == fam("C") == fam(" 4 / 4 ") == "duple"
    assert fam("5/4") is None and fam("7/8") is None
    for bad in ("four", "4/3", "0/4", ""):
        with pytest.raises(ValueError):
            fam(bad)
    assert rp.expected_time_signature({"time_signature": "6/8"}) == "6/8"
    assert rp.expected_time_signature({"time_signature": "7/8"}) is None  # irregular: skipped
    assert rp.expected_time_signature({"time_signature": "n/a"}) is None
    assert rp.expected_time_signature({"bpm": 120}) is None


def test_instrument_families():
    fam = ck.instrument_family
    assert fam("drums") == "drums" and fam("electric bass (finger)") == "bass" and fam("bassoon") == "pitched"
    assert fam("acoustic grand piano") == "pitched" and fam("vocals") == "vocals"
    assert fam("choir pad") == "pitched" and fam("male vocals") == "vocals"


# ------------------------------------------------------------------------------------------------- checkers


@pytest.mark.parametrize("bpm", [90, 128])
def test_tempo_click_track(bpm):
    r = ck.check_tempo(click_track(bpm), SR, bpm)
    assert abs(r.measured - bpm) <= 0.04 * bpm, r
    assert r.passed and r.details["acc1"]


def test_tempo_numpy_fallback():
    r = ck.check_tempo(click_track(120), SR, 120, backend="numpy")
    assert r.details["acc2"], r


@pytest.mark.parametrize("tonic,minor,name", [(4, True, "E minor"), (10, False, "Bb major")])
def test_key_progression(tonic, minor, name):
    audio = progression(tonic, minor)
    r = ck.check_key(audio, SR, name)
    assert r.passed and r.score == 1.0, r
    r2 = ck.check_key(audio, SR, name, backend="krumhansl")
    assert r2.passed, r2


@needs_librosa
def test_pitch_accuracy_and_semitone_shift():
    audio, notes = melody()
    r = ck.check_pitch(audio, SR, notes)
    assert r.score >= 0.9 and r.passed
    shifted = ck.check_pitch(audio, SR, [(a, b, m + 1) for a, b, m in notes])
    assert shifted.score <= 0.05 and not shifted.passed
    # the word form used by the corpus labels
    words = {"words": [{"word": "do re", "start": 0.0, "end": 0.8, "notes": [60, 62]}]}
    assert ck.check_pitch(audio[: int(0.8 * SR)], SR, words).score == 1.0


@needs_librosa
def test_vocal_presence():
    rng = np.random.default_rng(1)
    voice, _ = melody(vibrato=40)
    silence = np.zeros(SR * 2, np.float32)
    noise = (0.1 * rng.standard_normal(SR * 3)).astype(np.float32)
    flat, _ = melody()
    assert ck.check_vocals(voice, SR, True, backend="pyin").passed
    for x in (silence, noise, flat, click_track(120, 3)):
        r = ck.check_vocals(x, SR, False, backend="pyin")
        assert r.passed, r.details


@pytest.mark.parametrize(
    "beats_per_bar,split,bpm,beat_step",
    [
        (3, 2, 100, 1),  # 3/4, beats at the quarter
        (3, 2, 150, 1),
        (3, 2, 90, 0.5),  # 3/4 tracked at the eighth: bars of 6 beats
        (2, 3, 70, 1),  # 6/8 tracked at the dotted quarter: the beat splits into three
        (2, 3, 70, 1 / 3),  # 6/8 tracked at the eighth
        (4, 2, 100, 1),  # 4/4
        (4, 2, 150, 1),
        (4, 2, 90, 0.5),  # 4/4 tracked at the eighth
        (4, 4, 120, 1),  # 4/4 with sixteenths
    ],
)
def test_meter_from_known_beats(beats_per_bar, split, bpm, beat_step):
    x = meter_clip(beats_per_bar, bpm, split=split)
    beats_s = np.arange(0.0, 7.9, beat_step * 60.0 / bpm)
    family, feats = ck.estimate_meter(x, SR, beats_s)
    assert family == ("triple" if beats_per_bar == 3 or split == 3 else "duple"), feats
    assert feats["beat_backend"] == "given beats" and feats["n_beats"] == len(beats_s)


@pytest.mark.parametrize("bpm", [96, 132])
def test_check_meter_tracks_beats(bpm):
    waltz, march = meter_clip(3, bpm), meter_clip(4, bpm)
    r = ck.check_meter(waltz, SR, "3/4")
    assert r.passed and r.measured == "triple" and r.expected == "triple", r.details
    assert abs(r.details["bpm"] - bpm) <= 0.04 * bpm or abs(r.details["bpm"] - 2 * bpm) <= 0.08 * bpm
    assert not ck.check_meter(waltz, SR, "4/4").passed
    r = ck.check_meter(march, SR, "4/4")
    assert r.passed and r.measured == "duple", r.details
    assert ck.check_meter(march, SR, "6/8").passed is False


def test_numpy_beat_grid_and_meter():
    _, beats_s, used = ck.estimate_beats(click_track(120), SR, backend="numpy")
    assert used == "numpy" and np.median(np.diff(beats_s)) == pytest.approx(0.5, rel=0.02)
    assert np.abs(beats_s - 0.5 * np.round(beats_s / 0.5)).max() < 0.03  # on the clicks
    assert ck.estimate_meter(meter_clip(3, 100), SR, backend="numpy")[0] == "triple"
    assert ck.estimate_meter(meter_clip(4, 100), SR, backend="numpy")[0] == "duple"


def test_check_meter_too_short_and_bad_label():
    r = ck.check_meter(meter_clip(3, 100, seconds=2.0), SR, "3/4")
    assert r.error and r.passed is None and r.measured is None
    with pytest.raises(ValueError):
        ck.check_meter(meter_clip(3, 100), SR, "5/4")


def test_loudness_sine():
    sr = 48000
    s = (0.1 * np.sin(2 * np.pi * 997 * np.arange(sr * 4) / sr)).astype(np.float32)  # -20 dBFS peak
    stereo = np.stack([s, s])
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LUFS, so -20 dBFS in both reads -20.0
    lufs, _ = ck.integrated_loudness(stereo, sr, backend="bs1770")
    assert lufs == pytest.approx(-20.0, abs=0.1)
    assert ck.integrated_loudness(s, 44100, backend="bs1770")[0] == pytest.approx(-23.0, abs=0.2)
    r = ck.check_loudness(stereo, sr, target_lufs=-20.0)
    assert r.passed and r.measured == pytest.approx(-20.0, abs=0.2)
    assert ck.integrated_loudness(np.zeros((2, sr)), sr, backend="bs1770")[0] == float("-inf")


def test_clipping_share():
    x = np.zeros((2, 1000), np.float32)
    assert ck.check_clipping(x, SR).passed
    x[0, :10] = 1.0
    x[1, :10] = -1.0
    r = ck.check_clipping(x, SR)
    assert r.measured == pytest.approx(0.01) and not r.passed


def test_instrument_families_detected():
    n = len(click_track(120, 6))
    drums_bass = click_track(120, 6) + np.tile(tone(40, 1.0), 6)[:n]
    r = ck.check_instruments(drums_bass, SR, ["drums", "electric bass (finger)"])
    assert r.details["families"]["drums"], r.details
    keys = ck.check_instruments(progression(0, False), SR, ["drums", "acoustic grand piano"])
    assert not keys.details["families"]["drums"] and keys.details["families"]["pitched"]
    assert keys.score == pytest.approx(0.5)


def test_wer_absent_without_recogniser(monkeypatch):
    monkeypatch.setattr(ck, "_has", lambda m: False)
    r = ck.check_wer(np.zeros(SR, np.float32), SR, "hello world")
    assert r.error and r.measured is None


# ------------------------------------------------------------------------------------------------ end to end


def _write_pair(tmp_path):
    a = np.stack([click_track(120, 6) + progression(4, True)[: SR * 6]] * 2).T * 0.5
    b, _ = melody(vibrato=40)
    sf.write(tmp_path / "a.wav", a.astype(np.float32), SR)
    sf.write(tmp_path / "b.wav", np.stack([b, b]).T, SR)
    lines = [
        {"tags": "pop, 120 bpm", "lyrics": "[inst]", "duration_s": 6, "seed": 1, "audio": "a.wav",
         "labels": {"bpm": 120, "key": "E minor", "instruments": ["drums", "piano"], "vocals": False}},
        {"tags": "ballad", "lyrics": "la la la", "duration": 3.2, "seed": 2, "audio": "b.wav", "name": "bee",
         "labels": {"bpm": 90, "key": "C major", "instruments": ["vocals"], "vocals": True}},
    ]  # fmt: skip
    path = tmp_path / "reqs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@needs_librosa
def test_jsonl_end_to_end(tmp_path, capsys):
    path = _write_pair(tmp_path)
    out_json, out_csv, plots = tmp_path / "s.json", tmp_path / "rows.csv", tmp_path / "plots"
    checks = "tempo,key,instruments,vocals,loudness,clipping,wer"
    argv = ["eval", str(path), "--json", str(out_json), "--csv", str(out_csv), "--quiet",
            "--checks", checks, "--vocal-backend", "pyin"]  # fmt: skip
    if importlib.util.find_spec("matplotlib"):
        argv += ["--plots", str(plots)]
    assert _cli(argv) == 0
    table = capsys.readouterr().out
    assert "tempo_acc_octave" in table and "bee" in table
    summary = json.loads(out_json.read_text())
    for k in ("n", "tempo_acc_octave", "tempo_acc_strict", "key_acc", "instrument_recall", "vocal_acc"):
        assert k in summary
    assert summary["n"] == 2 and len(summary["clips"]) == 2
    first = summary["clips"][0]["results"]
    assert first["tempo"]["details"]["acc1"] is True and first["key"]["passed"] is True
    assert summary["vocal_acc"] == 1.0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["key"] for r in rows] == ["line0000", "bee"]
    if importlib.util.find_spec("matplotlib"):
        assert (plots / "tempo.png").exists()


def test_corpus_folder(tmp_path):
    x = click_track(100, 6)
    sf.write(tmp_path / "c1.flac", x, SR)
    (tmp_path / "c1.json").write_text(json.dumps({"bpm": 100, "key": "C major", "instruments": ["drums"]}))
    (tmp_path / "notes.json").write_text("{}")  # no audio next to it: ignored
    items = rp.items_from_corpus(tmp_path)
    assert [i.key for i in items] == ["c1"]
    reps = rp.evaluate(items, ["tempo", "clipping"])
    s = rp.summarize(reps)
    assert s["n"] == 1 and s["tempo_acc_strict"] == 1.0 and "wer" not in s
    assert "c1" in rp.format_table(reps, s)


def test_cli_errors(tmp_path):
    assert _cli(["eval", str(tmp_path / "missing.jsonl")]) == 2
    (tmp_path / "x.jsonl").write_text(json.dumps({"labels": {"bpm": 100}}) + "\n")
    assert _cli(["eval", str(tmp_path / "x.jsonl")]) == 2
    assert _cli(["eval", str(tmp_path), "--checks", "nope"]) == 2


def test_meter_in_runner_and_cli(tmp_path):
    clips = {"waltz": (3, "3/4"), "march": (4, "4/4"), "wrong": (3, "4/4"), "nolabel": (4, None)}
    for name, (beats_per_bar, ts) in clips.items():
        sf.write(tmp_path / f"{name}.flac", meter_clip(beats_per_bar, 110), SR)
        labels = {"bpm": 110} if ts is None else {"bpm": 110, "time_signature": ts}
        (tmp_path / f"{name}.json").write_text(json.dumps(labels))
    reps = rp.evaluate(rp.items_from_corpus(tmp_path), ["meter"])
    by_key = {r.key: r for r in reps}
    assert "meter" not in by_key["nolabel"].results and "tempo" not in by_key["waltz"].results
    assert by_key["waltz"].results["meter"].passed and by_key["march"].results["meter"].passed
    assert by_key["wrong"].results["meter"].passed is False
    s = rp.summarize(reps)
    assert s["meter_n"] == 3 and s["meter_acc"] == pytest.approx(2 / 3)
    assert "triple/triple" in rp.format_table(reps, s)
    assert rp.summarize(reps[:0])["meter_acc"] is None
    out = tmp_path / "s.json"
    assert _cli(["eval", str(tmp_path), "--checks", "meter", "--json", str(out), "--quiet"]) == 0
    summary = json.loads(out.read_text())
    assert summary["meter_n"] == 3 and summary["meter_acc"] == pytest.approx(2 / 3)
    assert "meter" in rp.DEFAULT_CHECKS
