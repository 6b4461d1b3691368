"""Lyrics -> token ids for the lyric encoder: the official VoiceBPE tokenizer and pipeline rule.

``LyricTokenizer(vocab_path)`` reads the official ``vocab.json`` (a Hugging Face ``tokenizers`` file that
ships with the checkpoint; it is not part of this package) and reproduces ``ACEStepPipeline.tokenize_lyrics``:

* ids start with ``[START]`` (261); every line of ``lyrics.split("\\n")``, stripped, adds its ids followed
  by ``[SPACE]`` (2); an empty line adds only 2;
* a line's language is :func:`~songflow.text.language.detect_line_language`; unsupported languages become
  "en"; a line that *starts* with a ``[...]`` group (``[verse]``, ``[Verse 1] la la``) is encoded whole
  as English, so the 12 structure tags become single tokens and other bracket groups become
  ``[UNK]``, pieces, ``[UNK]``;
* a line that cannot be encoded (e.g. a 400-digit number num2words refuses) is skipped with a warning;
* ``lyrics == ""`` gives ``[0]`` with mask ``[0]`` (the official "no lyrics" input); any other input, even
  whitespace only, is tokenized as above and gets a mask of ones (:meth:`LyricTokenizer.lyric_mask_for`).

Limits (not in the official code, which has none): lyrics longer than ``max_chars`` (default 20,000
characters) are rejected before any work, and lyrics that tokenize to more than ``max_tokens`` (default
4,096, the training-time truncation length) are rejected after tokenization; both raise
:class:`~songflow.errors.SongflowError` saying how long the lyrics are and what the limit is. Pass ``None``
to disable a limit.

Optional libraries (the ``multilingual`` extra) are imported only when a line needs them. When a line
needs one that is missing (pypinyin for zh, cutlet for ja, hangul-romanize for ko, num2words for numbers
outside English, py3langid for detection), the line is encoded as English and a warning is logged once
per library. English needs none of them.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from songflow.errors import ConfigError, SongflowError
from songflow.text.language import detect_line_language
from songflow.text.normalize import PREPROCESS_LANGUAGES, missing_libraries, preprocess

logger = logging.getLogger(__name__)

__all__ = [
    "EMPTY_LYRICS_IDS",
    "LANGUAGE_TAG_IDS",
    "MAX_LYRICS_CHARS",
    "MAX_LYRIC_TOKENS",
    "START_ID",
    "SPACE_ID",
    "STOP_ID",
    "STRUCTURE_TAGS",
    "UNK_ID",
    "LyricLine",
    "LyricTokenizer",
]

STOP_ID = 0
UNK_ID = 1
SPACE_ID = 2  # also the line / blank-line marker
START_ID = 261
#: What the pipeline feeds for ``lyrics == ""`` (with mask ``[0]``).
EMPTY_LYRICS_IDS: tuple[int, ...] = (STOP_ID,)

MAX_LYRICS_CHARS = 20_000
MAX_LYRIC_TOKENS = 4096

#: The 12 structure tags that are single tokens (lowercase; "[Chorus]" is lowercased by the English cleaner).
STRUCTURE_TAGS: Mapping[str, int] = MappingProxyType(
    {
        "[start]": 6681,
        "[intro]": 6682,
        "[verse]": 6683,
        "[chorus]": 6684,
        "[bridge]": 6685,
        "[outro]": 6686,
        "[end]": 6687,
        "[inst]": 6688,
        "[solo]": 6689,
        "[hook]": 6690,
        "[pre-chorus]": 6691,
        "[break]": 6692,
    }
)

#: Lyric languages the pipeline encodes with their own tag (the official SUPPORT_LANGUAGES), tag ids.
LANGUAGE_TAG_IDS: Mapping[str, int] = MappingProxyType(
    {
        "en": 259,
        "de": 260,
        "fr": 262,
        "es": 284,
        "it": 285,
        "pt": 286,
        "pl": 294,
        "tr": 295,
        "ru": 267,
        "cs": 293,
        "nl": 297,
        "ar": 5022,
        "zh": 5023,
        "ja": 5412,
        "hu": 5753,
        "ko": 6152,
        "hi": 6680,
    }
)

_VOCAB_SIZE = 6693
_BRACKET_START_RE = re.compile(r"\[.*?\]")
_LINE_CACHE_SIZE = 1024  # lines; choruses repeat, and the UI re-tokenizes the same lyrics often
_CACHED_LINE_CHARS = 1000
_WARNED_LIBRARIES: set[str] = set()  # missing libraries already reported (once per process)


@dataclass(frozen=True)
class LyricLine:
    """How one lyric line was tokenized (for debugging and logs).

    ``detected`` is the raw detection ("gl", "cy", ...; None for empty lines), ``language`` the supported
    language after mapping, ``encoded_as`` the language actually used (``"en"`` for lines starting with a
    ``[...]`` group or when a library is missing), ``ids`` the line's ids including the trailing
    ``[SPACE]`` (empty for a skipped line), ``error`` why the line was skipped.
    """

    text: str
    detected: str | None
    language: str | None
    encoded_as: str | None
    ids: tuple[int, ...]
    error: str | None = None


class LyricTokenizer:
    """VoiceBPE lyric tokenizer with the official ACE-Step v1 behaviour (see the module docstring)."""

    STRUCTURE_TAGS = STRUCTURE_TAGS
    LANGUAGE_TAG_IDS = LANGUAGE_TAG_IDS

    def __init__(
        self,
        vocab_path: str | Path,
        *,
        max_chars: int | None = MAX_LYRICS_CHARS,
        max_tokens: int | None = MAX_LYRIC_TOKENS,
    ):
        self.vocab_path = Path(vocab_path)
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        self._tokenizer = _load_vocab(self.vocab_path)
        self._line_cache: OrderedDict[str, LyricLine] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- single texts ----------------------------------------------------------------------------------

    def preprocess(self, text: str, lang: str) -> str:
        """Normalised text that :meth:`encode` tokenizes (without the ``[lang]`` tag), e.g.
        ``preprocess("Mr. Smith paid $5", "en") == "mister smith paid five dollars"``."""
        lang = _checked_language(lang)
        return preprocess(text, self._usable_language(text, lang))

    def encode(self, text: str, lang: str) -> list[int]:
        """VoiceBPE ids of ``text`` in ``lang`` (e.g. "en", "zh", "zh-cn"): ``[lang tag, ...pieces]``.

        Spaces become ``[SPACE]`` (2). Raises :class:`~songflow.errors.ConfigError` for a language without
        rules and :class:`~songflow.errors.SongflowError` when the text cannot be normalised.
        """
        self._check_chars(text, what="the text is")
        try:
            return self._encode(text, lang)
        except SongflowError:
            raise
        except Exception as err:
            raise SongflowError(f"cannot tokenize {text[:60]!r} as {lang!r}: {err}") from err

    def decode_pieces(self, ids: Iterable[int]) -> list[str]:
        """The text of each id, as the official decoder shows it: ``[SPACE]`` -> " ", ``[STOP]`` -> ""."""
        pieces = []
        for token_id in ids:
            token = self._tokenizer.id_to_token(int(token_id))
            if token is None:
                raise SongflowError(
                    f"token id {token_id} is outside the lyric vocabulary (0..{_VOCAB_SIZE - 1})"
                )
            pieces.append(" " if token == "[SPACE]" else "" if token == "[STOP]" else token)
        return pieces

    def decode(self, ids: Iterable[int]) -> str:
        """All pieces joined, e.g. ``"[START][en][verse] [en]ne on li ght s "`` (for debugging)."""
        return "".join(self.decode_pieces(ids))

    # -- whole lyrics ----------------------------------------------------------------------------------

    def tokenize_lyrics(self, lyrics: str) -> list[int]:
        """Token ids the DiT's lyric encoder gets for ``lyrics`` (``[0]`` for ``""``; see module docs)."""
        if lyrics == "":
            return list(EMPTY_LYRICS_IDS)
        ids = [START_ID]
        for line in self.tokenize_lines(lyrics):
            ids += line.ids
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            raise SongflowError(
                f"the lyrics tokenize to {len(ids):,} tokens; the limit is {self.max_tokens:,} "
                "(shorten the lyrics or raise max_tokens)"
            )
        return ids

    def tokenize_lines(self, lyrics: str) -> list[LyricLine]:
        """Per-line detail of :meth:`tokenize_lyrics` (no ``[START]``, no token limit)."""
        if not isinstance(lyrics, str):
            raise SongflowError(f"lyrics must be a string, not {type(lyrics).__name__}")
        self._check_chars(lyrics, what="the lyrics are")
        return [self._tokenize_line(line.strip()) for line in lyrics.split("\n")]

    @staticmethod
    def lyric_mask_for(ids: Sequence[int]) -> list[int]:
        """Attention mask for ``ids``: ``[0]`` for the empty-lyrics input ``[0]``, ones otherwise."""
        return [0] if tuple(ids) == EMPTY_LYRICS_IDS else [1] * len(ids)

    # -- internals -------------------------------------------------------------------------------------

    def _tokenize_line(self, line: str) -> LyricLine:
        if not line:
            return LyricLine(line, None, None, None, (SPACE_ID,))
        with self._cache_lock:
            cached = self._line_cache.get(line)
            if cached is not None:
                self._line_cache.move_to_end(line)
                return cached
        detected = detect_line_language(line)
        language = _map_to_supported(detected)
        encode_as = "en" if _BRACKET_START_RE.match(line) else language
        try:
            encode_as = self._usable_language(line, encode_as)
            result = LyricLine(
                line, detected, language, encode_as, (*self._encode(line, encode_as), SPACE_ID)
            )
        except Exception as err:  # the official pipeline skips lines it cannot encode
            reason = f"{type(err).__name__}: {err}"
            reason = reason if len(reason) <= 200 else reason[:197] + "..."
            logger.warning("skipping lyric line %r (language %s): %s", line[:60], encode_as, reason)
            result = LyricLine(line, detected, language, encode_as, (), error=reason)
        if len(line) <= _CACHED_LINE_CHARS:
            with self._cache_lock:
                self._line_cache[line] = result
                if len(self._line_cache) > _LINE_CACHE_SIZE:
                    self._line_cache.popitem(last=False)
        return result

    def _encode(self, text: str, lang: str) -> list[int]:
        lang = self._usable_language(text, _checked_language(lang))
        normalised = preprocess(text, lang)
        tag = "zh-cn" if lang == "zh" else lang
        return self._tokenizer.encode(f"[{tag}]{normalised}".replace(" ", "[SPACE]")).ids

    def _usable_language(self, text: str, lang: str) -> str:
        """``lang``, or "en" (warning once per library) when a library ``lang`` needs is missing."""
        missing = missing_libraries(text, lang) if lang != "en" else []
        if not missing:
            return lang
        for name in missing:
            if name not in _WARNED_LIBRARIES:
                _WARNED_LIBRARIES.add(name)
                logger.warning(
                    "%s is not installed: lyric lines that need it are encoded as English "
                    "(pip install 'songflow[multilingual]')",
                    name,
                )
        return "en"

    def _check_chars(self, text: str, *, what: str) -> None:
        if self.max_chars is not None and len(text) > self.max_chars:
            raise SongflowError(
                f"{what} {len(text):,} characters long; the limit is {self.max_chars:,} characters "
                "(shorten the lyrics or raise max_chars)"
            )


