"""Procedural song composer with exact labels, for a synthetic text-to-music corpus.

``compose_song(seed, duration_s)`` returns a :class:`Song`: the backing as a ``pretty_midi.PrettyMIDI``
(drums plus pitched GM instruments, no vocal track), the sung line as :class:`SungNote` s (one syllable per
note), and a JSON-ready ``labels`` dict. Everything is decided by ``random.Random`` streams derived from the
seed, so a seed reproduces the song exactly, and every label is true by construction.

Conventions (all times in seconds from the start of the clip):

* **Beat.** ``bpm`` counts the felt pulse: a quarter note in 4/4 and 3/4, a *dotted quarter* in 6/8 (two
  beats per bar). ``beats`` are spaced exactly ``60 / bpm`` and ``downbeats`` every ``beats_per_bar`` beats;
  both start at 0. The MIDI tempo is stored in quarter notes per minute (``1.5 * bpm`` in 6/8).
* **Swing.** Swing only delays off-beat subdivisions (the 2nd eighth of each beat, or the 2nd sixteenth of
  each eighth), never the beat itself, so the beat grid is unswung. ``labels["swing_frac"]`` is where the
  delayed note sits inside its pair (0.5 = straight, 0.66 = triplet swing); ``labels["swing_unit"]`` is 8
  or 16 (None when straight).
* **Grid.** Every drum onset lies exactly on the (swung) sixteenth grid; pitched backing parts get at most
  ``MAX_JITTER_S`` of timing humanisation; the sung melody is exactly on the grid.
* **Melody.** Every sung pitch is in the scale of ``labels["mode"]`` on ``labels["tonic"]``; notes on beats
  are chord tones of the sounding chord whenever that chord has a tone in the scale.
* **Duration.** The clip is exactly ``duration_s`` long; notes are cut at the end and lyric lines that would
  not finish are left out whole, so ``lyrics``, ``words`` and ``melody`` always agree.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from songflow.data.synth import lyrics_gen
from songflow.data.synth.theory import (
    MODE_FAMILY,
    Chord,
    closest_voicing,
    diatonic_chord,
    pitch_class_name,
    scale_pitch_classes,
    scale_pitches,
)

if TYPE_CHECKING:
    import pretty_midi

MAX_JITTER_S = 0.006  # timing humanisation bound for pitched backing parts (drums and melody are exact)


# ----------------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class SungNote:
    """One syllable of the vocal line on one note."""

    start_s: float
    end_s: float
    midi_pitch: int
    word: str
    syllable_index: int  # index of this syllable within the word
    word_index: int  # index of the word in the whole lyric


@dataclass
class Song:
    midi: (
        pretty_midi.PrettyMIDI
    )  # the backing only (drums + pitched instruments, GM programs), no vocal track
    melody: list[SungNote]  # the sung line; [] for instrumentals
    labels: dict  # JSON-ready
    duration_s: float


@dataclass(frozen=True)
class Meter:
    name: str
    beats_per_bar: int
    steps_per_beat: int  # sixteenth notes per beat: 4 in simple meters, 6 in 6/8
    midi_numerator: int
    midi_denominator: int
    quarters_per_beat: float  # 1.0, or 1.5 for the dotted-quarter beat of 6/8

    @property
    def steps_per_bar(self) -> int:
        return self.beats_per_bar * self.steps_per_beat

    @property
    def is_compound(self) -> bool:
        return self.steps_per_beat == 6


METERS: dict[str, Meter] = {
    "4/4": Meter("4/4", 4, 4, 4, 4, 1.0),
    "3/4": Meter("3/4", 3, 4, 3, 4, 1.0),
    "6/8": Meter("6/8", 2, 6, 6, 8, 1.5),
}


@dataclass(frozen=True)
class MeterStyle:
    """How a genre plays in one meter: drum grooves (voice -> one bar of steps), comping and bass styles."""

    grooves: tuple[dict[str, str], ...]  # () = no drums
    comp_styles: tuple[str, ...]
    bass_styles: tuple[str, ...]


@dataclass(frozen=True)
class GenreSpec:
    name: str
    bpm_range: tuple[int, int]  # inclusive, in the meter's beats (dotted quarters in 6/8)
    styles: dict[str, MeterStyle]  # meter name -> style; the first meter is the most likely
    modes: tuple[str, ...]  # drawn uniformly (repeat an entry to weight it)
    chord_programs: tuple[int, ...]
    bass_programs: tuple[int, ...]
    lead_programs: tuple[int, ...]
    pad_programs: tuple[int, ...] = ()
    pad_prob: float = 0.0
    chord_kind: str = "triad"  # triad | seventh | power | dominant (every chord a dominant 7th, for blues)
    chords_per_bar: int = 1
    swing_frac: float = 0.5
    swing_unit: int = 8
    vocal_prob: float = 0.7
    energy: float = 0.5  # 0..1, feeds the mood rule
    crash_on_sections: bool = True
    fill_prob: float = 0.6
    twelve_bar: bool = False
    raise_leading_tone_prob: float = 0.0  # minor keys: chance of a harmonic-minor V
    descriptors: tuple[str, ...] = ()  # extra style words for tags ("boom bap")
    meter_weights: tuple[float, ...] = ()  # per entry of ``styles``; default uniform
    dense_syllables: bool = False  # allow sixteenth-note syllables (rap-like delivery)


# ----------------------------------------------------------------------------------------------------
# Drum kit (GM percussion keys) and groove-string velocity letters: X accent, x normal, o soft, g ghost.
DRUM_KEYS = {
    "K": 36, "RS": 37, "S": 38, "CP": 39, "CH": 42, "PH": 44, "OH": 46, "LT": 45, "MT": 47, "HT": 50,
    "CR": 49, "RD": 51, "RB": 53, "TB": 54, "CB": 56, "SH": 70, "CG": 63, "CL": 75,
}  # fmt: skip
_VELOCITY = {"X": 116, "x": 98, "o": 74, "g": 44}

_STRAIGHT_44 = ("sustain", "quarters", "halves", "arp")
_WALTZ_COMP = ("oompah", "waltz_arp", "sustain")
_SIX8_COMP = ("six8_arp", "six8_strum", "sustain")

GENRES: dict[str, GenreSpec] = {}


def _genre(spec: GenreSpec) -> None:
    GENRES[spec.name] = spec


_genre(
    GenreSpec(
        "pop",
        (90, 126),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x.......x.x.....", "S": "....x.......x...", "CH": "x.o.x.o.x.o.x.o."},
                    {"K": "x......xx.......", "CP": "....x.......x...", "CH": "xoxoxoxoxoxoxoxo"},
                ),
                ("sustain", "quarters", "arp", "pop_push"),
                ("pop", "root_eighths"),
            ),
            "6/8": MeterStyle(
                ({"K": "x...........", "S": "......x.....", "CH": "x.x.x.x.x.x."},), _SIX8_COMP, ("six8",)
            ),
        },
        ("major", "major", "minor"),
        (0, 4, 24, 25, 5),
        (33, 38, 34),
        (80, 73, 4, 11, 81),
        (89, 88, 48),
        0.5,
        meter_weights=(0.85, 0.15),
        energy=0.6,
    )
)
_genre(
    GenreSpec(
        "rock",
        (100, 152),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x.....x.x.......", "S": "....X.......X...", "CH": "x.x.x.x.x.x.x.x."},
                    {"K": "x.x.....x.x.....", "S": "....X.......X...", "RD": "x.x.x.x.x.x.x.x."},
                ),
                ("eighths", "halves"),
                ("root_eighths", "pop"),
            )
        },
        ("major", "minor", "mixolydian"),
        (29, 30, 27),
        (34, 33),
        (29, 30, 27),
        (16,),
        0.2,
        chord_kind="power",
        energy=0.75,
    )
)
_genre(
    GenreSpec(
        "metal",
        (140, 196),
        {
            "4/4": MeterStyle(
                (
                    {"K": "xxxxxxxxxxxxxxxx", "S": "....X.......X...", "RD": "x...x...x...x..."},
                    {"K": "x.x.x.x.x.x.x.x.", "S": "....X.......X...", "CH": "x.x.x.x.x.x.x.x."},
                ),
                ("eighths",),
                ("root_eighths",),
            )
        },
        ("minor", "minor", "dorian"),
        (30,),
        (34, 33),
        (30, 81, 29),
        (),
        0.0,
        chord_kind="power",
        energy=0.95,
        vocal_prob=0.6,
        descriptors=("heavy", "double kick"),
    )
)
_genre(
    GenreSpec(
        "punk",
        (160, 200),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x...x...x...x...", "S": "..x...x...x...x.", "CH": "x.x.x.x.x.x.x.x."},
                    {"K": "x.....x.x.......", "S": "....X.......X...", "CR": "x...x...x...x..."},
                ),
                ("eighths",),
                ("root_eighths",),
            )
        },
        ("major", "minor"),
        (29, 30),
        (34,),
        (29, 30),
        (),
        0.0,
        chord_kind="power",
        energy=0.9,
        descriptors=("fast", "raw"),
    )
)
_genre(
    GenreSpec(
        "hip hop",
        (80, 98),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x......x..x.....", "S": "....X.......X...", "CH": "x.x.x.x.x.x.x.xo"},
                    {"K": "x.....x...x..x..", "S": "....X.......X..g", "CH": "x.x.x.x.x.x.x.x."},
                ),
                ("sustain", "halves", "stabs"),
                ("pop", "sustain"),
            )
        },
        ("minor", "dorian"),
        (4, 0, 11, 48),
        (38, 33, 39),
        (73, 4, 11, 80),
        (89, 90),
        0.4,
        swing_frac=0.58,
        swing_unit=16,
        chord_kind="seventh",
        energy=0.55,
        descriptors=("boom bap", "rap"),
        dense_syllables=True,
    )
)
_genre(
    GenreSpec(
        "lo-fi",
        (70, 90),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x.......x.x.....", "S": "....x.......x...", "CH": "x.o.x.o.x.o.x.oo"},
                    {"K": "x......x..x.....", "RS": "....x.......x...", "SH": "x.o.x.o.x.o.x.o."},
                ),
                ("sustain", "halves", "arp"),
                ("sustain", "pop"),
            )
        },
        ("major", "minor", "dorian"),
        (4, 0, 5, 11),
        (33, 32),
        (11, 73, 4, 26),
        (89, 88, 94),
        0.6,
        swing_frac=0.6,
        swing_unit=16,
        chord_kind="seventh",
        energy=0.25,
        vocal_prob=0.35,
        descriptors=("chill", "lo-fi beats", "jazzy"),
    )
)
_genre(
    GenreSpec(
        "r&b",
        (64, 96),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x......x..x.....", "S": "....x.......x...", "CH": "x.xxx.x.x.xxx.x."},
                    {"K": "x.........x..x..", "CP": "....x.......x...", "CH": "x.x.x.x.x.x.x.x."},
                ),
                ("sustain", "halves", "stabs"),
                ("pop", "sustain"),
            ),
            "6/8": MeterStyle(
                ({"K": "x.....x.....", "S": "......x.....", "CH": "x.x.x.x.x.x."},), _SIX8_COMP, ("six8",)
            ),
        },
        ("minor", "major", "dorian"),
        (4, 5, 0, 89),
        (38, 33, 35),
        (4, 73, 66),
        (89, 88, 91),
        0.6,
        swing_frac=0.56,
        swing_unit=16,
        chord_kind="seventh",
        energy=0.4,
        meter_weights=(0.8, 0.2),
        descriptors=("smooth", "soulful"),
        dense_syllables=True,
    )
)
_genre(
    GenreSpec(
        "house",
        (118, 128),
        {
            "4/4": MeterStyle(
                (
                    {
                        "K": "X...X...X...X...",
                        "CP": "....x.......x...",
                        "OH": "..x...x...x...x.",
                        "CH": "o.o.o.o.o.o.o.o.",
                    },
                    {
                        "K": "X...X...X...X...",
                        "CP": "....x.......x...",
                        "CH": "xoxoxoxoxoxoxoxo",
                        "SH": "..o...o...o...o.",
                    },
                ),
                ("offbeat", "sustain", "stabs"),
                ("offbeat", "octave"),
            )
        },
        ("minor", "major", "dorian"),
        (81, 89, 90, 4, 0),
        (38, 39, 87),
        (81, 80, 4),
        (89, 90, 95),
        0.5,
        chord_kind="seventh",
        energy=0.8,
        vocal_prob=0.55,
        crash_on_sections=True,
        descriptors=("four on the floor", "dance", "club"),
    )
)
_genre(
    GenreSpec(
        "disco",
        (110, 126),
        {
            "4/4": MeterStyle(
                (
                    {
                        "K": "X...X...X...X...",
                        "S": "....x.......x...",
                        "OH": "..x...x...x...x.",
                        "CH": "x...x...x...x...",
                    },
                ),
                ("offbeat", "funk16", "quarters"),
                ("octave",),
            )
        },
        ("major", "minor", "dorian"),
        (27, 4, 48, 61),
        (33, 36, 38),
        (61, 48, 81, 56),
        (48, 50),
        0.5,
        chord_kind="seventh",
        energy=0.85,
        descriptors=("groovy", "retro", "70s"),
    )
)
_genre(
    GenreSpec(
        "drum and bass",
        (166, 178),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x.........x.....", "S": "....X.......X...", "CH": "x.x.x.x.x.x.x.x."},
                    {"K": "x.........xx....", "S": "....X..g.g..X...", "RD": "x.x.x.x.x.x.x.x."},
                ),
                ("sustain", "halves"),
                ("sub",),
            )
        },
        ("minor", "dorian"),
        (89, 90, 81, 4),
        (38, 39, 87),
        (81, 80, 4),
        (89, 94, 95),
        0.6,
        chord_kind="seventh",
        energy=0.9,
        vocal_prob=0.45,
        descriptors=("liquid", "breakbeat", "dnb"),
    )
)
_genre(
    GenreSpec(
        "synthwave",
        (84, 118),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x.......x.......", "S": "....X.......X...", "CH": "x.x.x.x.x.x.x.x."},
                    {"K": "x.......x.x.....", "S": "....X.......X...", "CH": "xxxxxxxxxxxxxxxx"},
                ),
                ("arp", "sustain", "eighths"),
                ("root_eighths", "octave"),
            )
        },
        ("minor", "major", "lydian"),
        (81, 90, 80, 5),
        (38, 39),
        (81, 80, 90),
        (89, 90, 95, 88),
        0.8,
        energy=0.65,
        descriptors=("80s", "retro", "neon"),
    )
)
_genre(
    GenreSpec(
        "funk",
        (92, 118),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x..x..x...x..x..", "S": "....X..g.g..X..g", "CH": "xoxoxoxoxoxoxoxo"},
                    {"K": "x.x...x...x..x..", "S": "....X.g.....X.g.", "CH": "xoxoxoxoxoxoxoxo"},
                ),
                ("funk16", "stabs"),
                ("funk",),
            )
        },
        ("dorian", "mixolydian", "minor"),
        (28, 27, 4, 16),
        (36, 33, 37),
        (61, 62, 65, 16),
        (61,),
        0.3,
        chord_kind="seventh",
        energy=0.8,
        descriptors=("groovy", "tight", "slap"),
        dense_syllables=True,
    )
)
_genre(
    GenreSpec(
        "reggae",
        (68, 92),
        {
            "4/4": MeterStyle(
                (
                    {"K": "........x.......", "RS": "........x.......", "CH": "x.o.x.o.x.o.x.o."},
                    {"K": "x.......x.......", "RS": "....x.......x...", "CH": "x.x.x.x.x.x.x.x."},
                ),
                ("skank", "offbeat"),
                ("one_drop",),
            )
        },
        ("major", "minor"),
        (16, 27, 17),
        (33, 32),
        (56, 73, 16),
        (),
        0.0,
        swing_frac=0.56,
        swing_unit=16,
        energy=0.45,
        fill_prob=0.3,
        descriptors=("one drop", "roots", "laid back"),
    )
)
_genre(
    GenreSpec(
        "jazz",
        (96, 176),
        {
            "4/4": MeterStyle(
                (
                    {"RD": "x...x.x.x...x.x.", "PH": "....x.......x...", "K": "g.......g......."},
                    {"RD": "x...x.x.x...x.x.", "PH": "....x.......x...", "S": "......g.......g."},
                ),
                ("charleston", "quarters"),
                ("walking",),
            ),
            "3/4": MeterStyle(
                ({"RD": "x...x.x.x.x.", "PH": "....x...x..."},), ("oompah", "sustain"), ("walking",)
            ),
        },
        ("major", "dorian", "minor"),
        (0, 26, 4),
        (32,),
        (65, 66, 56, 11, 57),
        (),
        0.0,
        chord_kind="seventh",
        chords_per_bar=2,
        swing_frac=0.66,
        swing_unit=8,
        vocal_prob=0.5,
        energy=0.5,
        crash_on_sections=False,
        fill_prob=0.2,
        raise_leading_tone_prob=0.8,
        meter_weights=(0.85, 0.15),
        descriptors=("swing", "bebop", "acoustic"),
    )
)
_genre(
    GenreSpec(
        "blues",
        (66, 120),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x.......x.......", "S": "....x.......x...", "RD": "x.x.x.x.x.x.x.x."},
                    {"K": "x.......x.......", "S": "....x.......x...", "CH": "x.x.x.x.x.x.x.x."},
                ),
                ("charleston", "quarters", "shuffle_comp"),
                ("walking", "boogie"),
            )
        },
        ("mixolydian",),
        (0, 16, 27, 4),
        (33, 32),
        (22, 27, 65, 29),
        (),
        0.0,
        chord_kind="dominant",
        swing_frac=0.66,
        swing_unit=8,
        twelve_bar=True,
        energy=0.5,
        crash_on_sections=False,
        descriptors=("shuffle", "12-bar", "soulful"),
    )
)
_genre(
    GenreSpec(
        "country",
        (88, 132),
        {
            "4/4": MeterStyle(
                (
                    {"K": "x.......x.......", "S": "....x.......x...", "CH": "x.x.x.x.x.x.x.x."},
                    {"K": "x.......x.......", "RS": "....x.......x...", "SH": "xoxoxoxoxoxoxoxo"},
                ),
                ("eighths", "quarters", "strum"),
                ("country", "pop"),
            ),
            "3/4": MeterStyle(
                ({"K": "x...........", "S": "....x...x...", "CH": "x.x.x.x.x.x."},), _WALTZ_COMP, ("waltz",)
            ),
        },
        ("major", "major", "mixolydian"),
        (25, 24, 27),
        (33, 32),
        (40, 22, 105, 27),
        (48,),
        0.2,
        meter_weights=(0.75, 0.25),
        energy=0.55,
        descriptors=("twangy", "americana", "nashville"),
    )
)
_genre(
    GenreSpec(
        "bossa nova",
        (116, 146),
        {
            "4/4": MeterStyle(
                ({"K": "x..xx..xx..xx..x", "RS": "x..x..x...x..x..", "SH": "xoooxoooxoooxooo"},),
                ("bossa",),
                ("bossa",),
            )
        },
        ("major", "minor", "dorian"),
        (24,),
        (32, 33),
        (73, 65, 0, 71),
        (48,),
        0.2,
        chord_kind="seventh",
        energy=0.4,
        crash_on_sections=False,
        fill_prob=0.0,
        raise_leading_tone_prob=0.6,
        descriptors=("brazilian", "latin", "laid back"),
    )
)
_genre(
    GenreSpec(
        "waltz",
        (84, 132),
        {
            "3/4": MeterStyle(
                (
                    {"K": "x...........", "S": "....o...o...", "CH": "x...x...x..."},
                    {"K": "x...........", "RS": "....o...o...", "TB": "x...x...x..."},
                ),
                _WALTZ_COMP,
                ("waltz",),
            )
        },
        ("major", "minor"),
        (21, 0, 48, 46),
        (32, 58),
        (40, 73, 21, 68),
        (48, 49),
        0.4,
        energy=0.4,
        crash_on_sections=False,
        fill_prob=0.2,
        raise_leading_tone_prob=0.7,
        descriptors=("three-four time", "ballroom", "classical"),
    )
)
_genre(
    GenreSpec(
        "folk",
        (72, 120),
        {
            "6/8": MeterStyle(
                (
                    {"K": "x...........", "RS": "......x.....", "SH": "x.x.x.x.x.x."},
                    {"K": "x.....x.....", "TB": "..x.x...x.x."},
                ),
                _SIX8_COMP,
                ("six8",),
            ),
            "4/4": MeterStyle(
                ({"K": "x.......x.......", "RS": "....x.......x...", "SH": "x.x.x.x.x.x.x.x."},),
                ("strum", "arp"),
                ("pop",),
            ),
        },
        ("major", "minor", "dorian", "mixolydian"),
        (25, 24, 105, 46),
        (32, 33),
        (73, 40, 22, 75, 71),
        (48, 42),
        0.3,
        meter_weights=(0.6, 0.4),
        energy=0.35,
        crash_on_sections=False,
        fill_prob=0.2,
        descriptors=("acoustic", "singer-songwriter", "fingerpicked"),
    )
)
_genre(
    GenreSpec(
        "soul",
        (60, 100),
        {
            "4/4": MeterStyle(
                ({"K": "x......x..x.....", "S": "....x.......x...", "CH": "x.x.x.x.x.x.x.x."},),
                ("quarters", "sustain", "stabs"),
                ("pop",),
            ),
            "6/8": MeterStyle(
                ({"K": "x.....x.....", "S": "......X.....", "CH": "x.x.x.x.x.x."},), _SIX8_COMP, ("six8",)
            ),
        },
        ("major", "minor", "dorian"),
        (16, 0, 4, 19),
        (33, 32),
        (66, 65, 56, 61),
        (48, 61, 52),
        0.5,
        chord_kind="seventh",
        meter_weights=(0.6, 0.4),
        energy=0.5,
        descriptors=("gospel", "motown", "warm"),
    )
)
_genre(
    GenreSpec(
        "ambient",
        (56, 84),
        {
            "4/4": MeterStyle((), ("sustain", "arp"), ("sustain",)),
            "3/4": MeterStyle((), ("sustain", "waltz_arp"), ("sustain",)),
        },
        ("major", "minor", "lydian", "dorian"),
        (48, 89, 52, 88, 92, 94),
        (42, 48, 89),
        (0, 46, 68, 71, 11, 8),
        (89, 91, 92, 94, 95),
        0.9,
        vocal_prob=0.2,
        energy=0.1,
        crash_on_sections=False,
        fill_prob=0.0,
        meter_weights=(0.8, 0.2),
        descriptors=("atmospheric", "drone", "spacious"),
    )
)

# Short, human names for every GM program that a pool above uses (labels["instruments"] uses these).
PROGRAM_NAMES: dict[int, str] = {
    0: "piano", 4: "electric piano", 5: "fm electric piano", 8: "celesta", 11: "vibraphone", 16: "organ",
    17: "percussive organ", 19: "church organ", 21: "accordion", 22: "harmonica", 24: "nylon guitar",
    25: "acoustic guitar", 26: "jazz guitar", 27: "clean electric guitar", 28: "muted guitar",
    29: "overdriven guitar", 30: "distorted guitar", 32: "upright bass", 33: "electric bass",
    34: "picked bass", 35: "fretless bass", 36: "slap bass", 37: "slap bass 2", 38: "synth bass",
    39: "analog synth bass", 40: "violin", 42: "cello", 46: "harp", 48: "strings", 49: "slow strings",
    50: "synth strings", 52: "choir", 56: "trumpet", 57: "trombone", 58: "tuba", 61: "brass section",
    62: "synth brass", 65: "alto sax", 66: "tenor sax", 68: "oboe", 71: "clarinet", 73: "flute",
    75: "pan flute", 80: "square lead", 81: "saw lead", 87: "bass lead", 88: "new age pad", 89: "warm pad",
    90: "polysynth pad", 91: "choir pad", 92: "bowed pad", 94: "halo pad", 95: "sweep pad", 105: "banjo",
}  # fmt: skip

_MODE_PROGRESSIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 0, 4), (1, 4, 0, 0), (0, 2, 3, 4),
              (3, 4, 0, 5), (0, 3, 4, 3), (0, 5, 1, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4), (0, 2, 6, 3),
              (0, 0, 5, 6), (5, 6, 0, 0)),
    "dorian": ((0, 3, 0, 3), (0, 6, 3, 0), (0, 1, 0, 1), (0, 3, 6, 0), (0, 2, 3, 0)),
    "mixolydian": ((0, 6, 3, 0), (0, 3, 6, 3), (0, 6, 0, 3), (0, 4, 6, 3)),
    "lydian": ((0, 1, 0, 1), (0, 1, 4, 0), (0, 6, 1, 0), (0, 1, 5, 4)),
}  # fmt: skip
_JAZZ_PROGRESSIONS = {
    "major": ((1, 4, 0, 0), (0, 5, 1, 4), (2, 5, 1, 4)),
    "minor": ((1, 4, 0, 0), (0, 3, 1, 4)),
}
_TWELVE_BAR = (0, 0, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4)

# Form: sections cycle through one of these; lengths are in "units" of 1, 2 or 4 bars (see _plan_sections).
_FORMS = (
    ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
    ("verse", "pre-chorus", "chorus", "verse", "pre-chorus", "chorus", "bridge", "chorus"),
    ("intro", "verse", "verse", "chorus", "bridge", "chorus", "outro"),
    ("chorus", "verse", "chorus", "bridge", "chorus", "outro"),
    ("intro", "chorus", "verse", "chorus", "inst", "chorus", "outro"),
    ("verse", "chorus", "inst", "verse", "chorus", "outro"),
)
_SECTION_UNITS = {"intro": 1, "verse": 2, "pre-chorus": 1, "chorus": 2, "bridge": 1, "inst": 1, "outro": 1}
_UNSUNG = frozenset({"intro", "outro", "inst"})

_MOODS = {  # (mode family, energy level) -> mood words; the first is the label, the rest are tag synonyms
    ("major", 0): ("calm", "peaceful", "serene", "gentle", "dreamy"),
    ("major", 1): ("warm", "uplifting", "hopeful", "sunny", "feel-good"),
    ("major", 2): ("happy", "energetic", "joyful", "bright", "upbeat"),
    ("minor", 0): ("melancholic", "sad", "wistful", "moody", "introspective"),
    ("minor", 1): ("nostalgic", "bittersweet", "emotional", "reflective", "soulful"),
    ("minor", 2): ("dark", "intense", "driving", "aggressive", "powerful"),
}


# ----------------------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class _Grid:
    meter: Meter
    beat_s: float
    swing_frac: float
    swing_unit: int

    @property
    def bar_s(self) -> float:
        return self.beat_s * self.meter.beats_per_bar

    def time_of(self, step: float) -> float:
        """Seconds at a (possibly fractional) sixteenth-step index counted from the song start."""
        spb = self.meter.steps_per_beat
        beat, within = divmod(step, spb)
        x = within / spb  # position inside the beat, [0, 1)
        r = self.swing_frac
        if r != 0.5 and not self.meter.is_compound:
            pairs = 1 if self.swing_unit == 8 else 2  # swung pairs per beat
            pair, y = divmod(x * pairs, 1.0)
            y = y * 2 * r if y < 0.5 else r + (y - 0.5) * 2 * (1 - r)
            x = (pair + y) / pairs
        return (beat + x) * self.beat_s


@dataclass
class _Section:
    name: str
    start_bar: int
    num_bars: int


@dataclass
class _ChordEvent:
    start_step: int
    end_step: int
    chord: Chord


@dataclass
class _Phrase:
    section: str
    lyric: lyrics_gen.LyricLine | None
    onsets: list[int]  # absolute steps
    ends: list[float]  # absolute (fractional) steps
    pitches: list[int]


@dataclass
class _Plan:
    seed: int
    genre: GenreSpec
    meter: Meter
    style: MeterStyle
    grid: _Grid
    bpm: int
    tonic_pc: int
    mode: str
    num_bars: int
    duration_s: float
    sections: list[_Section]
    chords: list[_ChordEvent]
    has_vocals: bool
    voice: str | None
    theme: str | None
    programs: dict[str, int] = field(default_factory=dict)
    comp_style: str = ""
    bass_style: str = ""
    groove_index: int = -1


def _stream(seed: int, name: str) -> random.Random:
    """An independent RNG per concern, so e.g. the lyrics do not shift when the drum code changes."""
    return random.Random(f"songflow-synth/{seed}/{name}")


# ----------------------------------------------------------------------------------------------------
# Planning: genre, tempo, key, form, harmony


def _plan(seed: int, duration_s: float, genre: str | None, vocals: bool | None) -> _Plan:
    rng = _stream(seed, "plan")
    if genre is None:
        genre = rng.choice(sorted(GENRES))
    if genre not in GENRES:
        raise ValueError(f"unknown genre {genre!r}; valid: {sorted(GENRES)}")
    spec = GENRES[genre]
    meter_names = list(spec.styles)
    weights = list(spec.meter_weights) or [1.0] * len(meter_names)
    meter_name = rng.choices(meter_names, weights=weights)[0]
    meter = METERS[meter_name]
    style = spec.styles[meter_name]
    lo, hi = spec.bpm_range
    if meter.is_compound:  # genre ranges are quarter-note tempi; a 6/8 beat is a dotted quarter
        lo, hi = max(40, round(lo / 1.5)), max(44, round(hi / 1.5))
    bpm = rng.randint(lo, hi)
    swing_frac = spec.swing_frac if not meter.is_compound else 0.5
    if swing_frac != 0.5:
        swing_frac = round(min(0.7, max(0.52, swing_frac + rng.uniform(-0.03, 0.03))), 3)
    grid = _Grid(meter, 60.0 / bpm, swing_frac, spec.swing_unit)
    mode = rng.choice(spec.modes)
    tonic_pc = rng.randrange(12)
    num_bars = max(1, math.ceil(duration_s / grid.bar_s - 1e-9))

    has_vocals = rng.random() < spec.vocal_prob if vocals is None else bool(vocals)
    voice = rng.choice(("female", "male")) if has_vocals else None
    theme = rng.choice(lyrics_gen.themes()) if has_vocals else None
    sections = _plan_sections(rng, num_bars, grid.bar_s, has_vocals)
    chords = _plan_harmony(rng, spec, meter, tonic_pc, mode, sections)

    plan = _Plan(seed, spec, meter, style, grid, bpm, tonic_pc, mode, num_bars, duration_s, sections, chords,
                 has_vocals, voice, theme)  # fmt: skip
    plan.programs["chords"] = rng.choice(spec.chord_programs)
    plan.programs["bass"] = rng.choice(spec.bass_programs)
    if spec.pad_programs and rng.random() < spec.pad_prob:
        plan.programs["pad"] = rng.choice(spec.pad_programs)
    if not has_vocals:
        plan.programs["lead"] = rng.choice(spec.lead_programs)
    plan.comp_style = rng.choice(style.comp_styles)
    plan.bass_style = rng.choice(style.bass_styles)
    plan.groove_index = rng.randrange(len(style.grooves)) if style.grooves else -1
    return plan


def _plan_sections(rng: random.Random, num_bars: int, bar_s: float, has_vocals: bool) -> list[_Section]:
    """Cut ``num_bars`` into named sections that follow a song form, entered at a random point."""
    unit = 4 if num_bars >= 20 else 2 if num_bars >= 6 else 1
    form = rng.choice(_FORMS)
    index = 0 if rng.random() < 0.5 else rng.randrange(len(form) - 1)
    sections: list[_Section] = []
    bar = 0
    while bar < num_bars:
        name = form[index % len(form)]
        index += 1
        if name == "outro" and num_bars - bar > 2 * unit:  # an outro only at the very end
            continue
        if sections and name == "intro":
            continue
        length = min(_SECTION_UNITS[name] * unit, num_bars - bar)
        sections.append(_Section(name, bar, length))
        bar += length
    if has_vocals and all(s.name in _UNSUNG for s in sections):
        longest = max(sections, key=lambda s: s.num_bars)
        longest.name = "verse"
    return sections


def _plan_harmony(
    rng: random.Random, spec: GenreSpec, meter: Meter, tonic_pc: int, mode: str, sections: list[_Section]
) -> list[_ChordEvent]:
    """One progression per section name, cycled from each section's first bar (repeats get equal chords)."""
    kind = "seventh" if spec.chord_kind == "dominant" else spec.chord_kind
    raise_lt = mode == "minor" and rng.random() < spec.raise_leading_tone_prob
    per_bar = spec.chords_per_bar if meter.beats_per_bar == 4 else 1
    pool = _MODE_PROGRESSIONS[mode]
    if spec.chords_per_bar == 2 and mode in _JAZZ_PROGRESSIONS:
        pool = pool + _JAZZ_PROGRESSIONS[mode] * 2
    progressions: dict[str, tuple[int, ...]] = {}
    events: list[_ChordEvent] = []
    for sec in sections:
        if spec.twelve_bar:
            degrees = _TWELVE_BAR
        else:
            if sec.name not in progressions:
                progressions[sec.name] = rng.choice(pool)
            degrees = progressions[sec.name]
        slots = sec.num_bars * per_bar
        slot_steps = meter.steps_per_bar // per_bar
        for i in range(slots):
            degree = degrees[i % len(degrees)]
            chord = diatonic_chord(tonic_pc, mode, degree, kind, raise_leading_tone=raise_lt)
            if spec.chord_kind == "dominant":
                chord = Chord(chord.root_pc, (4, 7, 10), degree, tonic_pc)
            start = sec.start_bar * meter.steps_per_bar + i * slot_steps
            events.append(_ChordEvent(start, start + slot_steps, chord))
    return events


