"""Singable lyric lines from templates x word banks, with CMUdict syllable counts.

Every word the generator can emit is checked against CMUdict (through ``pronouncing``) when the banks are
first used; a word is kept only if *all* of its CMUdict pronunciations have the same syllable count, so "one
syllable per note" is unambiguous whichever pronunciation the singer picks. Words are lower case except the
pronoun "I".

    >>> import random
    >>> line = generate_line(random.Random(0), 6, 9, theme="night")
    >>> 6 <= line.num_syllables <= 9
    True

The grammar has ~30 templates over ~20 slot banks and 6 themes; it yields far more than 10^6 distinct lines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache, lru_cache

# ----------------------------------------------------------------------------------------------------
# Word banks. Slot names are upper case; a bank entry may be several words ("all night long").
_CORE_BANKS: dict[str, tuple[str, ...]] = {
    "SUBJ": ("I", "we", "you", "they"),
    "OBJ": ("me", "you", "them", "her", "him"),
    "AUX": ("will", "can", "could", "would", "should", "never", "always", "still", "gonna", "wanna"),
    "NEG": ("don't", "won't", "can't", "never"),
    "VOC": ("baby", "darling", "honey", "my love", "my friend", "sweetheart", "oh baby", "hey now"),
    "EXCL": ("oh", "yeah", "hey", "ooh", "whoa", "oh oh"),
    "VERB_I": (
        "run",
        "dance",
        "fall",
        "shine",
        "wait",
        "drive",
        "fly",
        "sing",
        "burn",
        "breathe",
        "rise",
        "wander",
        "drift",
        "dream",
        "glow",
        "move",
        "sway",
        "roam",
        "hide",
        "stay",
        "go",
        "ride",
        "float",
        "swim",
        "climb",
        "sleep",
        "shout",
        "smile",
        "cry",
        "laugh",
        "believe",
        "return",
        "escape",
        "surrender",
        "come alive",
        "let go",
        "hold on",
        "break free",
        "look back",
        "slow down",
    ),
    "VERB_ING": (
        "running",
        "dancing",
        "falling",
        "waiting",
        "driving",
        "flying",
        "singing",
        "burning",
        "drifting",
        "shining",
        "dreaming",
        "walking",
        "floating",
        "turning",
        "wandering",
        "swaying",
        "rolling",
        "glowing",
        "chasing stars",
        "holding on",
        "letting go",
        "coming home",
        "looking up",
        "breaking free",
        "riding high",
        "moving on",
    ),
    "VERB_PAST": (
        "ran",
        "danced",
        "fell",
        "waited",
        "drove",
        "flew",
        "sang",
        "burned",
        "drifted",
        "walked",
        "wandered",
        "laughed",
        "cried",
        "smiled",
        "stayed",
        "rode",
        "swam",
        "climbed",
        "slept",
        "prayed",
        "lingered",
        "hid",
    ),
    "VERB_3S": (
        "shines",
        "falls",
        "burns",
        "fades",
        "calls",
        "sings",
        "turns",
        "breaks",
        "rolls",
        "glows",
        "waits",
        "moves",
        "whispers",
        "echoes",
        "shivers",
        "rises",
        "sleeps",
        "dances",
        "bleeds",
        "wanders",
        "hums",
    ),
    "VERB_T": (
        "hold",
        "chase",
        "find",
        "need",
        "call",
        "follow",
        "carry",
        "remember",
        "miss",
        "want",
        "feel",
        "save",
        "keep",
        "free",
        "trust",
        "hear",
        "see",
        "love",
        "touch",
        "show",
        "lift",
        "guide",
    ),
    "VERB_T_PAST": (
        "held",
        "chased",
        "found",
        "needed",
        "called",
        "followed",
        "carried",
        "remembered",
        "missed",
        "kissed",
        "lost",
        "saved",
        "kept",
        "heard",
        "saw",
        "loved",
        "touched",
        "wanted",
        "trusted",
        "forgot",
    ),
    "VERB_LEAD": ("take", "lead", "carry", "bring", "pull", "follow", "walk", "send", "drive"),
    "PREP": (
        "in",
        "under",
        "through",
        "across",
        "beneath",
        "along",
        "over",
        "into",
        "beyond",
        "around",
        "inside",
        "above",
        "below",
        "behind",
        "onto",
        "within",
        "upon",
        "against",
        "by",
    ),
    "TIME": (
        "tonight",
        "forever",
        "again",
        "today",
        "tomorrow",
        "all night long",
        "right now",
        "one more time",
        "each day",
        "once again",
        "for a while",
        "till the end",
        "all the way",
        "each night",
        "no more",
        "at last",
        "anymore",
        "someday",
        "for good",
        "all along",
        "this time",
        "in the end",
    ),
    "ADV": (
        "slowly",
        "softly",
        "away",
        "down",
        "together",
        "alone",
        "closer",
        "higher",
        "faster",
        "back",
        "home",
    ),
    "FEELING": (
        "love",
        "hope",
        "fear",
        "pride",
        "joy",
        "pain",
        "faith",
        "time",
        "life",
        "freedom",
        "silence",
    ),
    "ADJ": (
        "golden",
        "silver",
        "broken",
        "endless",
        "quiet",
        "wild",
        "empty",
        "burning",
        "electric",
        "lonely",
        "bright",
        "open",
        "gentle",
        "restless",
        "crazy",
        "distant",
        "faded",
        "secret",
        "shining",
        "hidden",
        "sweet",
        "cold",
        "warm",
        "little",
        "heavy",
        "shallow",
        "brave",
        "holy",
        "lazy",
        "perfect",
        "simple",
        "crimson",
        "velvet",
    ),
    "NOUN": (
        "light",
        "road",
        "heart",
        "sky",
        "rain",
        "wind",
        "dream",
        "feeling",
        "silence",
        "song",
        "door",
        "world",
        "line",
        "sound",
        "moment",
        "memory",
        "story",
        "promise",
        "melody",
        "rhythm",
        "signal",
        "echo",
        "shadow",
    ),
    "NOUN_PL": (
        "stars",
        "lights",
        "hearts",
        "dreams",
        "clouds",
        "shadows",
        "colors",
        "voices",
        "years",
        "bells",
        "flowers",
        "roads",
        "memories",
        "secrets",
        "stories",
        "echoes",
        "wishes",
        "songs",
        "words",
        "eyes",
    ),
}

# Themes add nouns and adjectives to the core banks, so one song's lines share imagery.
THEME_BANKS: dict[str, dict[str, tuple[str, ...]]] = {
    "night": {
        "NOUN": ("night", "moon", "city", "midnight", "street", "skyline", "neon", "moonlight", "starlight"),
        "NOUN_PL": ("streets", "sirens", "headlights", "windows", "rooftops"),
        "ADJ": ("midnight", "neon", "dark", "silent", "starry"),
    },
    "summer": {
        "NOUN": ("summer", "sun", "sunlight", "beach", "garden", "meadow", "sunset", "breeze"),
        "NOUN_PL": ("fields", "waves", "days", "petals", "birds"),
        "ADJ": ("sunny", "lazy", "green", "warm", "golden"),
    },
    "road": {
        "NOUN": ("highway", "radio", "engine", "desert", "horizon", "station", "journey", "town"),
        "NOUN_PL": ("wheels", "exits", "signs", "towns", "highways"),
        "ADJ": ("dusty", "long", "lonesome", "rolling", "faraway"),
    },
    "ocean": {
        "NOUN": ("ocean", "river", "tide", "shore", "harbor", "island", "water", "stream", "lighthouse"),
        "NOUN_PL": ("waves", "rivers", "tides", "sails", "islands"),
        "ADJ": ("deep", "blue", "salty", "endless", "stormy"),
    },
    "winter": {
        "NOUN": ("winter", "snow", "flame", "mountain", "morning", "frost", "candle", "window"),
        "NOUN_PL": ("snowflakes", "candles", "mountains", "mornings", "embers"),
        "ADJ": ("frozen", "white", "cold", "silent", "pale"),
    },
    "love": {
        "NOUN": ("heartbeat", "kiss", "smile", "embrace", "heaven", "paradise", "goodbye", "touch"),
        "NOUN_PL": ("arms", "lips", "hands", "kisses", "promises"),
        "ADJ": ("tender", "precious", "beautiful", "honest", "true"),
    },
}

# Templates: "$SLOT" tokens are filled from the banks; other tokens are literal words.
TEMPLATES: tuple[str, ...] = (
    "$SUBJ $VERB_I $PREP the $ADJ $NOUN",
    "$SUBJ $VERB_PAST $PREP the $NOUN",
    "$SUBJ $VERB_PAST $PREP the $ADJ $NOUN $TIME",
    "$VERB_ING $PREP the $NOUN",
    "$VERB_ING $PREP the $ADJ $NOUN $TIME",
    "the $NOUN $VERB_3S $TIME",
    "the $ADJ $NOUN $VERB_3S $PREP $OBJ",
    "$VOC $VERB_T me $TIME",
    "$SUBJ $VERB_T the $ADJ $NOUN",
    "$SUBJ $AUX $VERB_I $TIME",
    "$ADJ $NOUN_PL $PREP the $NOUN",
    "all the $NOUN_PL $VERB_I $TIME",
    "$SUBJ $AUX $VERB_T $OBJ $TIME",
    "$SUBJ $NEG $VERB_I $ADV",
    "$EXCL $VOC $SUBJ $VERB_I $TIME",
    "there is a $ADJ $NOUN $PREP the $NOUN",
    "$FEELING is a $ADJ $NOUN",
    "$VERB_LEAD me $PREP the $NOUN",
    "$VERB_LEAD me $PREP the $ADJ $NOUN_PL",
    "$SUBJ $AUX $VERB_I like a $ADJ $NOUN",
    "$PREP the $NOUN_PL $SUBJ $VERB_I",
    "$VERB_T the $NOUN and $VERB_I",
    "$SUBJ $VERB_T_PAST $OBJ $TIME",
    "$SUBJ $VERB_T_PAST the $NOUN $PREP the $NOUN",
    "nothing $VERB_3S like the $ADJ $NOUN",
    "each $NOUN $VERB_3S $ADV",
    "$ADJ $NOUN $ADJ $NOUN",
    "$SUBJ $VERB_I $ADV $TIME",
    "$VOC $SUBJ $AUX $VERB_I",
    "$EXCL $SUBJ $VERB_I",
    "$FEELING $VERB_3S $ADV",
    "$EXCL $EXCL",
    "my $NOUN $VERB_3S for $OBJ",
    "$SUBJ $AUX $VERB_T your $ADJ $NOUN",
)


@dataclass(frozen=True)
class LyricLine:
    """One lyric line: its words and the CMUdict syllable count of each word."""

    words: tuple[str, ...]
    syllable_counts: tuple[int, ...]

    @property
    def num_syllables(self) -> int:
        return sum(self.syllable_counts)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def stresses(self) -> tuple[float, ...]:
        """Stress of every syllable in order (see :func:`word_stresses`)."""
        return tuple(x for w in self.words for x in word_stresses(w))


def _phones_for_word(word: str) -> list[str]:
    import pronouncing

    return pronouncing.phones_for_word(word)


def _syllables_of_phones(phones: str) -> int:
    return sum(1 for ph in phones.split() if ph[-1].isdigit())


@lru_cache(maxsize=4096)
def word_syllables(word: str) -> int | None:
    """Syllables in ``word`` per CMUdict, or None if it is missing or its pronunciations disagree."""
    phones = _phones_for_word(word.lower())
    if not phones:
        return None
    counts = {_syllables_of_phones(p) for p in phones}
    return counts.pop() if len(counts) == 1 else None


# one-syllable words that are sung unstressed (CMUdict marks every monosyllable as stressed)
_WEAK_WORDS = frozenset(
    "a an the in on at of to and or but my me you I we they them her him it is for by with from your".split()
)


@lru_cache(maxsize=4096)
def word_stresses(word: str) -> tuple[float, ...]:
    """Per-syllable stress in [0, 1] from the first CMUdict pronunciation (1 primary, 0.5 secondary, 0 none).

    Monosyllables get 1.0, except function words ("the", "in", "my"...) which get 0.3.
    """
    phones = _phones_for_word(word.lower())
    if not phones:
        raise KeyError(f"{word!r} is not in CMUdict")
    marks = [ph[-1] for ph in phones[0].split() if ph[-1].isdigit()]
    if len(marks) == 1:
        return (0.3,) if word.lower() in _WEAK_WORDS or word == "I" else (1.0,)
    return tuple(1.0 if m == "1" else 0.5 if m == "2" else 0.0 for m in marks)


@dataclass(frozen=True)
class _Entry:
    words: tuple[str, ...]
    syllables: int


@cache
def _banks(theme: str | None) -> dict[str, tuple[_Entry, ...]]:
    """Core banks merged with the theme's extras; entries with a non-CMUdict word are dropped."""
    merged: dict[str, list[str]] = {k: list(v) for k, v in _CORE_BANKS.items()}
    for slot, extra in THEME_BANKS.get(theme or "", {}).items():
        merged[slot] = list(dict.fromkeys(merged[slot] + list(extra)))
    out: dict[str, tuple[_Entry, ...]] = {}
    for slot, phrases in merged.items():
        entries = []
        for phrase in phrases:
            words = tuple(phrase.split())
            counts = [word_syllables(w) for w in words]
            if all(c is not None for c in counts):
                entries.append(_Entry(words, sum(c for c in counts if c is not None)))
        out[slot] = tuple(entries)
    return out


