"""Procedural composer: determinism, grid/label consistency, melody-in-key, lyric alignment, lyric variety."""

from __future__ import annotations

import json
import random
import time

import pytest

pytest.importorskip("pretty_midi")
pronouncing = pytest.importorskip("pronouncing")

from songflow.data.synth import lyrics_gen  # noqa: E402
from songflow.data.synth.compose import GENRES, METERS, PROGRAM_NAMES, Song, compose_song  # noqa: E402
from songflow.data.synth.theory import PITCH_CLASS_NAMES, SCALE_STEPS  # noqa: E402

# chord-name suffix -> semitones above the root (an independent reading of the "chord" labels)
CHORD_SUFFIXES = {
    "": (0, 4, 7), "m": (0, 3, 7), "dim": (0, 3, 6), "aug": (0, 4, 8), "5": (0, 7), "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11), "m7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10), "dim7": (0, 3, 6, 9),
    "mMaj7": (0, 3, 7, 11), "augMaj7": (0, 4, 8, 11),
}  # fmt: skip
STEPS_PER_BEAT = {"4/4": 4, "3/4": 4, "6/8": 6}
BEATS_PER_BAR = {"4/4": 4, "3/4": 3, "6/8": 2}


def _chord_pcs(name: str) -> set[int]:
    root = name[:2] if name[:2] in PITCH_CLASS_NAMES else name[:1]
    pc = PITCH_CLASS_NAMES.index(root)
    return {(pc + i) % 12 for i in CHORD_SUFFIXES[name[len(root) :]]}


def _midi_notes(song: Song) -> list:
    return [
        (inst.program, inst.is_drum, [(n.start, n.end, n.pitch, n.velocity) for n in inst.notes])
        for inst in song.midi.instruments
    ]


def _songs() -> list[Song]:
    """Every genre, with and without vocals, plus seeded picks; covers all three meters."""
    songs = [compose_song(seed, 30.0, genre=g, vocals=seed % 2 == 0) for seed, g in enumerate(sorted(GENRES))]
    songs += [compose_song(100 + seed, 24.0) for seed in range(25)]
    return songs


@pytest.fixture(scope="module")
def songs() -> list[Song]:
    return _songs()


def _grid_times(labels: dict) -> list[float]:
    """All (swung) sixteenth-grid times of the clip, rebuilt from the labels alone."""
    beat_s = 60.0 / labels["bpm"]
    spb = STEPS_PER_BEAT[labels["time_signature"]]
    r = labels["swing_frac"]
    pairs = {8: 1, 16: 2, None: 1}[labels["swing_unit"]]
    out = []
    for beat in range(int(labels["duration"] / beat_s) + 2):
        for sub in range(spb):
            x = sub / spb
            if r != 0.5:
                pair, y = divmod(x * pairs, 1.0)
                y = y * 2 * r if y < 0.5 else r + (y - 0.5) * 2 * (1 - r)
                x = (pair + y) / pairs
            out.append((beat + x) * beat_s)
    return out


def test_genre_table_is_complete():
    assert len(GENRES) >= 12
    meters_used = {m for spec in GENRES.values() for m in spec.styles}
    assert meters_used == set(METERS)
    for spec in GENRES.values():
        pools = spec.chord_programs + spec.bass_programs + spec.lead_programs + spec.pad_programs
        assert all(p in PROGRAM_NAMES for p in pools), spec.name
        for meter_name, style in spec.styles.items():
            for groove in style.grooves:
                assert all(len(p) == METERS[meter_name].steps_per_bar for p in groove.values()), spec.name
    with pytest.raises(ValueError, match="unknown genre"):
        compose_song(0, 10.0, genre="polka-step")


def test_same_seed_is_identical_and_seeds_differ():
    a, b = compose_song(7, 30.0), compose_song(7, 30.0)
    assert a.labels == b.labels and a.melody == b.melody
    assert _midi_notes(a) == _midi_notes(b)
    c = compose_song(8, 30.0)
    assert c.labels != a.labels and _midi_notes(c) != _midi_notes(a)
    # forcing the genre keeps determinism too
    assert compose_song(7, 30.0, genre="jazz").labels == compose_song(7, 30.0, genre="jazz").labels