def _chord_at(plan: _Plan, step: float) -> Chord:
    # events are contiguous and equal-length within a song
    size = plan.chords[0].end_step - plan.chords[0].start_step
    return plan.chords[min(len(plan.chords) - 1, max(0, int(step // size)))].chord


def _section_at_bar(plan: _Plan, bar: int) -> _Section:
    for sec in plan.sections:
        if sec.start_bar <= bar < sec.start_bar + sec.num_bars:
            return sec
    return plan.sections[-1]


# ----------------------------------------------------------------------------------------------------
# Backing parts. Each returns a list of (start_s, end_s, pitch, velocity).

_Note = tuple[float, float, int, int]


def _drums(plan: _Plan) -> list[_Note]:
    if plan.groove_index < 0:
        return []
    rng = _stream(plan.seed, "drums")
    grooves = plan.style.grooves
    main = grooves[plan.groove_index]
    alt = grooves[(plan.groove_index + 1) % len(grooves)]
    spb = plan.meter.steps_per_bar
    grid = plan.grid
    section_starts = {s.start_bar for s in plan.sections}
    notes: list[_Note] = []

    def hit(step: int, key: str, velocity: int) -> None:
        t = grid.time_of(step)
        v = max(1, min(127, velocity + rng.randint(-7, 7)))
        notes.append((t, t + min(0.12, grid.beat_s / 2), DRUM_KEYS[key], v))

    for bar in range(plan.num_bars):
        sec = _section_at_bar(plan, bar)
        groove = (
            alt
            if (sec.name in ("chorus", "bridge") and len(grooves) > 1 and plan.groove_index == 0)
            else main
        )
        boost = 8 if sec.name == "chorus" else -10 if sec.name in ("intro", "outro") else 0
        if sec.name == "intro" and sec.num_bars > 1 and bar < sec.start_bar + sec.num_bars - 1:
            groove = {k: v for k, v in groove.items() if k in ("CH", "RD", "SH", "PH", "TB")} or groove
        is_fill = (
            bar + 1 in section_starts and bar + 1 < plan.num_bars and rng.random() < plan.genre.fill_prob
        )
        fill_from = spb - plan.meter.steps_per_beat * (2 if rng.random() < 0.3 else 1) if is_fill else spb
        base = bar * spb
        for key, pattern in groove.items():
            for s, ch in enumerate(pattern):
                if ch == "." or (s >= fill_from and key != "K"):
                    continue
                hit(base + s, key, _VELOCITY[ch] + boost)
        if is_fill:
            toms = ("S", "HT", "MT", "LT")  # a descending fill
            fill_steps = list(range(fill_from, spb, 1 if grid.beat_s > 0.4 else 2))
            for j, s in enumerate(fill_steps):
                hit(base + s, toms[j * len(toms) // len(fill_steps)], 92)
        if bar in section_starts and bar > 0 and plan.genre.crash_on_sections:
            hit(base, "CR", 112)
            if "K" in groove and groove["K"][0] == ".":
                hit(base, "K", 100)
    return notes


def _bass_pitch(chord: Chord, role: str, low: int = 33) -> int:
    root = low + (chord.root_pc - low) % 12
    if role == "R":
        return root
    if role == "8":
        return root + 12
    if role == "5":
        return root + (7 if 7 in chord.intervals or len(chord.intervals) < 2 else chord.intervals[1])
    if role == "3":
        return root + (chord.intervals[0] if chord.intervals[0] != 7 else 12)
    if role == "7":
        return root + (chord.intervals[2] if len(chord.intervals) > 2 else 12)
    raise ValueError(role)


# (step in 4/4 bar, length in steps, role); roles: R root, 5 fifth, 3 third, 7 seventh, 8 octave
_BASS_PATTERNS: dict[str, tuple[tuple[tuple[int, int, str], ...], ...]] = {
    "pop": (((0, 4, "R"), (4, 4, "R"), (8, 4, "5"), (12, 4, "R")),
            ((0, 6, "R"), (6, 2, "R"), (8, 6, "5"), (14, 2, "8")),
            ((0, 3, "R"), (3, 3, "R"), (6, 2, "8"), (8, 4, "R"), (12, 2, "5"), (14, 2, "R"))),
    "root_eighths": (tuple((s, 2, "R") for s in range(0, 16, 2)),),
    "octave": (tuple((s, 2, "R" if s % 4 == 0 else "8") for s in range(0, 16, 2)),),
    "offbeat": (((2, 2, "R"), (6, 2, "R"), (10, 2, "R"), (14, 2, "8")),),
    "one_drop": (((4, 2, "R"), (6, 2, "R"), (8, 3, "5"), (12, 2, "3"), (14, 2, "R")),
                 ((2, 2, "R"), (4, 4, "R"), (10, 2, "5"), (12, 4, "8"))),
    "bossa": (((0, 6, "R"), (6, 2, "5"), (8, 6, "5"), (14, 2, "R")),),
    "funk": (((0, 2, "R"), (3, 1, "8"), (6, 1, "R"), (7, 1, "7"), (10, 2, "R"), (13, 1, "8"), (14, 2, "5")),
             ((0, 3, "R"), (3, 1, "R"), (6, 2, "8"), (8, 1, "R"), (11, 1, "5"), (12, 2, "7"))),
    "country": (((0, 4, "R"), (4, 4, "5"), (8, 4, "R"), (12, 4, "5")),),
    "boogie": (((0, 2, "R"), (2, 2, "3"), (4, 2, "5"), (6, 2, "8"), (8, 2, "7"), (10, 2, "5"), (12, 2, "3"),
                (14, 2, "R")),),
    "sub": (((0, 8, "R"), (10, 6, "R")),),
}  # fmt: skip


def _bass(plan: _Plan) -> list[_Note]:
    rng = _stream(plan.seed, "bass")
    grid, meter, style = plan.grid, plan.meter, plan.bass_style
    spb = meter.steps_per_bar
    notes: list[_Note] = []

    def add(step: float, length: float, pitch: int, velocity: int, legato: float = 0.92) -> None:
        t0 = grid.time_of(step)
        t1 = grid.time_of(step + length)
        j = rng.uniform(-MAX_JITTER_S, MAX_JITTER_S) / 2
        notes.append((max(0.0, t0 + j), t0 + j + (t1 - t0) * legato, pitch, velocity + rng.randint(-6, 6)))

    pattern = None
    if style in _BASS_PATTERNS:
        pattern = rng.choice(_BASS_PATTERNS[style])
    for bar in range(plan.num_bars):
        base = bar * spb
        if style == "sustain":
            for ev in plan.chords:
                if base <= ev.start_step < base + spb:
                    add(ev.start_step, ev.end_step - ev.start_step, _bass_pitch(ev.chord, "R"), 80, 0.98)
        elif style == "walking":
            for beat in range(meter.beats_per_bar):
                step = base + beat * meter.steps_per_beat
                chord = _chord_at(plan, step)
                next_chord = _chord_at(plan, step + meter.steps_per_beat)
                if beat and next_chord != chord:  # chromatic approach into the next chord's root
                    pitch = _bass_pitch(next_chord, "R") + rng.choice((-1, 1))
                else:
                    pitch = _bass_pitch(chord, rng.choice(("3", "5", "8", "7")) if beat else "R")
                add(step, meter.steps_per_beat, pitch, 90)
        elif style == "waltz":
            chord = _chord_at(plan, base)
            add(base, 4, _bass_pitch(chord, "R" if bar % 2 == 0 else "5"), 88)
        elif style == "six8":
            chord = _chord_at(plan, base)
            add(base, 5, _bass_pitch(chord, "R"), 88)
            add(base + 6, 5, _bass_pitch(_chord_at(plan, base + 6), "5"), 78)
        else:
            assert pattern is not None
            for s, length, role in pattern:
                if s >= spb:
                    continue
                add(base + s, min(length, spb - s), _bass_pitch(_chord_at(plan, base + s), role), 94)
    return notes


# comping rhythms over a 4/4 bar: (step, length); 3/4 and 6/8 styles have their own entries
_COMP_PATTERNS: dict[str, tuple[tuple[int, int], ...]] = {
    "quarters": ((0, 3), (4, 3), (8, 3), (12, 3)),
    "halves": ((0, 7), (8, 7)),
    "eighths": tuple((s, 2) for s in range(0, 16, 2)),
    "offbeat": ((2, 1), (6, 1), (10, 1), (14, 1)),
    "skank": ((4, 1), (12, 1)),
    "charleston": ((0, 3), (6, 2)),
    "funk16": ((0, 1), (3, 1), (6, 1), (10, 1), (12, 1), (15, 1)),
    "stabs": ((0, 2), (6, 2), (10, 2)),
    "bossa": ((0, 2), (3, 2), (6, 2), (10, 2), (13, 2)),
    "pop_push": ((0, 6), (6, 2), (8, 6), (14, 2)),
    "shuffle_comp": ((0, 2), (2, 2), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 2)),
    "strum": ((0, 4), (4, 2), (6, 2), (8, 4), (12, 2), (14, 2)),
    "oompah": ((4, 3), (8, 3)),
    "six8_strum": ((0, 5), (6, 3), (10, 2)),
}


def _comp(plan: _Plan) -> list[_Note]:
    rng = _stream(plan.seed, "comp")
    grid, meter, style = plan.grid, plan.meter, plan.comp_style
    spb = meter.steps_per_bar
    power = plan.genre.chord_kind == "power"
    low, high, size = (40, 64, 3) if power else (50, 74, 4 if plan.genre.chord_kind != "triad" else 3)
    notes: list[_Note] = []
    previous: list[int] | None = None
    voicings: dict[int, list[int]] = {}
    for ev in plan.chords:
        if power:
            root = low + (ev.chord.root_pc - low) % 12
            voicings[ev.start_step] = [root, root + 7, root + 12]
        else:
            previous = closest_voicing(ev.chord, previous, low, high, size)
            voicings[ev.start_step] = previous
    event_size = plan.chords[0].end_step - plan.chords[0].start_step

    def voicing_at(step: int) -> list[int]:
        return voicings[(step // event_size) * event_size]

    def add(step: float, length: float, pitches: list[int], velocity: int, stagger_s: float = 0.0) -> None:
        t0 = grid.time_of(step) + rng.uniform(-MAX_JITTER_S, MAX_JITTER_S) / 2
        t1 = grid.time_of(step + length)
        for i, p in enumerate(pitches):
            s = max(0.0, t0 + i * stagger_s)
            notes.append((s, max(s + 0.03, t1 - 0.02), p, max(1, min(127, velocity + rng.randint(-6, 6)))))

    for bar in range(plan.num_bars):
        base = bar * spb
        sec = _section_at_bar(plan, bar)
        velocity = 72 + (10 if sec.name == "chorus" else 0) - (8 if sec.name in ("intro", "outro") else 0)
        if style == "sustain":
            for ev in plan.chords:
                if base <= ev.start_step < base + spb:
                    add(ev.start_step, ev.end_step - ev.start_step, voicings[ev.start_step], velocity - 8)
        elif style in ("arp", "waltz_arp", "six8_arp"):
            stride = 2  # eighth notes
            for k, s in enumerate(range(0, spb, stride)):
                v = voicing_at(base + s)
                seq = v + [v[0] + 12] if style != "six8_arp" else [v[0], v[-1], v[0] + 12, v[-1], v[1], v[-1]]
                add(base + s, stride * 1.5, [seq[k % len(seq)]], velocity - 6)
        else:
            stagger = 0.012 if style in ("strum", "six8_strum") else 0.0
            for s, length in _COMP_PATTERNS[style]:
                if s < spb:
                    add(base + s, min(length, spb - s), voicing_at(base + s), velocity, stagger)
    return notes


def _pad(plan: _Plan) -> list[_Note]:
    notes: list[_Note] = []
    previous: list[int] | None = None
    for ev in plan.chords:
        previous = closest_voicing(ev.chord, previous, 55, 76, 3)
        t0, t1 = plan.grid.time_of(ev.start_step), plan.grid.time_of(ev.end_step)
        notes.extend((t0, t1 - 0.01, p, 54) for p in previous)
    return notes


# ----------------------------------------------------------------------------------------------------
# Melody and lyrics


def _phrase_bars(plan: _Plan) -> int:
    return min((1, 2, 4), key=lambda n: abs(n * plan.grid.bar_s - 4.2))


def _onset_unit(plan: _Plan) -> int:
    """Smallest note value, in steps, that a syllable may take: a 16th, an 8th or a quarter."""
    step_s = plan.grid.beat_s / plan.meter.steps_per_beat
    if plan.genre.dense_syllables and step_s >= 0.14:
        return 1
    if 2 * step_s >= 0.17:
        return 2
    return 4 if not plan.meter.is_compound else 2


def _metric_weight(plan: _Plan, step_in_bar: int) -> float:
    spb = plan.meter.steps_per_beat
    if step_in_bar == 0:
        return 6.0
    if step_in_bar % spb == 0:
        return 4.0
    if not plan.meter.is_compound and step_in_bar % (spb // 2) == 0:
        return 2.5
    return 1.2 if step_in_bar % 2 == 0 else 0.6


def _choose_rhythm(
    plan: _Plan,
    rng: random.Random,
    start_step: int,
    num_steps: int,
    num_notes: int,
    stresses: tuple[float, ...] | None = None,
) -> tuple[list[int], list[float]]:
    """``num_notes`` onsets inside the phrase (weighted toward strong beats), plus each note's end step.

    With ``stresses`` (one per syllable), several rhythms are drawn and the one that puts stressed syllables
    on the strongest positions (and unstressed ones off them) is kept, so the words scan.
    """
    unit = _onset_unit(plan)
    breath = max(unit, plan.meter.steps_per_beat // 2)
    spb = plan.meter.steps_per_bar
    candidates = list(range(start_step, start_step + num_steps - breath, unit))
    weights = {s: _metric_weight(plan, (s - start_step) % spb) for s in candidates}
    best: list[int] = []
    best_score = -math.inf
    for _ in range(8 if stresses else 1):
        # Efraimidis-Spirakis weighted sampling without replacement
        keyed = sorted(candidates, key=lambda s: -(rng.random() ** (1.0 / weights[s])))
        onsets = sorted(keyed[:num_notes])
        if onsets and onsets[0] != start_step and rng.random() < 0.6:
            onsets[0] = start_step  # start on the phrase's downbeat more often than not
        if not stresses:
            best = onsets
            break
        score = sum((st - 0.45) * math.log(weights[s]) for st, s in zip(stresses, onsets, strict=True))
        if score > best_score:
            best, best_score = onsets, score
    onsets = best
    ends: list[float] = []
    max_len = 2 * plan.meter.steps_per_beat
    phrase_end = start_step + num_steps - breath / 2
    for i, s in enumerate(onsets):
        nxt = onsets[i + 1] if i + 1 < len(onsets) else phrase_end
        ends.append(min(nxt, s + max_len) - (0.15 * unit if nxt - s <= max_len else 0.0))
    return onsets, ends


def _syllable_range(plan: _Plan, num_steps: int) -> tuple[int, int]:
    unit = _onset_unit(plan)
    breath = max(unit, plan.meter.steps_per_beat // 2)
    capacity = max(1, (num_steps - breath) // unit)
    usable_s = (num_steps - breath) * plan.grid.beat_s / plan.meter.steps_per_beat
    hi = min(capacity, max(2, min(int(usable_s * 3.3), 14)))
    lo = max(1, min(hi, round(hi * 0.5)))
    return lo, hi


def _vocal_range(plan: _Plan) -> tuple[int, int, int]:
    """(low, high, home): the melody's MIDI range and its tonic 'home' note, by voice."""
    if plan.voice == "male":
        home = 50 + (plan.tonic_pc - 50) % 12  # D3..C#4
    elif plan.voice == "female":
        home = 59 + (plan.tonic_pc - 59) % 12  # B3..Bb4
    else:  # instrumental lead
        home = 64 + (plan.tonic_pc - 64) % 12
    return home - 5, home + 9, home


_CONTOURS = (
    (0.0, 0.5, 1.0, 0.4),  # arch
    (0.0, 0.3, 0.6, 0.9),  # rise
    (1.0, 0.7, 0.4, 0.0),  # fall
    (0.3, 0.8, 0.2, 0.6),  # wave
    (0.5, 0.5, 0.8, 0.2),
)


def _choose_pitches(plan: _Plan, rng: random.Random, section: str, onsets: list[int]) -> list[int]:
    """Scale tones along a contour; beats take chord tones, the last note resolves to a stable chord tone."""
    low, high, home = _vocal_range(plan)
    pitches_in_range = scale_pitches(plan.tonic_pc, plan.mode, low, high)
    in_scale = scale_pitch_classes(plan.tonic_pc, plan.mode)
    home_i = pitches_in_range.index(home)
    lift = {"chorus": 2, "bridge": 1, "pre-chorus": 1}.get(section, 0)
    contour = rng.choice(_CONTOURS)
    span = rng.choice((3, 4, 5))
    spb = plan.meter.steps_per_bar
    start = onsets[0]
    length = max(1, onsets[-1] - start)
    out: list[int] = []
    cur = home_i + lift
    for n, step in enumerate(onsets):
        pos = (step - start) / length * (len(contour) - 1)
        a = int(min(len(contour) - 2, pos))
        level = contour[a] + (contour[a + 1] - contour[a]) * (pos - a)
        target = home_i + lift - 1 + round(level * span)
        chord = _chord_at(plan, step)
        chord_tones = chord.pitch_classes & in_scale
        strong = (step % spb) % plan.meter.steps_per_beat == 0 or n == len(onsets) - 1
        if strong and chord_tones:
            if n == len(onsets) - 1:  # resolve on root/third if possible
                stable = {chord.root_pc, (chord.root_pc + chord.intervals[0]) % 12} & in_scale
                chord_tones = stable or chord_tones
            candidates = [i for i, p in enumerate(pitches_in_range) if p % 12 in chord_tones]
            ref = target if not out else (target + cur) / 2
            cur = min(candidates, key=lambda i: abs(i - ref) + rng.random() * 0.9)
        else:
            direction = (target > cur) - (target < cur)
            if direction == 0:
                direction = rng.choice((-1, 0, 1))
            cur += direction * rng.choice((1, 1, 1, 2))
        cur = max(0, min(len(pitches_in_range) - 1, cur))
        out.append(pitches_in_range[cur])
    return out


def _melody(plan: _Plan) -> list[_Phrase]:
    """Phrases for every sung (or, for instrumentals, lead-played) section; choruses repeat their words."""
    rng = _stream(plan.seed, "melody")
    lyric_rng = _stream(plan.seed, "lyrics")
    spb = plan.meter.steps_per_bar
    phrase_bars = _phrase_bars(plan)
    chorus_memory: dict[int, tuple[lyrics_gen.LyricLine | None, list[int], list[float]]] = {}
    used_lines: set[str] = set()
    phrases: list[_Phrase] = []
    for sec in plan.sections:
        if sec.name in _UNSUNG and plan.has_vocals:
            continue
        if sec.name == "intro" or (sec.name == "outro" and sec.num_bars < 2):
            continue
        for k, bar in enumerate(range(sec.start_bar, sec.start_bar + sec.num_bars, phrase_bars)):
            bars = min(phrase_bars, sec.start_bar + sec.num_bars - bar)
            start, num_steps = bar * spb, bars * spb
            if bars < phrase_bars and bars * plan.grid.bar_s < 1.5:
                continue
            remembered = chorus_memory.get(k) if sec.name == "chorus" else None
            if remembered is not None and remembered[2][-1] <= num_steps:
                line, rel_onsets, rel_ends = remembered
                onsets = [start + s for s in rel_onsets]
                ends = [start + e for e in rel_ends]
                # one seed per chorus phrase: equal chords give equal pitches, new chords re-harmonise
                pitches = _choose_pitches(plan, _stream(plan.seed, f"chorus/{k}"), sec.name, onsets)
            else:
                lo, hi = _syllable_range(plan, num_steps)
                line = None
                if plan.has_vocals:
                    for _ in range(6):  # avoid repeating a line inside one song
                        line = lyrics_gen.generate_line(lyric_rng, lo, hi, theme=plan.theme)
                        if line.text not in used_lines:
                            break
                    assert line is not None
                    used_lines.add(line.text)
                    count = line.num_syllables
                else:
                    count = rng.randint(lo, hi)
                stresses = line.stresses if line is not None else None
                onsets, ends = _choose_rhythm(plan, rng, start, num_steps, count, stresses)
                prng = _stream(plan.seed, f"chorus/{k}") if sec.name == "chorus" else rng
                pitches = _choose_pitches(plan, prng, sec.name, onsets)
                if sec.name == "chorus" and k not in chorus_memory:
                    chorus_memory[k] = (line, [s - start for s in onsets], [e - start for e in ends])
            phrases.append(_Phrase(sec.name, line, onsets, ends, pitches))
    return phrases


# ----------------------------------------------------------------------------------------------------
# Assembly


def _clip(notes: list[_Note], duration_s: float) -> list[_Note]:
    out = []
    for s, e, p, v in notes:
        if s < duration_s - 0.02:
            out.append((s, min(e, duration_s), p, v))
    return out


def _instrument(pm: Any, notes: list[_Note], program: int, is_drum: bool, name: str) -> Any:
    inst = pm.Instrument(program=program, is_drum=is_drum, name=name)
    inst.notes = [
        pm.Note(velocity=int(v), pitch=int(p), start=float(s), end=float(e)) for s, e, p, v in notes
    ]
    inst.notes.sort(key=lambda n: (n.start, n.pitch))
    return inst


def compose_song(
    seed: int, duration_s: float, *, genre: str | None = None, vocals: bool | None = None
) -> Song:
    """Compose a ``duration_s``-second song from ``seed``; ``genre``/``vocals`` default to seeded choices."""
    import pretty_midi as pm

    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    plan = _plan(seed, float(duration_s), genre, vocals)
    dur = plan.duration_s

    phrases = [ph for ph in _melody(plan) if plan.grid.time_of(ph.ends[-1]) <= dur + 1e-9]
    parts: list[tuple[str, int, bool, list[_Note]]] = []
    drums = _clip(_drums(plan), dur)
    if drums:
        parts.append(("drums", 0, True, drums))
    parts.append(("chords", plan.programs["chords"], False, _clip(_comp(plan), dur)))
    parts.append(("bass", plan.programs["bass"], False, _clip(_bass(plan), dur)))
    if "pad" in plan.programs:
        parts.append(("pad", plan.programs["pad"], False, _clip(_pad(plan), dur)))
    if "lead" in plan.programs:
        lead_notes = [
            (plan.grid.time_of(s), plan.grid.time_of(e), p, 92)
            for ph in phrases
            for s, e, p in zip(ph.onsets, ph.ends, ph.pitches, strict=True)
        ]
        parts.append(("lead", plan.programs["lead"], False, _clip(lead_notes, dur)))

    midi = pm.PrettyMIDI(initial_tempo=plan.bpm * plan.meter.quarters_per_beat)
    midi.time_signature_changes.append(
        pm.TimeSignature(plan.meter.midi_numerator, plan.meter.midi_denominator, 0)
    )
    midi.key_signature_changes.append(
        pm.KeySignature(plan.tonic_pc + (12 if MODE_FAMILY[plan.mode] == "minor" else 0), 0)
    )
    for role, program, is_drum, notes in parts:
        midi.instruments.append(_instrument(pm, notes, program, is_drum, role))

    melody: list[SungNote] = []
    if plan.has_vocals:
        word_index = 0
        for ph in phrases:
            assert ph.lyric is not None and len(ph.onsets) == ph.lyric.num_syllables
            n = 0
            for word, count in zip(ph.lyric.words, ph.lyric.syllable_counts, strict=True):
                for syl in range(count):
                    melody.append(SungNote(round(plan.grid.time_of(ph.onsets[n]), 6),
                                           round(plan.grid.time_of(ph.ends[n]), 6),
                                           ph.pitches[n], word, syl, word_index))  # fmt: skip
                    n += 1
                word_index += 1
    sung_phrases = phrases if plan.has_vocals else []
    labels = _labels(plan, parts, melody, sung_phrases)
    return Song(midi=midi, melody=melody, labels=labels, duration_s=dur)


# ----------------------------------------------------------------------------------------------------
# Labels


def _r(x: float) -> float:
    return round(float(x), 4)


def _mood(plan: _Plan) -> tuple[str, tuple[str, ...]]:
    lo, hi = plan.genre.bpm_range
    tempo_pos = (plan.bpm * plan.meter.quarters_per_beat - lo) / max(1, hi - lo)
    energy = 0.6 * plan.genre.energy + 0.4 * min(1.0, max(0.0, tempo_pos))
    level = 0 if energy < 0.35 else 1 if energy < 0.62 else 2
    words = _MOODS[(MODE_FAMILY[plan.mode], level)]
    return words[0], words


def _labels(
    plan: _Plan,
    parts: list[tuple[str, int, bool, list[_Note]]],
    melody: list[SungNote],
    phrases: list[_Phrase],
) -> dict:
    """The label dict of one song: musical facts, timings, lyrics, then tags and caption."""
    dur = plan.duration_s
    grid, meter = plan.grid, plan.meter
    beats = [_r(i * grid.beat_s) for i in range(int(dur / grid.beat_s - 1e-9) + 1)]
    downbeats = beats[:: meter.beats_per_bar]
    sections = _section_labels(plan)
    chords = _chord_labels(plan)
    has_vocals = bool(melody)
    instruments, programs = _instrument_labels(parts, has_vocals)
    voice = plan.voice if has_vocals else None
    words = _word_labels(melody)

    lyrics = _lyrics_text(plan, phrases) if has_vocals else "[inst]"
    key = f"{pitch_class_name(plan.tonic_pc)} {MODE_FAMILY[plan.mode]}"
    mood, mood_words = _mood(plan)
    labels: dict[str, Any] = {
        "genre": plan.genre.name,
        "bpm": plan.bpm,
        "time_signature": meter.name,
        "key": key,
        "tonic": pitch_class_name(plan.tonic_pc),
        "mode": plan.mode,
        "mood": mood,
        "swing_frac": grid.swing_frac,
        "swing_unit": plan.genre.swing_unit if grid.swing_frac != 0.5 else None,
        "instruments": instruments,
        "programs": programs,
        "voice": voice,
        "lyric_theme": plan.theme if has_vocals else None,
        "lyrics": lyrics,
        "words": words,
        "melody": [[_r(n.start_s), _r(n.end_s), n.midi_pitch] for n in melody],
        "sections": sections,
        "chords": chords,
        "beats": beats,
        "downbeats": downbeats,
        "comp_style": plan.comp_style,
        "bass_style": plan.bass_style,
        "duration": _r(dur),
        "seed": plan.seed,
    }
    rng = _stream(plan.seed, "text")
    labels["tags"] = _tags(rng, plan, labels, mood_words)
    labels["caption"] = _caption(rng, plan, labels, mood_words)
    return labels


def _section_labels(plan: _Plan) -> list[dict]:
    """``{name, start, end}`` (seconds) of every section that starts before the end of the song."""
    dur, grid = plan.duration_s, plan.grid
    sections = []
    for sec in plan.sections:
        start = sec.start_bar * grid.bar_s
        if start < dur:
            sections.append(
                {
                    "name": sec.name,
                    "start": _r(start),
                    "end": _r(min(dur, (sec.start_bar + sec.num_bars) * grid.bar_s)),
                }
            )
    return sections


def _chord_labels(plan: _Plan) -> list[dict]:
    """``{start, end, chord, roman}`` spans (seconds); a chord repeated back to back is one span."""
    dur, grid = plan.duration_s, plan.grid
    chords: list[dict] = []
    for ev in plan.chords:
        start = grid.time_of(ev.start_step)
        if start >= dur:
            break
        end = min(dur, grid.time_of(ev.end_step))
        if chords and chords[-1]["chord"] == ev.chord.name and chords[-1]["end"] == _r(start):
            chords[-1]["end"] = _r(end)
        else:
            chords.append(
                {"start": _r(start), "end": _r(end), "chord": ev.chord.name, "roman": ev.chord.roman}
            )
    return chords


def _instrument_labels(
    parts: list[tuple[str, int, bool, list[_Note]]], has_vocals: bool
) -> tuple[list[str], dict[str, int]]:
    """(instrument names in part order, "vocals" last when sung; GM program per pitched role)."""
    instruments: list[str] = []
    programs: dict[str, int] = {}
    for role, program, is_drum, notes in parts:
        if not notes:
            continue
        name = "drums" if is_drum else PROGRAM_NAMES[program]
        if not is_drum:
            programs[role] = program
        if name not in instruments:
            instruments.append(name)
    if has_vocals:
        instruments.append("vocals")
    return instruments, programs


def _word_labels(melody: list[SungNote]) -> list[dict]:
    """``{word, start, end, notes}`` per sung word: its notes merged into one span."""
    words: list[dict] = []
    for note in melody:
        if words and words[-1]["_index"] == note.word_index:
            words[-1]["end"] = _r(note.end_s)
            words[-1]["notes"].append(note.midi_pitch)
        else:
            words.append({"word": note.word, "start": _r(note.start_s), "end": _r(note.end_s),
                          "notes": [note.midi_pitch], "_index": note.word_index})  # fmt: skip
    for w in words:
        del w["_index"]
    return words


def _lyrics_text(plan: _Plan, phrases: list[_Phrase]) -> str:
    """Structure tags on their own lines, one lyric line per phrase; unsung sections appear as bare tags."""
    by_section: dict[int, list[str]] = {}
    spb = plan.meter.steps_per_bar
    for ph in phrases:
        bar = ph.onsets[0] // spb
        sec = _section_at_bar(plan, bar)
        assert ph.lyric is not None
        by_section.setdefault(sec.start_bar, []).append(ph.lyric.text)
    blocks = []
    for sec in plan.sections:
        if sec.start_bar * plan.grid.bar_s >= plan.duration_s:
            break
        lines = by_section.get(sec.start_bar, [])
        blocks.append("\n".join([f"[{sec.name}]"] + lines))
    return "\n\n".join(blocks)


def _tags(rng: random.Random, plan: _Plan, labels: dict, mood_words: tuple[str, ...]) -> str:
    bpm = plan.bpm
    genre = plan.genre.name
    parts: list[str] = []
    parts.append(
        rng.choice((f"{bpm} BPM", f"{bpm} bpm", f"tempo {bpm}", f"{bpm} beats per minute", f"bpm {bpm}"))
    )
    if rng.random() < 0.5:
        parts.append(rng.choice((labels["key"], f"key of {labels['key']}", f"in {labels['key']}")))
    if plan.meter.name != "4/4" or rng.random() < 0.15:
        options = [plan.meter.name, f"{plan.meter.name} time"]
        if plan.meter.name == "3/4":
            options.append("waltz time")
        parts.append(rng.choice(options))
    parts.extend(rng.sample(mood_words, rng.choice((1, 1, 2))))
    if plan.genre.descriptors and rng.random() < 0.5:
        parts.append(rng.choice(plan.genre.descriptors))
    for name in labels["instruments"]:
        if name != "vocals":
            parts.append(name)
    if labels["voice"]:
        v = labels["voice"]
        parts.append(
            rng.choice((f"{v} vocal", f"{v} vocals", f"{v} singer", f"{v} voice", f"{v} lead vocals"))
        )
    else:
        parts.append(rng.choice(("instrumental", "no vocals", "instrumental track")))
    rng.shuffle(parts)
    if rng.random() < 0.7:
        parts.insert(0, genre)
    else:
        parts.insert(rng.randrange(len(parts) + 1), genre)
    return ", ".join(parts)


def _caption(rng: random.Random, plan: _Plan, labels: dict, mood_words: tuple[str, ...]) -> str:
    mood = rng.choice(mood_words)
    article = "An" if mood[0] in "aeiou" else "A"
    pitched = [n for n in labels["instruments"] if n not in ("vocals", "drums")]
    if "drums" in labels["instruments"]:
        pitched.append("drums")
    inst = pitched[0] if len(pitched) == 1 else ", ".join(pitched[:-1]) + " and " + pitched[-1]
    meter = {"3/4": " in waltz time", "6/8": " in 6/8"}.get(plan.meter.name, "")
    vocal = f" with {labels['voice']} vocals" if labels["voice"] else ", instrumental"
    theme = f" singing about {labels['lyric_theme']}" if labels["lyric_theme"] and rng.random() < 0.5 else ""
    templates = (
        f"{article} {mood} {plan.genre.name} track at {plan.bpm} BPM in {labels['key']}{meter}, "
        f"featuring {inst}{vocal}{theme}.",
        f"{plan.genre.name.capitalize()} song in {labels['key']}{meter} at {plan.bpm} BPM: {mood}, "
        f"built on {inst}{vocal}{theme}.",
        f"{article} {mood} piece of {plan.genre.name}{meter} ({plan.bpm} BPM, {labels['key']}) "
        f"played on {inst}{vocal}{theme}.",
    )
    return rng.choice(templates)