def dropped_bank_words() -> list[str]:
    """Bank words that failed the CMUdict check (should be empty; a test keeps it so)."""
    all_phrases = [p for bank in _CORE_BANKS.values() for p in bank]
    all_phrases += [p for theme in THEME_BANKS.values() for bank in theme.values() for p in bank]
    return sorted({w for p in all_phrases for w in p.split() if word_syllables(w) is None})


@cache
def _template_ranges(theme: str | None) -> tuple[tuple[tuple[str, ...], int, int], ...]:
    """(tokens, min syllables, max syllables) per template."""
    banks = _banks(theme)
    out = []
    for template in TEMPLATES:
        tokens = tuple(template.split())
        lo = hi = 0
        for tok in tokens:
            if tok.startswith("$"):
                counts = [e.syllables for e in banks[tok[1:]]]
                lo, hi = lo + min(counts), hi + max(counts)
            else:
                n = word_syllables(tok)
                assert n is not None, tok
                lo, hi = lo + n, hi + n
        out.append((tokens, lo, hi))
    return tuple(out)


def _fill(rng: random.Random, tokens: tuple[str, ...], banks: dict[str, tuple[_Entry, ...]]) -> LyricLine:
    words: list[str] = []
    counts: list[int] = []
    for tok in tokens:
        if tok.startswith("$"):
            entry = rng.choice(banks[tok[1:]])
            words.extend(entry.words)
            counts.extend(word_syllables(w) or 0 for w in entry.words)
        else:
            words.append(tok)
            counts.append(word_syllables(tok) or 0)
    return LyricLine(tuple(words), tuple(counts))