def test_labels_json_and_basic_fields(songs):
    for s in songs:
        lab = s.labels
        assert json.loads(json.dumps(lab)) == lab
        assert lab["genre"] in GENRES and lab["time_signature"] in METERS
        assert lab["key"] == f"{lab['tonic']} {'minor' if lab['mode'] in ('minor', 'dorian') else 'major'}"
        assert lab["duration"] == pytest.approx(s.duration_s)
        assert (lab["voice"] is None) == (not s.melody) == (lab["lyrics"] == "[inst]")
        assert ("vocals" in lab["instruments"]) == bool(s.melody)
        assert all(n.end <= s.duration_s + 1e-9 for inst in s.midi.instruments for n in inst.notes)
        assert not any(inst.name == "vocals" for inst in s.midi.instruments)
        assert [ts.numerator for ts in s.midi.time_signature_changes] == [
            METERS[lab["time_signature"]].midi_numerator
        ]
        quarters = METERS[lab["time_signature"]].quarters_per_beat
        assert s.midi.get_tempo_changes()[1][0] == pytest.approx(lab["bpm"] * quarters)


def test_all_meters_appear(songs):
    seen = {s.labels["time_signature"] for s in songs}
    assert {"4/4", "3/4", "6/8"} <= seen


def test_beats_and_downbeats_follow_tempo_and_meter(songs):
    for s in songs:
        lab = s.labels
        beat_s = 60.0 / lab["bpm"]
        beats, downbeats = lab["beats"], lab["downbeats"]
        assert beats[0] == 0.0 and beats[-1] < s.duration_s
        assert s.duration_s - beats[-1] <= beat_s + 1e-3
        assert all(abs((b - a) - beat_s) < 1e-3 for a, b in zip(beats, beats[1:], strict=False))
        bpb = BEATS_PER_BAR[lab["time_signature"]]
        assert downbeats == beats[::bpb]
        assert all(abs((b - a) - bpb * beat_s) < 1e-3 for a, b in zip(downbeats, downbeats[1:], strict=False))
        # chords and sections start on downbeats (or half bars for two-chord bars) and tile the clip
        for key in ("chords", "sections"):
            spans = lab[key]
            assert spans[0]["start"] == 0.0 and spans[-1]["end"] == pytest.approx(s.duration_s, abs=1e-4)
            assert all(abs(a["end"] - b["start"]) < 1e-4 for a, b in zip(spans, spans[1:], strict=False))
        half_bar = bpb * beat_s / 2
        assert all(abs(c["start"] / half_bar - round(c["start"] / half_bar)) < 1e-3 for c in lab["chords"])


def test_drum_onsets_sit_on_the_grid(songs):
    checked = 0
    for s in songs:
        grid = _grid_times(s.labels)
        for inst in s.midi.instruments:
            if not inst.is_drum:
                continue
            for n in inst.notes:
                nearest = min(grid, key=lambda t, n=n: abs(t - n.start))
                assert abs(nearest - n.start) < 1e-6, (s.labels["genre"], n.start)
                checked += 1
        # downbeats carry a hit in every drummed genre (kick, cymbal or ride)
    assert checked > 1000


def test_melody_in_scale_and_on_chords(songs):
    on_beat = chord_tone = 0
    for s in songs:
        lab = s.labels
        tonic = PITCH_CLASS_NAMES.index(lab["tonic"])
        scale = {(tonic + i) % 12 for i in SCALE_STEPS[lab["mode"]]}
        beats = lab["beats"]
        for note in s.melody:
            assert note.midi_pitch % 12 in scale, (lab["key"], lab["mode"], note)
            if any(abs(note.start_s - b) < 1e-4 for b in beats):
                chord = next(c for c in lab["chords"] if c["start"] - 1e-4 <= note.start_s < c["end"] - 1e-4)
                pcs = _chord_pcs(chord["chord"])
                if pcs & scale:
                    on_beat += 1
                    chord_tone += note.midi_pitch % 12 in pcs
    assert on_beat > 200 and chord_tone == on_beat


