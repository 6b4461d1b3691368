"""songflow.text: lyric normalisation, per-line language detection and the VoiceBPE lyric tokenizer.

Layer 0: imports only the standard library, ``tokenizers`` (when a vocabulary is loaded) and, lazily, the
optional ``multilingual`` libraries (py3langid, num2words, pypinyin, cutlet, hangul-romanize).
"""

from songflow.text.language import detect_line_language, language_counts, language_detection_available
from songflow.text.lyric_tokenizer import (
    EMPTY_LYRICS_IDS,
    LANGUAGE_TAG_IDS,
    MAX_LYRIC_TOKENS,
    MAX_LYRICS_CHARS,
    STRUCTURE_TAGS,
    LyricLine,
    LyricTokenizer,
)
from songflow.text.normalize import preprocess

__all__ = [
    "EMPTY_LYRICS_IDS",
    "LANGUAGE_TAG_IDS",
    "MAX_LYRICS_CHARS",
    "MAX_LYRIC_TOKENS",
    "STRUCTURE_TAGS",
    "LyricLine",
    "LyricTokenizer",
    "detect_line_language",
    "language_counts",
    "language_detection_available",
    "preprocess",
]