_PAD_WORDS = ("oh", "yeah")


def generate_line(
    rng: random.Random, min_syllables: int, max_syllables: int, *, theme: str | None = None, tries: int = 40
) -> LyricLine:
    """A random line with ``min_syllables <= syllables <= max_syllables`` (both >= 1).

    Templates whose syllable range cannot meet the target are skipped; a filled template outside the target
    is redrawn. If nothing fits after ``tries`` draws the closest line is padded with "oh"/"yeah" or cut at a
    word boundary, so the bound always holds.
    """
    if not 1 <= min_syllables <= max_syllables:
        raise ValueError(f"need 1 <= min_syllables <= max_syllables, got {min_syllables}, {max_syllables}")
    banks = _banks(theme)
    usable = [t for t, lo, hi in _template_ranges(theme) if lo <= max_syllables and hi >= min_syllables]
    best: LyricLine | None = None
    for _ in range(tries if usable else 0):
        line = _fill(rng, rng.choice(usable), banks)
        if min_syllables <= line.num_syllables <= max_syllables:
            return line
        if best is None or _distance(line, min_syllables, max_syllables) < _distance(
            best, min_syllables, max_syllables
        ):
            best = line
    words = list(best.words) if best else []
    counts = list(best.syllable_counts) if best else []
    while words and sum(counts) > max_syllables:
        words.pop()
        counts.pop()
    while sum(counts) < min_syllables:
        pad = rng.choice(_PAD_WORDS)
        if rng.random() < 0.5:
            words.insert(0, pad)
            counts.insert(0, 1)
        else:
            words.append(pad)
            counts.append(1)
    return LyricLine(tuple(words), tuple(counts))


def _distance(line: LyricLine, lo: int, hi: int) -> int:
    n = line.num_syllables
    return lo - n if n < lo else n - hi if n > hi else 0


def themes() -> tuple[str, ...]:
    return tuple(sorted(THEME_BANKS))