def _checked_language(lang: str) -> str:
    """``lang`` without its region ("zh-cn" -> "zh"); ConfigError when there are no rules for it."""
    base = lang.split("-")[0] if isinstance(lang, str) else lang
    if base not in PREPROCESS_LANGUAGES:
        raise ConfigError(
            f"unsupported lyric language {lang!r}; supported: {', '.join(sorted(PREPROCESS_LANGUAGES))}"
        )
    return base


def _map_to_supported(detected: str) -> str:
    """The official mapping: unsupported -> "en"; any "zh*" -> "zh"; "spa*" -> "es"."""
    if detected not in LANGUAGE_TAG_IDS:
        return "en"
    if "zh" in detected:
        return "zh"
    if "spa" in detected:
        return "es"
    return detected


def _load_vocab(path: Path):
    if not path.is_file():
        raise SongflowError(
            f"lyric vocabulary not found: {path} (it ships with the checkpoint as vocab.json; "
            "check the checkpoint folder)"
        )
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:
        raise SongflowError(f"cannot read the lyric vocabulary {path}: {err}") from err
    problems = []
    if tokenizer.get_vocab_size(with_added_tokens=True) != _VOCAB_SIZE:
        problems.append(f"{tokenizer.get_vocab_size(with_added_tokens=True)} ids instead of {_VOCAB_SIZE}")
    expected = {
        "[STOP]": STOP_ID,
        "[UNK]": UNK_ID,
        "[SPACE]": SPACE_ID,
        "[START]": START_ID,
        **STRUCTURE_TAGS,
    }
    expected |= {f"[{'zh-cn' if lang == 'zh' else lang}]": i for lang, i in LANGUAGE_TAG_IDS.items()}
    wrong = [token for token, i in expected.items() if tokenizer.token_to_id(token) != i]
    if wrong:
        problems.append(f"unexpected ids for {', '.join(wrong[:5])}")
    if problems:
        raise SongflowError(f"{path} is not the ACE-Step v1 lyric vocabulary: {'; '.join(problems)}")
    return tokenizer
