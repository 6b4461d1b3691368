"""Per-line lyric language detection with the official ACE-Step v1 results.

The official pipeline asks LangSegment 0.3.5 (a py3langid-based segmenter, configured with the 97 py3langid
languages as its filter list) how many characters of a lyric line belong to each language, and takes the
language with the most characters -- unless that is "en" and another language was seen, in which case the
runner-up wins. The per-line answer decides the ``[lang]`` tag and the text normalisation of the line, so
token ids depend on reproducing it exactly, quirks included. This module re-implements that behaviour on
py3langid (own code, written from the observed behaviour):

1. Script runs are cut out of the line first, in this order: ``<tag>…</tag>`` markup, Hangul (-> ko),
   Thai (-> th), Cyrillic (-> ru), digit groups with punctuation (take the line's first language),
   Latin runs (classified sentence by sentence with py3langid), quoted and bracketed passages.
2. What is left is split at punctuation; each piece (with its trailing punctuation; pieces of two or fewer
   letters are glued to the next piece) is classified with py3langid; a piece made only of CJK ideographs
   is "zh"; short pieces with ideographs are "ja" when they contain kana or when the classifier is unsure,
   and may stay undecided ("zh|ja") until the next piece settles them (undecided pieces at the very end
   are dropped).
3. Consecutive pieces of one language merge; digit-only or punctuation-only pieces join their predecessor.
   Counts are character counts, Chinese counted twice; English pieces are counted after a space is put
   before every inner capital letter ("iPhone" -> "i Phone ") plus a trailing space.
4. No counted piece at all -> "zh" (the official fallback), any internal error -> "en".

Known, deliberate simplification: inside ``<currency>``/``<date>`` markup (never seen in lyrics) the
Chinese reading used for the character count is approximated; every other path is exact.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from songflow.text.normalize import RunSkippingPattern, optional_module, read_zh_number

logger = logging.getLogger(__name__)

__all__ = ["LANGID_LANGUAGES", "detect_line_language", "language_counts", "language_detection_available"]

#: The 97 py3langid languages in the order of the official filter list (its default language filter).
LANGID_LANGUAGES = tuple(
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu he hi hr "
    "ht hu hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt nb ne nl nn no oc or "
    "pa pl ps pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl tr ug uk ur vi vo wa xh zh zu".split()
)
_FILTER_SET = frozenset(LANGID_LANGUAGES)
# The segmenter tests languages against the filters joined by "-" with substring checks; keep that.
_FILTER_TEXT = "-".join(LANGID_LANGUAGES)
_FIRST_FILTER = LANGID_LANGUAGES[0]

# Confidence below which a short ideograph piece takes the filter priority: "ja" precedes "zh" in the list.
_CJK_PRIORITY_THRESHOLD = 0.89
_CJK_CONFIDENT = 0.90
_SHORT_CJK_LEN = 5

# Stash keys that replace cut-out runs: "⑥" + tag + 6-digit index + "⑥" (tags "$1".."$8" or "00").
_KEY_RE = re.compile(r"(⑥\$*\d{7,}⑥)")
_NUMBER_KEY_RE = re.compile(r"(⑥\d{6,}⑥)")
_PUNCT_RUN_RE = re.compile(r"([^\w\s]+)")
_SENTENCE_END_RE = re.compile(r"[。.?？!！]")
_SENTENCE_END_SET = frozenset("。.?？!！")
_LINE_RE = re.compile(r".*\n*")
_WORD_CHAR_RE = re.compile(r"\w")
_NON_WORD_RUN_RE = re.compile(r"[^\w]+")
_REPEAT_RE = re.compile(r"(.)\1+")
_DIGITS_RE = re.compile(r"\d+")
_SPACE_RE = re.compile(r"\s")
_SPACES_RE = re.compile(r"\s+")
_INNER_CAPITAL_RE = re.compile(r"(?<=\w)([A-Z])")
_KANA_RE = re.compile(r"[\u3040-\u309F\u30A0-\u30FF]")
_SENTENCE_END_CHARS = "。."

# Latin letters of a Latin run: ASCII plus the lowercase French and Vietnamese letters the official
# segmenter adds when "fr"/"vi" are among its filters (they are in the default list).
_FR_LETTERS = "àáâãäåæçèéêëìíîïðñòóôõöùúûüýþÿ"
_VI_LETTERS = "đơưăáàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựôâêơưỷỹ"


_OPENERS = r"[【《（(“‘\"']"


def _run_pattern(letters: str) -> RunSkippingPattern:
    """A run of a script: optional opening quotes/brackets, letters, trailing non-word chars, repeated."""
    return RunSkippingPattern(r"((" + _OPENERS + r"*[" + letters + r"]+[\W\s]*)+)", _OPENERS)


def _split_sentences(text: str) -> list[str]:
    """``re.split(r"(.*?[。.?？!！]+\\n?)", text)`` in linear time (the regex retries every start position).

    Each match runs from the scan position, or from just after the last newline before the next sentence
    end, through the run of sentence-end marks and one optional newline.
    """
    parts, pos, size = [], 0, len(text)
    while True:
        found = _SENTENCE_END_RE.search(text, pos)
        if found is None:
            break
        end_mark = found.start()
        newline = text.rfind("\n", pos, end_mark)
        start = pos if newline == -1 else newline + 1
        end = end_mark
        while end < size and text[end] in _SENTENCE_END_SET:
            end += 1
        if end < size and text[end] == "\n":
            end += 1
        parts += [text[pos:start], text[start:end]]
        pos = end
    parts.append(text[pos:])
    return parts


def _is_cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


def _squeeze_unstripped(text: str) -> str:
    """Non-word runs -> one space, then runs of one repeated character -> that character.

    Composes: ``_squeeze_unstripped(_squeeze_unstripped(a) + b) == _squeeze_unstripped(a + b)``.
    """
    return _REPEAT_RE.sub(r"\1", _NON_WORD_RUN_RE.sub(" ", text))


def _squeeze(text: str) -> str:
    """Classifier input: non-word runs -> one space, repeated characters collapsed, stripped."""
    return _squeeze_unstripped(text).strip()


def _as_found(match: re.Match) -> str | tuple[str, ...]:
    """A match as ``re.findall`` reports it: the only group, or all groups ("" for unmatched ones)."""
    groups = match.groups()
    return (groups[0] or "") if len(groups) == 1 else tuple(g or "" for g in groups)


def _has_no_words(text: str) -> bool:
    return _WORD_CHAR_RE.search(text) is None


def _number_check(text: str) -> tuple[bool, bool]:
    """(has nothing left after dropping punctuation, is digits/whitespace only) for a piece of text."""
    if text == "\n":
        return False, False
    clear = _PUNCT_RUN_RE.sub("", text.replace("\n", "")).strip()
    return not clear, not _DIGITS_RE.sub("", clear)


def _space_inner_capitals(text: str) -> str:
    return _INNER_CAPITAL_RE.sub(r" \1", text).strip("-") + " "


def _keeps(lang: str) -> bool:
    """The official filter test (membership, or a substring of the first filter code)."""
    return "?" in lang or lang in _FILTER_SET or lang in _FIRST_FILTER


@dataclass
class _Piece:
    lang: str
    text: str
    score: float
    symbol: object = None  # None for plain text, True for <lang> markup, the tag name for other markup


class _SegmentationError(Exception):
    pass


# Runs cut out of each line before the punctuation split, in this order: (stash tag, pattern, handler).
_RULES = (
    ("$1", RunSkippingPattern(r"(<([a-zA-Z|-]*)>(.*?)<\/*[a-zA-Z|-]*>)"), "_on_markup"),
    ("$6", _run_pattern("\uac00-\ud7a3"), "_on_hangul"),
    ("$8", _run_pattern("\u0e00-\u0e7f"), "_on_thai"),
    ("$7", _run_pattern("А-Яа-яЁё"), "_on_cyrillic"),
    ("00", RunSkippingPattern(r"(\W*\d+\W+\d*\W*\d*)", r"\W", r"\d"), "_on_number"),
    ("$5", _run_pattern("a-zA-Z" + _FR_LETTERS + _VI_LETTERS), "_on_latin"),
    ("$3", RunSkippingPattern(r"([\"'])(.*?)(\1)"), "_on_quoted"),
    (
        "$4",
        RunSkippingPattern(r"(\n*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*\n?)"),
        "_on_quoted",
    ),
)


class _LineSegmenter:
    """State of one detection pass over a text (the official segmenter's per-call state)."""

    def __init__(self, classify: Callable[[str], tuple[str, float]]):
        self._classify = classify
        self.counts: dict[str, int] = {}
        self._undecided: list[_Piece] = []  # at most one piece waiting for its zh/ja decision
        self._at_end = False
        self._stash: dict[str, tuple[Callable[[list[_Piece], object], None], object]] = {}

    # -- driver --------------------------------------------------------------------------------------

    def scan(self, text: str) -> None:
        for line in _LINE_RE.findall(_KEY_RE.sub("", text)):
            if not line.strip():
                continue
            self._at_end = False
            self._stash = {}
            for tag, pattern, handler_name in _RULES:
                line = self._cut_out(tag, pattern, getattr(self, handler_name), line)
            self._walk(line, [], top_level=True)

    def _cut_out(self, tag: str, pattern: RunSkippingPattern, handler, text: str) -> str:
        found = list(pattern.finditer(text))
        items = [_as_found(match) for match in found]  # what re.findall would return
        if len(items) == 1 and "".join(items[0]) == text:
            return text  # e.g. the whole text is one number run: leave it to the punctuation splitter
        # The official code substitutes the first remaining match once per match; that replaces exactly
        # these matches in order (keys contain no character the patterns could join up with), so one pass.
        pieces, last = [], 0
        for i, (match, item) in enumerate(zip(found, items, strict=True)):
            key = f"⑥{tag}{i:06d}⑥"
            pieces += [text[last : match.start()], key]
            last = match.end()
            self._stash[key] = (handler, item)
        return "".join(pieces) + text[last:]

    def _walk(self, text: str, words: list[_Piece], *, top_level: bool) -> None:
        parts = _KEY_RE.split(text)
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if top_level:
                self._at_end = i >= last
            if _KEY_RE.match(part):
                handler, match = self._stash[part]
                handler(words, match)
            else:
                self._split_at_punctuation(words, part)

    # -- handlers for cut-out runs -------------------------------------------------------------------

    def _on_hangul(self, words: list[_Piece], match) -> None:
        self._add(words, "ko", match[0], 1.0)

    def _on_thai(self, words: list[_Piece], match) -> None:
        self._add(words, "th", match[0], 1.0)

    def _on_cyrillic(self, words: list[_Piece], match) -> None:
        self._add(words, "ru", match[0], 1.0)

    def _on_number(self, words: list[_Piece], match) -> None:
        self._add(words, words[0].lang if words else "zh", match, 0.0)

    def _on_latin(self, words: list[_Piece], match) -> None:
        # Every language py3langid returns is in the filter list, so the classifier's answer is kept.
        for sentence in _split_sentences(match[0]):
            if sentence.strip():
                lang, score = self._classify(_squeeze(sentence))
                self._add(words, lang, sentence, score)

    def _on_quoted(self, words: list[_Piece], match) -> None:
        text = "".join(match)
        if _KEY_RE.search(text):
            self._walk(text, words, top_level=False)
            return
        inner = _squeeze(match[1])
        if len(inner) <= _SHORT_CJK_LEN:
            self._split_at_punctuation(words, text)
        else:
            lang, score = self._classify(inner)
            self._add(words, lang, text, score)

    def _on_markup(self, words: list[_Piece], match) -> None:
        _, tag, content = match
        if tag in _FILTER_TEXT:  # substring test, as the official segmenter does
            self._add(words, tag, content, 1.0, True)
            return
        lang, text = tag, content
        if tag in ("number", "telephone"):
            lang = "zh"
            text = content.replace("+86", "") if tag == "telephone" else content
            text = re.sub(r"\d+", lambda m: "".join(_zh_digit(c) for c in m.group(0)), text).replace(
                ".", "点"
            )
            if tag == "telephone":
                text = text.replace("一", "幺")
        elif tag in ("currency", "date"):  # approximation, see the module docstring
            lang = "zh"
            text = re.sub(r"\d+", lambda m: read_zh_number(m.group(0)), content).replace(".", "点")
        self._add(words, lang, text, 1.0, tag)

    # -- plain text ----------------------------------------------------------------------------------

    def _split_at_punctuation(self, words: list[_Piece], segment: str) -> None:
        line_ends_here = self._at_end
        pieces = _PUNCT_RUN_RE.split(segment)
        last = len(pieces) - 1
        # A piece that is only punctuation, is followed by punctuation only, or whose classifier text is two
        # characters or less is glued to the next piece. Glued pieces are carried forward with what the
        # checks need (word characters present, classifier text before stripping) so gluing stays linear.
        carry: list[str] = []
        carry_has_words = False
        carry_squeezed = ""
        for i, piece in enumerate(pieces):
            if not carry and not piece:
                continue
            is_last = i >= last
            has_words = carry_has_words or not _has_no_words(piece)
            squeezed = _squeeze_unstripped(carry_squeezed + _DIGITS_RE.sub("", _NUMBER_KEY_RE.sub("", piece)))
            clean = squeezed.strip()
            if not is_last and (not has_words or _has_no_words(pieces[i + 1]) or len(clean) <= 2):
                carry.append(piece)
                carry_has_words, carry_squeezed = has_words, squeezed
                continue
            text = "".join(carry) + piece
            carry, carry_has_words, carry_squeezed = [], False, ""
            lang, score = self._classify(clean)
            prev_lang = words[-1].lang if words else None
            if lang != "zh" and all(_is_cjk(c) for c in _SPACE_RE.sub("", clean)):
                lang, score = "zh", 1
            if len(clean) <= _SHORT_CJK_LEN and any(_is_cjk(c) for c in clean):
                lang = self._short_cjk_language(
                    words, text, clean, lang, score, prev_lang, is_last, line_ends_here
                )
            text = _NUMBER_KEY_RE.sub(self._restore_number, text)
            self._add(words, lang, text, score)

    def _short_cjk_language(self, words, text, clean, lang, score, prev_lang, is_last, line_ends_here) -> str:
        if score < _CJK_PRIORITY_THRESHOLD:
            lang = "ja"  # "ja" comes before "zh" in the filter list
        if _KANA_RE.search(clean):
            return "ja"
        if len(clean) > 2 and score > _CJK_CONFIDENT:
            return lang
        if is_last and line_ends_here:
            return "zh" if len(clean) <= 1 else lang
        undecided = "zh|ja" if lang == "zh" or (len(clean) <= 2 and prev_lang == "zh") else "ja|zh"
        compact = _SPACES_RE.sub("", text)
        if not compact:
            raise _SegmentationError("empty piece at a sentence-end check")
        related = bool(prev_lang) and (prev_lang in undecided or undecided in prev_lang)
        if compact[-1] in _SENTENCE_END_CHARS:
            return prev_lang if related and words else lang
        return undecided + "|…"

    def _restore_number(self, match: re.Match) -> str:
        key = match.group(0)
        return self._stash[key][1] if key in self._stash else key

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _add(
        self, words: list[_Piece], lang: str | None, text: str, score: float, symbol: object = None
    ) -> None:
        if text != "\n" and (text is None or not text.strip()):
            return
        lang = (lang or "").lower()
        if lang == "en":
            text = _space_inner_capitals(text)
        from_waiting = bool(self._undecided)
        prev = self._undecided.pop() if from_waiting else (words[-1] if words else None)
        if prev is not None and "|" in prev.lang:
            if lang in prev.lang:
                lang = lang.split("|")[0]
                prev.lang = lang
            else:
                prev.lang = prev.lang.split("|")[0]
            if from_waiting:
                prev = self._store(words, prev.lang, prev.text, prev.score, prev.symbol)
        # Every undecided language carries "…", so an undecided piece always waits for the next one.
        if "|" in lang:
            self._undecided.append(_Piece(lang, text, score, symbol))
        else:
            self._store(words, lang, text, score, symbol)

    def _store(
        self, words: list[_Piece], lang: str, text: str, score: float, symbol: object = None
    ) -> _Piece:
        _, is_number = _number_check(text)
        prev = words[-1] if words else None
        if symbol is None and prev is not None and prev.symbol is None:
            if is_number:  # digits or punctuation only: take the previous language
                lang = prev.lang
            if prev.lang == lang:
                self._count(prev.lang, text)
                prev.text += text
                return prev
            if _number_check(prev.text)[1]:  # a digits-only predecessor is absorbed
                text = prev.text + text
                words.pop()
        # (A number-only first piece would take the first filter's language if that were one of
        # ja/zh/en/ko/fr/vi; the default list starts with "af", so nothing happens.)
        piece = _Piece(lang, text, score, symbol)
        if _keeps(lang):
            words.append(piece)
            self._count(lang, text)
        return piece

    def _count(self, lang: str, text: str) -> None:
        if "|" not in lang:
            self.counts[lang] = self.counts.get(lang, 0) + (2 * len(text) if lang == "zh" else len(text))


_ZH_DIGITS = "零一二三四五六七八九"


def _zh_digit(char: str) -> str:
    return _ZH_DIGITS[int(char)] if char in "0123456789" else ""


# --------------------------------------------------------------------------------------------------------
# py3langid (lazy) and the public functions
# --------------------------------------------------------------------------------------------------------

_IDENTIFIER = None
_IDENTIFIER_LOCK = threading.Lock()
_WARNED = False


def _identifier():
    """The py3langid identifier with normalised probabilities, loaded once; None if py3langid is missing."""
    global _IDENTIFIER, _WARNED
    if _IDENTIFIER is None:
        with _IDENTIFIER_LOCK:
            if _IDENTIFIER is None:
                module = optional_module("py3langid.langid")
                if module is None:
                    if not _WARNED:
                        _WARNED = True
                        logger.warning(
                            "py3langid is not installed: every lyric line is treated as English "
                            "(pip install 'songflow[multilingual]')"
                        )
                    return None
                _IDENTIFIER = module.LanguageIdentifier.from_pickled_model(module.MODEL_FILE, norm_probs=True)
                if tuple(sorted(_IDENTIFIER.nb_classes)) != tuple(sorted(LANGID_LANGUAGES)):
                    logger.warning(
                        "py3langid model languages differ from the 97 expected; results may differ"
                    )
    return _IDENTIFIER


@lru_cache(maxsize=8192)
def _classify(text: str) -> tuple[str, float]:
    lang, probability = _identifier().classify(text)
    return str(lang), round(float(probability), 3)


def language_detection_available() -> bool:
    """Whether py3langid can be loaded (otherwise :func:`detect_line_language` always answers "en")."""
    return _identifier() is not None


def language_counts(text: str) -> list[tuple[str, int]]:
    """Characters per detected language, largest first (ties in first-seen order); zh counts double.

    ``[("zh", 0)]`` when nothing could be counted (e.g. empty text), as the official segmenter; note that
    symbols-only text such as emoji counts as "zh". Requires py3langid.
    """
    if text is None or not text.strip():
        return [("zh", 0)]
    if _identifier() is None:
        raise ModuleNotFoundError("py3langid is not installed (pip install 'songflow[multilingual]')")
    segmenter = _LineSegmenter(_classify)
    segmenter.scan(text)
    if not segmenter.counts:
        return [("zh", 0)]
    return sorted(segmenter.counts.items(), key=lambda item: item[1], reverse=True)


def detect_line_language(line: str) -> str:
    """The official ``get_lang(line)``: a language code such as "en", "zh", "ja", "gl" (may be unsupported).

    Top language by :func:`language_counts`; if that is "en" and another language was seen, the second.
    "en" when py3langid is missing (logged once) or when segmentation fails.
    """
    if _identifier() is None:
        return "en"
    try:
        counts = language_counts(line)
    except Exception as err:  # the official pipeline also answers "en" on any detection error
        logger.debug("language detection failed for %r: %s", line[:50], err)
        return "en"
    lang = counts[0][0]
    if lang == "en" and len(counts) > 1:
        lang = counts[1][0]
    return lang
