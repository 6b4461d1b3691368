"""Pitch-class arithmetic for the synthetic composer: scales, diatonic chords, chord and Roman-numeral names.

Everything works on integers (pitch classes 0-11 and MIDI pitches); no theory library is needed. Roman
numerals are written relative to the *major* scale of the tonic (pop usage), so in A minor the chord on the
sixth degree is ``bVI`` (F), never a music21-style spelling.
"""

from __future__ import annotations

from dataclasses import dataclass

PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Interval patterns, semitones above the tonic.
SCALE_STEPS: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
}
# Which of major/minor a mode reads as; this is what the "key" label names.
MODE_FAMILY = {
    "major": "major",
    "mixolydian": "major",
    "lydian": "major",
    "minor": "minor",
    "dorian": "minor",
}

_MAJOR = SCALE_STEPS["major"]
_NUMERALS = ("I", "II", "III", "IV", "V", "VI", "VII")

ChordKind = str  # "triad" | "seventh" | "power"

# (third, fifth[, seventh]) semitones above the root -> chord-name suffix and Roman-numeral suffix
_QUALITIES: dict[tuple[int, ...], tuple[str, str, bool]] = {
    # intervals: (name suffix, roman suffix, is_minor_numeral)
    (4, 7): ("", "", False),
    (3, 7): ("m", "", True),
    (3, 6): ("dim", "°", True),
    (4, 8): ("aug", "+", False),
    (4, 7, 11): ("maj7", "maj7", False),
    (4, 7, 10): ("7", "7", False),
    (3, 7, 10): ("m7", "7", True),
    (3, 6, 10): ("m7b5", "ø7", True),
    (3, 6, 9): ("dim7", "°7", True),
    (3, 7, 11): ("mMaj7", "maj7", True),
    (4, 8, 11): ("augMaj7", "+maj7", False),
    (7,): ("5", "5", False),
}


def pitch_class_name(pitch_class: int) -> str:
    return PITCH_CLASS_NAMES[pitch_class % 12]


def scale_pitch_classes(tonic_pc: int, mode: str) -> frozenset[int]:
    """The 7 pitch classes of ``mode`` on ``tonic_pc``."""
    return frozenset((tonic_pc + step) % 12 for step in SCALE_STEPS[mode])


def scale_pitches(tonic_pc: int, mode: str, low: int, high: int) -> list[int]:
    """All MIDI pitches in ``[low, high]`` that belong to the scale, ascending."""
    pcs = scale_pitch_classes(tonic_pc, mode)
    return [p for p in range(low, high + 1) if p % 12 in pcs]


@dataclass(frozen=True)
class Chord:
    """A chord as a root pitch class plus intervals above it; ``degree`` is its 0-based scale degree."""

    root_pc: int
    intervals: tuple[int, ...]  # semitones above the root, ascending, root excluded
    degree: int
    tonic_pc: int

    @property
    def pitch_classes(self) -> frozenset[int]:
        return frozenset([self.root_pc] + [(self.root_pc + i) % 12 for i in self.intervals])

    @property
    def name(self) -> str:
        suffix = _QUALITIES.get(self.intervals, ("?", "?", False))[0]
        return pitch_class_name(self.root_pc) + suffix

    @property
    def roman(self) -> str:
        """Roman numeral relative to the tonic's major scale, e.g. ``bVII``, ``ii7``, ``V7``, ``vii°``."""
        name_suffix, roman_suffix, is_minor = _QUALITIES.get(self.intervals, ("?", "?", False))
        offset = (self.root_pc - self.tonic_pc) % 12
        if offset in _MAJOR:
            accidental, index = "", _MAJOR.index(offset)
        else:  # chromatic root: name it as a flattened major-scale degree
            accidental, index = "b", _MAJOR.index(offset + 1)
        numeral = _NUMERALS[index].lower() if is_minor else _NUMERALS[index]
        return accidental + numeral + roman_suffix

    def pitches_near(self, low: int, count: int | None = None) -> list[int]:
        """Chord tones ascending from the lowest root at or above ``low`` (root position, close voicing)."""
        root = low + (self.root_pc - low) % 12
        tones = [root] + [root + i for i in self.intervals]
        return (
            tones if count is None else [tones[i % len(tones)] + 12 * (i // len(tones)) for i in range(count)]
        )


def diatonic_chord(
    tonic_pc: int, mode: str, degree: int, kind: ChordKind = "triad", *, raise_leading_tone: bool = False
) -> Chord:
    """Stack thirds on ``degree`` (0-based) of the mode; ``raise_leading_tone`` gives the harmonic-minor V."""
    steps = SCALE_STEPS[mode]

    def pc_at(i: int) -> int:
        return tonic_pc + steps[i % 7] + 12 * (i // 7)

    root = pc_at(degree)
    if kind == "power":
        return Chord(root % 12, (7,), degree, tonic_pc)
    stack = [degree + 2, degree + 4] + ([degree + 6] if kind == "seventh" else [])
    intervals = [pc_at(i) - root for i in stack]
    if raise_leading_tone and degree == 4 and intervals[0] == 3:
        intervals[0] = 4
    return Chord(root % 12, tuple(intervals), degree, tonic_pc)


def closest_voicing(chord: Chord, previous: list[int] | None, low: int, high: int, size: int) -> list[int]:
    """A ``size``-note voicing of ``chord`` inside ``[low, high]`` that moves least from ``previous``.

    Candidates are all inversions of the close-position chord; the cost is the summed distance to the previous
    voicing (or to the middle of the range for the first chord), so comping parts voice-lead smoothly.
    """
    tones = sorted(chord.pitch_classes, key=lambda pc: (pc - chord.root_pc) % 12)
    if len(tones) < size:  # triad in a 4-note voicing: double the root an octave up
        tones = tones + tones[: size - len(tones)]
    best: list[int] | None = None
    best_cost = float("inf")
    middle = (low + high) / 2
    for inversion in range(len(tones)):
        order = tones[inversion:] + tones[:inversion]
        for base in range(low, low + 12):
            if base % 12 != order[0]:
                continue
            voicing = [base]
            for pc in order[1:size]:
                nxt = voicing[-1] + 1 + (pc - voicing[-1] - 1) % 12
                voicing.append(nxt)
            if voicing[-1] > high:
                continue
            if previous:
                cost = sum(abs(a - b) for a, b in zip(sorted(voicing), sorted(previous), strict=False))
            else:
                cost = abs(sum(voicing) / len(voicing) - middle)
            if cost < best_cost:
                best, best_cost = voicing, cost
    if best is None:  # range too narrow for this chord: fall back to close root position
        best = chord.pitches_near(low, size)
    return best