def test_words_syllables_and_notes_agree(songs):
    sung = [s for s in songs if s.melody]
    assert len(sung) >= 10
    for s in sung:
        lab = s.labels
        notes = s.melody
        assert all(a.end_s <= b.start_s + 1e-9 for a, b in zip(notes, notes[1:], strict=False))
        assert all(n.start_s < n.end_s <= s.duration_s + 1e-9 for n in notes)
        assert lab["melody"] == [[round(n.start_s, 4), round(n.end_s, 4), n.midi_pitch] for n in notes]
        by_word: dict[int, list] = {}
        for n in notes:
            by_word.setdefault(n.word_index, []).append(n)
        assert sorted(by_word) == list(range(len(by_word))) == list(range(len(lab["words"])))
        for index, w in enumerate(lab["words"]):
            syl = by_word[index]
            assert [n.syllable_index for n in syl] == list(range(len(syl)))
            assert {n.word for n in syl} == {w["word"]}
            assert w["notes"] == [n.midi_pitch for n in syl]
            assert w["start"] == round(syl[0].start_s, 4) and w["end"] == round(syl[-1].end_s, 4)
            phones = pronouncing.phones_for_word(w["word"].lower())
            assert phones and {pronouncing.syllable_count(p) for p in phones} == {len(syl)}
        # the lyric text is exactly the sung words, with a structure tag per section
        text_lines = lab["lyrics"].split("\n")
        tags = [ln for ln in text_lines if ln.startswith("[")]
        assert tags == [f"[{sec['name']}]" for sec in lab["sections"]]
        sung_words = " ".join(ln for ln in text_lines if ln and not ln.startswith("[")).split()
        assert sung_words == [w["word"] for w in lab["words"]]


def test_structure_for_longer_clips(songs):
    for s in songs:
        if s.duration_s >= 20:
            assert len(s.labels["sections"]) > 1
    # choruses repeat their lyrics
    repeats = 0
    for seed in range(40):
        lab = compose_song(seed, 60.0, vocals=True).labels
        blocks = [b for b in lab["lyrics"].split("\n\n") if b.startswith("[chorus]\n")]
        full = [b for b in blocks if b.count("\n") >= 2]
        repeats += len(full) >= 2 and full[0] == full[1]
    assert repeats >= 5


def test_tags_and_caption_mention_the_music(songs):
    phrasings = set()
    for s in songs:
        lab = s.labels
        tags = lab["tags"]
        assert lab["genre"] in tags and str(lab["bpm"]) in tags
        for name in lab["instruments"]:
            assert (lab["voice"] in tags) if name == "vocals" else (name in tags), (name, tags)
        if not s.melody:
            assert "instrumental" in tags or "no vocals" in tags
        assert str(lab["bpm"]) in lab["caption"] and lab["caption"].endswith(".")
        phrasings.add(tags.split(", ")[0])
    assert len({s.labels["tags"] for s in songs}) == len(songs)
    assert len(phrasings) > 5  # order varies, not always the genre first


def test_lyric_generator_variety_and_cmudict():
    assert lyrics_gen.dropped_bank_words() == []
    rng = random.Random(1234)
    lines = []
    for _ in range(2000):
        lo = rng.randint(2, 9)
        hi = lo + rng.randint(0, 5)
        line = lyrics_gen.generate_line(rng, lo, hi, theme=rng.choice((None,) + lyrics_gen.themes()))
        assert lo <= line.num_syllables <= hi
        lines.append(line)
    assert len({ln.text for ln in lines}) >= 1000
    words = {w for ln in lines for w in ln.words}
    for w in words:
        phones = pronouncing.phones_for_word(w.lower())
        assert phones, w
        assert {pronouncing.syllable_count(p) for p in phones} == {lyrics_gen.word_syllables(w)}
    for ln in lines[:200]:
        assert ln.syllable_counts == tuple(lyrics_gen.word_syllables(w) for w in ln.words)


def test_short_and_odd_durations():
    for seed, dur in enumerate((1.0, 3.3, 7.77, 10.0, 61.5)):
        s = compose_song(seed, dur, vocals=True)
        assert s.duration_s == dur and s.labels["sections"][-1]["end"] == pytest.approx(dur, abs=1e-4)
        assert all(n.end_s <= dur + 1e-9 for n in s.melody)
    with pytest.raises(ValueError):
        compose_song(0, 0.0)


def test_compose_is_fast():
    compose_song(0, 30.0, vocals=True)  # warm the CMUdict / pretty_midi imports
    t0 = time.perf_counter()
    for seed in range(20):
        compose_song(seed, 30.0)
    assert (time.perf_counter() - t0) / 20 < 0.1


def test_stressed_syllables_favour_beats(songs):
    on_beat = {True: [0, 0], False: [0, 0]}  # stressed? -> [on beat, total]
    for s in songs:
        beats = s.labels["beats"]
        for n in s.melody:
            stress = lyrics_gen.word_stresses(n.word)[n.syllable_index]
            if stress in (0.0, 1.0):
                hit = any(abs(n.start_s - b) < 1e-4 for b in beats)
                on_beat[stress == 1.0][0] += hit
                on_beat[stress == 1.0][1] += 1
    stressed, unstressed = (on_beat[k][0] / on_beat[k][1] for k in (True, False))
    assert stressed > unstressed + 0.1, (stressed, unstressed)
