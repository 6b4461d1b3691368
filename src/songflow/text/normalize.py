"""Lyric text normalisation before VoiceBPE tokenisation (the official ``preprocess_text`` behaviour).

Per language (as the official ``VoiceBpeTokenizer``):

* ``ar cs de en es fr hu it nl pl pt ru tr zh ko``: :func:`clean_multilingual` -- drop ``"``, Turkish
  capital fixes, lowercase, expand numbers (currency, decimals, ordinals, integers), expand abbreviations
  (``mr.`` -> ``mister``), spell symbols (``%`` -> ``percent``), collapse whitespace. Chinese numbers are
  read by :func:`normalize_zh_numbers` (dates, money, phone numbers, fractions, percentages, digit strings)
  and every punctuation mark becomes ``,``. Each stage that fails on odd input keeps its input unchanged,
  as the official code does.
* then ``zh`` -> pinyin with tone digits (:func:`romanize_zh`), ``ko`` -> academic romanisation
  (:func:`romanize_ko`);
* ``ja`` -> cutlet romaji, lowercased (no cleaners); ``hi`` -> lowercase + whitespace collapse only.

The language libraries (num2words, pypinyin, cutlet/fugashi/unidic-lite, hangul-romanize) are the optional
``multilingual`` extra and are imported on first use. :func:`missing_libraries` tells the caller which of
them a line needs but cannot import, so it can fall back to the English path. English never needs any of
them: without num2words a built-in speller (:func:`spell_number_en` and friends) produces num2words' English
wording for cardinals below 10**66, ordinals, decimals and USD/GBP/EUR amounts.

The tables (abbreviations, symbol words, ordinal suffixes, the Chinese punctuation set, quantifiers and
currency units) are facts about the official behaviour; the code is an independent implementation.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import string
import threading
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from types import ModuleType

logger = logging.getLogger(__name__)

__all__ = [
    "CLEANER_LANGUAGES",
    "PREPROCESS_LANGUAGES",
    "UnsupportedLanguageError",
    "clean_multilingual",
    "collapse_whitespace",
    "missing_libraries",
    "normalize_zh_numbers",
    "optional_module",
    "preprocess",
    "read_zh_number",
    "romanize_ja",
    "romanize_ko",
    "romanize_zh",
    "spell_currency_en",
    "spell_decimal_en",
    "spell_number_en",
    "spell_ordinal_en",
]

#: Languages that go through :func:`clean_multilingual` (zh and ko are romanised afterwards).
CLEANER_LANGUAGES = frozenset(
    {"ar", "cs", "de", "en", "es", "fr", "hu", "it", "nl", "pl", "pt", "ru", "tr", "zh", "ko"}
)
#: Every language :func:`preprocess` accepts.
PREPROCESS_LANGUAGES = CLEANER_LANGUAGES | {"ja", "hi"}


class UnsupportedLanguageError(ValueError):
    """:func:`preprocess` was asked for a language the VoiceBPE front-end has no rules for."""


# --------------------------------------------------------------------------------------------------------
# Optional libraries
# --------------------------------------------------------------------------------------------------------

_IMPORT_LOCK = threading.Lock()
_MODULES: dict[str, ModuleType | None] = {}


def optional_module(name: str) -> ModuleType | None:
    """Import ``name`` once and cache it; ``None`` when it is not installed (or fails to import)."""
    if name not in _MODULES:
        with _IMPORT_LOCK:
            if name not in _MODULES:
                try:
                    _MODULES[name] = importlib.import_module(name)
                except Exception as err:  # ImportError, or a broken install (e.g. missing dictionary)
                    logger.debug("optional module %s unavailable: %s", name, err)
                    _MODULES[name] = None
    return _MODULES[name]


class RunSkippingPattern:
    """A regex whose scans skip start positions inside "runs", so long runs cost linear, not quadratic, time.

    Several official patterns (``[0-9.,]*[0-9]+£``, ``\\d+/\\d+``, ``\\W*\\d+\\W+...``) make the regex engine
    retry every position of a long digit or punctuation run, each retry scanning to the run's end: seconds
    to hours for one pathological 20,000-character line. For each run class ``C`` given here, an attempt
    that starts right after a ``C`` character on a ``C`` character must succeed exactly when the attempt one
    position earlier does. Such positions then only matter as the scan position itself (tried with a plain
    match); the search for later matches skips them with a guard. ``findall``/``sub``/``finditer`` return
    what the plain pattern's do (checked against it on random text in tests/test_lyrics.py).
    The pattern must not match the empty string.
    """

    def __init__(self, pattern: str, *run_classes: str):
        self.plain = re.compile(pattern)
        guard = "".join(f"(?:(?<!{c})|(?!{c}))" for c in run_classes)
        self._guarded = re.compile(f"{guard}(?:{pattern})")

    def first(self, text: str, pos: int = 0) -> re.Match | None:
        """The leftmost match starting at or after ``pos`` (like ``plain.search(text, pos)``)."""
        return self.plain.match(text, pos) or self._guarded.search(text, pos + 1)

    def finditer(self, text: str):
        pos = 0
        while pos <= len(text):
            match = self.first(text, pos)
            if match is None:
                return
            yield match
            pos = match.end() if match.end() > match.start() else match.end() + 1

    def findall(self, text: str) -> list:
        groups = self.plain.groups
        if groups == 0:
            return [m.group(0) for m in self.finditer(text)]
        if groups == 1:
            return [m.group(1) or "" for m in self.finditer(text)]
        return [tuple(g or "" for g in m.groups()) for m in self.finditer(text)]

    def sub(self, repl: Callable[[re.Match], str], text: str, count: int = 0) -> str:
        out, last = [], 0
        for n, match in enumerate(self.finditer(text), start=1):
            out += [text[last : match.start()], repl(match)]
            last = match.end()
            if n == count:
                break
        return "".join(out) + text[last:]


_ASCII_DIGIT_RE = re.compile(r"[0-9]")


def missing_libraries(text: str, lang: str) -> list[str]:
    """Python modules that :func:`preprocess` needs for ``text`` in ``lang`` but cannot import.

    English never needs a library (built-in number speller); other cleaner languages need num2words only
    when the text holds an ASCII digit (numbers, ordinals, currency).
    """
    needed: list[str] = []
    if lang == "zh":
        needed.append("pypinyin")
    elif lang == "ja":
        needed.append("cutlet")
    elif lang == "ko":
        needed.append("hangul_romanize")
    if lang in CLEANER_LANGUAGES and lang not in ("en", "zh") and _ASCII_DIGIT_RE.search(text):
        needed.append("num2words")
    return [name for name in needed if optional_module(name) is None]


# --------------------------------------------------------------------------------------------------------
# Generic cleaners
# --------------------------------------------------------------------------------------------------------

_WHITESPACE_RE = re.compile(r"\s+")


def collapse_whitespace(text: str) -> str:
    """Replace every whitespace run by one space (no stripping, as the official cleaner)."""
    return _WHITESPACE_RE.sub(" ", text)


def _abbreviation_rules(
    pairs: list[tuple[str, str]], *, needs_dot: bool = True
) -> list[tuple[re.Pattern, str]]:
    tail = r"\." if needs_dot else r"\b"
    return [(re.compile(r"\b" + short + tail, re.IGNORECASE), long) for short, long in pairs]


# Order matters within a language ("mrs" before "mr").
_ABBREVIATIONS: dict[str, list[tuple[re.Pattern, str]]] = {
    "en": _abbreviation_rules(
        [
            ("mrs", "misess"),
            ("mr", "mister"),
            ("dr", "doctor"),
            ("st", "saint"),
            ("co", "company"),
            ("jr", "junior"),
            ("maj", "major"),
            ("gen", "general"),
            ("drs", "doctors"),
            ("rev", "reverend"),
            ("lt", "lieutenant"),
            ("hon", "honorable"),
            ("sgt", "sergeant"),
            ("capt", "captain"),
            ("esq", "esquire"),
            ("ltd", "limited"),
            ("col", "colonel"),
            ("ft", "fort"),
        ]
    ),
    "es": _abbreviation_rules(
        [
            ("sra", "señora"),
            ("sr", "señor"),
            ("dr", "doctor"),
            ("dra", "doctora"),
            ("st", "santo"),
            ("co", "compañía"),
            ("jr", "junior"),
            ("ltd", "limitada"),
        ]
    ),
    "fr": _abbreviation_rules(
        [
            ("mme", "madame"),
            ("mr", "monsieur"),
            ("dr", "docteur"),
            ("st", "saint"),
            ("co", "compagnie"),
            ("jr", "junior"),
            ("ltd", "limitée"),
        ]
    ),
    "de": _abbreviation_rules(
        [("fr", "frau"), ("dr", "doktor"), ("st", "sankt"), ("co", "firma"), ("jr", "junior")]
    ),
    "pt": _abbreviation_rules(
        [
            ("sra", "senhora"),
            ("sr", "senhor"),
            ("dr", "doutor"),
            ("dra", "doutora"),
            ("st", "santo"),
            ("co", "companhia"),
            ("jr", "júnior"),
            ("ltd", "limitada"),
        ]
    ),
    "it": _abbreviation_rules(
        [
            ("sig", "signore"),
            ("dr", "dottore"),
            ("st", "santo"),
            ("co", "compagnia"),
            ("jr", "junior"),
            ("ltd", "limitata"),
        ]
    ),
    "pl": _abbreviation_rules(
        [("p", "pani"), ("m", "pan"), ("dr", "doktor"), ("sw", "święty"), ("jr", "junior")]
    ),
    "ar": [],
    "zh": [],
    "cs": _abbreviation_rules([("dr", "doktor"), ("ing", "inženýr"), ("p", "pan")]),
    # Russian abbreviations carry a hyphen instead of a trailing dot.
    "ru": _abbreviation_rules([("г-жа", "госпожа"), ("г-н", "господин"), ("д-р", "доктор")], needs_dot=False),
    "nl": _abbreviation_rules(
        [("dhr", "de heer"), ("mevr", "mevrouw"), ("dr", "dokter"), ("jhr", "jonkheer")]
    ),
    "tr": _abbreviation_rules([("b", "bay"), ("byk", "büyük"), ("dr", "doktor")]),
    "hu": _abbreviation_rules([("dr", "doktor"), ("b", "bácsi"), ("nőv", "nővér")]),
    "ko": [],
}

# Spoken words for & @ % # $ £ ° (in that order), per language.
_SYMBOL_ORDER = "&@%#$£°"
_SYMBOL_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("and", "at", "percent", "hash", "dollar", "pound", "degree"),
    "es": ("y", "arroba", "por ciento", "numeral", "dolar", "libra", "grados"),
    "fr": ("et", "arobase", "pour cent", "dièse", "dollar", "livre", "degrés"),
    "de": ("und", "at", "prozent", "raute", "dollar", "pfund", "grad"),
    "pt": ("e", "arroba", "por cento", "cardinal", "dólar", "libra", "graus"),
    "it": ("e", "chiocciola", "per cento", "cancelletto", "dollaro", "sterlina", "gradi"),
    "pl": ("i", "małpa", "procent", "krzyżyk", "dolar", "funt", "stopnie"),
    "ar": ("و", "على", "في المئة", "رقم", "دولار", "جنيه", "درجة"),
    "zh": ("和", "在", "百分之", "号", "美元", "英镑", "度"),
    "cs": ("a", "na", "procento", "křížek", "dolar", "libra", "stupně"),
    "ru": ("и", "собака", "процентов", "номер", "доллар", "фунт", "градус"),
    "nl": ("en", "bij", "procent", "hekje", "dollar", "pond", "graden"),
    "tr": ("ve", "at", "yüzde", "diyez", "dolar", "sterlin", "derece"),
    "hu": ("és", "kukac", "százalék", "kettőskereszt", "dollár", "font", "fok"),
    "ko": ("그리고", "에", "퍼센트", "번호", "달러", "파운드", "도"),
}


def _expand_abbreviations(text: str, lang: str) -> str:
    for pattern, long in _ABBREVIATIONS[lang]:
        text = pattern.sub(long, text)
    return text


def _expand_symbols(text: str, lang: str) -> str:
    for symbol, word in zip(_SYMBOL_ORDER, _SYMBOL_WORDS[lang], strict=True):
        text = text.replace(symbol, f" {word} ").replace("  ", " ")
    return text.strip()


# --------------------------------------------------------------------------------------------------------
# Number expansion for the non-Chinese cleaner languages (num2words, or the built-in English speller)
# --------------------------------------------------------------------------------------------------------

# Thousands separators: "1,234,567" (en, ru) and "1.234.567" (others). The dot in the second pattern is
# unescaped in the official code, so it stands for any character; only literal dots are removed.
_COMMA_GROUPED_RE = re.compile(r"\b\d{1,3}(?:,\d{3})*(?:\.\d+)?\b")
_DOT_GROUPED_RE = re.compile(r"\b\d{1,3}(?:.\d{3})*(?:,\d+)?\b")
# "[0-9.,]*[0-9]+£" is written "[0-9.,]*[0-9]£": the same matches without cubic backtracking.
_CURRENCY_RES = (
    ("GBP", RunSkippingPattern(r"£[0-9.,]*[0-9]+|[0-9.,]*[0-9]£", r"[0-9.,]")),
    ("USD", RunSkippingPattern(r"\$[0-9.,]*[0-9]+|[0-9.,]*[0-9]\$", r"[0-9.,]")),
    ("EUR", RunSkippingPattern(r"[0-9.,]*[0-9]€|€[0-9.,]*[0-9]+", r"[0-9.,]")),
)
_DECIMAL_RE = RunSkippingPattern(r"[0-9]+[.,][0-9]+", r"[0-9]")
_INTEGER_RE = re.compile(r"[0-9]+")
_ORDINAL_RES = {
    lang: RunSkippingPattern(r"([0-9]+)" + suffix, r"[0-9]")
    for lang, suffix in {
        "en": r"(?:st|nd|rd|th)",
        "es": r"(?:º|ª|er|o|a|os|as)",
        "fr": r"(?:º|ª|er|re|e|ème)",
        "de": r"(?:st|nd|rd|th|º|ª|\.(?=\s|$))",
        "pt": r"(?:º|ª|o|a|os|as)",
        "it": r"(?:º|°|ª|o|a|i|e)",
        "pl": r"(?:º|ª|st|nd|rd|th)",
        "ar": r"(?:ون|ين|ث|ر|ى)",
        "cs": r"\.(?=\s|$)",
        "ru": r"(?:-й|-я|-е|-ое|-ье|-го)",
        "nl": r"(?:de|ste|e)",
        "tr": r"(?:\.|inci|nci|uncu|üncü)",
        "hu": r"(?:\.|adik|edik|odik|ödik|ödike|ik)",
        "ko": r"(?:번째|번|차|째)",
    }.items()
}
# What separates the main unit from the cents in num2words' currency wording; for whole amounts the
# wording is cut at its last occurrence ("twelve dollars, zero cents" -> "twelve dollars").
_CURRENCY_JOINERS = {
    "en": ", ",
    "es": " con ",
    "fr": " et ",
    "de": " und ",
    "pt": " e ",
    "it": " e ",
    "pl": ", ",
    "cs": ", ",
    "ru": ", ",
    "nl": ", ",
    "ar": ", ",
    "tr": ", ",
    "hu": ", ",
    "ko": ", ",
}

NumberSpeller = Callable[..., str]


def _number_speller(lang: str) -> NumberSpeller:
    """num2words itself, or for English without num2words the built-in speller with the same signature."""
    module = optional_module("num2words")
    if module is not None:
        return module.num2words
    if lang != "en":
        raise UnsupportedLanguageError(
            f"spelling numbers in {lang!r} needs num2words (pip install num2words)"
        )
    return _builtin_num2words


def _expand_numbers(text: str, lang: str) -> str:
    if lang in ("en", "ru"):
        text = _COMMA_GROUPED_RE.sub(lambda m: m.group(0).replace(",", ""), text)
    else:
        text = _DOT_GROUPED_RE.sub(lambda m: m.group(0).replace(".", ""), text)
    if not _ASCII_DIGIT_RE.search(text):
        return text
    speak = _number_speller(lang)
    n2w_lang = "cz" if lang == "cs" else lang

    def currency(m: re.Match, code: str) -> str:
        amount = float(re.sub(r"[^\d.]", "", m.group(0).replace(",", ".")))
        words = speak(amount, to="currency", currency=code, lang=n2w_lang)
        if amount.is_integer():
            cut = words.rfind(_CURRENCY_JOINERS[lang])
            if cut != -1:
                words = words[:cut]
        return words

    try:
        for code, pattern in _CURRENCY_RES:
            text = pattern.sub(lambda m, code=code: currency(m, code), text)
    except (KeyError, TypeError, AttributeError):
        pass  # official: a currency failure skips the remaining currencies, nothing else
    if lang != "tr":
        text = _DECIMAL_RE.sub(lambda m: speak(float(m.group(0).replace(",", ".")), lang=n2w_lang), text)
    text = _ORDINAL_RES[lang].sub(lambda m: speak(int(m.group(1)), ordinal=True, lang=n2w_lang), text)
    return _INTEGER_RE.sub(lambda m: speak(int(m.group(0)), lang=n2w_lang), text)


_STAGE_ERRORS = (KeyError, TypeError, AttributeError, ValueError)


def clean_multilingual(text: str, lang: str) -> str:
    """The official "multilingual_cleaners" for one of :data:`CLEANER_LANGUAGES`.

    A stage that raises KeyError/TypeError/AttributeError/ValueError is skipped (its input is kept);
    any other error (e.g. num2words' OverflowError on a 400-digit number) propagates.
    """
    text = text.replace('"', "")
    if lang == "tr":
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    number_stage = normalize_zh_numbers if lang == "zh" else (lambda t: _expand_numbers(t, lang))
    for stage in (number_stage, lambda t: _expand_abbreviations(t, lang), lambda t: _expand_symbols(t, lang)):
        try:
            text = stage(text)
        except _STAGE_ERRORS:
            pass
    return collapse_whitespace(text)


# --------------------------------------------------------------------------------------------------------
# Built-in English number speller (num2words-compatible wording)
# --------------------------------------------------------------------------------------------------------

_EN_SMALL = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_EN_SCALES = (
    "thousand million billion trillion quadrillion quintillion sextillion septillion octillion nonillion "
    "decillion undecillion duodecillion tredecillion quattuordecillion quindecillion sexdecillion "
    "septdecillion octodecillion novemdecillion vigintillion"
).split()
_EN_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_EN_CURRENCY_FORMS = {
    "USD": (("dollar", "dollars"), ("cent", "cents")),
    "GBP": (("pound sterling", "pounds sterling"), ("penny", "pence")),
    "EUR": (("euro", "euro"), ("cent", "cents")),
}


def _spell_below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if rest < 20:
        tail = _EN_SMALL[rest]
    else:
        tens, ones = divmod(rest, 10)
        tail = _EN_TENS[tens] + (f"-{_EN_SMALL[ones]}" if ones else "")
    if not hundreds:
        return tail
    head = f"{_EN_SMALL[hundreds]} hundred"
    return f"{head} and {tail}" if rest else head


def spell_number_en(n: int) -> str:
    """English cardinal as num2words writes it ("one thousand, two hundred and thirty-four").

    Numbers of 10**66 and above (beyond "vigintillion") are read digit by digit.
    """
    if n < 0:
        return "minus " + spell_number_en(-n)
    if n < 1000:
        return _spell_below_1000(n)
    if n >= 1000 ** (len(_EN_SCALES) + 1):
        return " ".join(_EN_SMALL[int(d)] for d in str(n))
    groups: list[tuple[int, int]] = []  # (value, scale index) for non-zero 3-digit groups, high first
    scale = 0
    while n:
        n, group = divmod(n, 1000)
        if group:
            groups.append((group, scale))
        scale += 1
    groups.reverse()
    words = ""
    for value, scale in groups:
        part = _spell_below_1000(value) + (f" {_EN_SCALES[scale - 1]}" if scale else "")
        if not words:
            words = part
        elif scale == 0 and value < 100:
            words += f" and {part}"
        else:
            words += f", {part}"
    return words


def spell_ordinal_en(n: int) -> str:
    """English ordinal as num2words writes it ("twenty-first", "one hundredth")."""
    cardinal = spell_number_en(n)
    head, sep, last = cardinal.rpartition(" ")
    stem_head, dash, word = last.rpartition("-")
    if word in _EN_ORDINAL_WORDS:
        word = _EN_ORDINAL_WORDS[word]
    else:
        word = (word[:-1] + "ie" if word.endswith("y") else word) + "th"
    return head + sep + stem_head + dash + word


def spell_decimal_en(value: float) -> str:
    """English reading of a float ("twelve point five"), digit by digit after the point like num2words."""
    if value.is_integer():
        return spell_number_en(int(value))
    whole = int(value)
    places = abs(Decimal(str(value)).as_tuple().exponent)
    fraction = abs(value - whole) * 10**places
    fraction_int = (
        int(round(fraction)) if abs(round(fraction) - fraction) < 0.01 else int(math.floor(fraction))
    )
    sign = "minus " if value < 0 and whole == 0 else ""
    digits = str(fraction_int).zfill(places)[:places]
    return sign + spell_number_en(whole) + " point " + " ".join(_EN_SMALL[int(d)] for d in digits)


def spell_currency_en(amount: float, currency: str = "USD") -> str:
    """English money wording as num2words writes it ("five dollars, fifty cents")."""
    if currency not in _EN_CURRENCY_FORMS:
        raise KeyError(currency)
    (one_main, many_main), (one_cent, many_cent) = _EN_CURRENCY_FORMS[currency]
    quantized = Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    main, cents = divmod(int(abs(quantized) * 100), 100)
    sign = "minus " if quantized < 0 else ""
    main_word = one_main if main == 1 else many_main
    cent_word = one_cent if cents == 1 else many_cent
    return f"{sign}{spell_number_en(main)} {main_word}, {spell_number_en(cents)} {cent_word}"


def _builtin_num2words(
    value, lang: str = "en", to: str = "cardinal", ordinal: bool = False, currency: str = "USD"
):
    if lang != "en":
        raise UnsupportedLanguageError(f"the built-in number speller only knows English, not {lang!r}")
    if to == "currency":
        return spell_currency_en(float(value), currency)
    if ordinal:
        return spell_ordinal_en(int(value))
    if isinstance(value, float):
        return spell_decimal_en(value)
    return spell_number_en(int(value))


# --------------------------------------------------------------------------------------------------------
# Chinese number normalisation (behaviour of the TextNorm used by the official zh cleaner)
# --------------------------------------------------------------------------------------------------------

_ZH_DIGIT_CHARS = "零一二三四五六七八九"
_ZH_LIANG = "两"
_ZH_POINT = "点"
# power of ten -> unit character ("mid" numbering: 亿 = 10^8, 兆 = 10^12, ...)
_ZH_UNITS = {1: "十", 2: "百", 3: "千", 4: "万"} | {
    8 + 4 * i: c for i, c in enumerate("亿兆京垓秭穰沟涧正载")
}
_ZH_UNIT_POWERS_DESC = sorted(_ZH_UNITS, reverse=True)

# Punctuation that becomes "," after number normalisation (Chinese stops + non-stops + ASCII punctuation).
_ZH_PUNCTUATION = (
    "！？｡。"
    "＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-"
    + string.punctuation
)
_ZH_PUNCTUATION_TO_COMMA = str.maketrans({c: "," for c in _ZH_PUNCTUATION})

_ZH_CURRENCY_UNITS = (
    r"((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
)
_ZH_QUANTIFIERS = (
    "(匹|张|座|回|场|尾|条|个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|"
    "砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|"
    "针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|"
    "毫|厘|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|"
    "盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|旬|"
    "纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块)"
)
_ZH_DATE_RE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
_ZH_MONEY_RE = RunSkippingPattern(
    r"\D+((\d+(\.\d+)?)[多余几]?" + _ZH_CURRENCY_UNITS + r"(\d" + _ZH_CURRENCY_UNITS + r"?)?)", r"\D"
)
_ZH_MOBILE_RE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_ZH_LANDLINE_RE = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_ZH_FRACTION_RE = RunSkippingPattern(r"(\d+/\d+)", r"\d")
_ZH_PERCENT_RE = RunSkippingPattern(r"(\d+(\.\d+)?%)", r"\d")
_ZH_QUANTITY_RE = RunSkippingPattern(r"(\d+(\.\d+)?)[多余几]?" + _ZH_QUANTIFIERS, r"\d")
_ZH_DIGIT_STRING_RE = re.compile(r"(\d{4,32})")
_ZH_CARDINAL_RE = re.compile(r"(\d+(\.\d+)?)")
_ZH_LATIN_TWO_LATIN_RE = RunSkippingPattern(r"(([a-zA-Z]+)二([a-zA-Z]+))", r"[a-zA-Z]")
_ZH_NUMBER_IN_MONEY_RE = re.compile(r"\d+(?:\.\d+)?")

# A reading is a list of symbols: ("d", digit), ("u", power of ten) or ("p", None) for the decimal point.
_Symbol = tuple[str, "int | None"]


def _zh_grouped(digits: str) -> list[_Symbol]:
    """Read an integer string with units, recursively on the largest unit shorter than the number."""
    significant = digits.lstrip("0")
    if not significant:
        return []
    if len(significant) == 1:
        lead_zero = [("d", 0)] if len(digits) != len(significant) else []
        return lead_zero + [("d", int(significant))]
    power = next(p for p in _ZH_UNIT_POWERS_DESC if p < len(significant))
    # The head keeps the caller's leading zeros ("0123" reads 零一百二十三, as the official code does).
    return _zh_grouped(digits[:-power]) + [("u", power)] + _zh_grouped(significant[-power:])


def read_zh_number(number: str, *, use_units: bool = True, use_liang: bool = True) -> str:
    """Chinese reading of a decimal number string: "2024" -> 二千零二十四, "3.5" -> 三点五, "10" -> 十.

    ``use_units=False`` reads digit by digit (二零二四); ``use_liang`` writes 两 for a 2 before 百/千/万...
    (not before 十). More than one dot raises ValueError.
    """
    whole, *rest = number.split(".")
    if len(rest) > 1:
        raise ValueError(f"invalid number string with more than one dot: {number!r}")
    fraction = rest[0] if rest else ""
    if use_units and len(whole) > 1:
        symbols = _zh_grouped(whole)
    else:
        symbols = [("d", int(c)) for c in whole]
    if fraction:
        symbols += [("p", None)] + [("d", int(c)) for c in fraction]
    chars = []
    for i, (kind, value) in enumerate(symbols):
        if kind == "d":
            char = _ZH_DIGIT_CHARS[value]
            if use_liang and value == 2:
                nxt = symbols[i + 1] if i + 1 < len(symbols) else None
                prev = symbols[i - 1] if i > 0 else None
                if (
                    nxt is not None
                    and nxt[0] == "u"
                    and nxt[1] != 1
                    and (prev is None or (prev[0] == "u" and prev[1] != 1))
                ):
                    char = _ZH_LIANG
        elif kind == "u":
            char = _ZH_UNITS[value]
        else:
            char = _ZH_POINT
        chars.append(char)
    text = "".join(chars)
    if text.startswith(_ZH_POINT):
        return _ZH_DIGIT_CHARS[0] + text
    if len(text) >= 2 and text[0] == "一" and text[1] == "十":
        text = text[1:]
    return text


def _zh_date(date: str) -> str:
    year, sep, rest = date.strip().partition("年")
    if sep:
        year = read_zh_number(year, use_units=False, use_liang=False) + "年"
    else:
        year, rest = "", date
    if not rest:
        return year
    month, sep, day = rest.strip().partition("月")
    if sep:
        month = read_zh_number(month) + "月"
    else:  # cannot happen for regex matches; mirrors the official fallback
        month, day = "", date
    if day:
        day = read_zh_number(day[:-1]) + day[-1]
    return year + month + day


def _zh_money(money: str) -> str:
    for number in _ZH_NUMBER_IN_MONEY_RE.findall(money):
        money = money.replace(number, read_zh_number(number))
    return money


def _zh_phone(number: str, *, landline: bool) -> str:
    parts = number.split("-") if landline else number.strip("+").split()
    return "".join(read_zh_number(p, use_units=False, use_liang=False) for p in parts)


def _zh_fraction(fraction: str) -> str:
    numerator, denominator = fraction.split("/")
    return read_zh_number(denominator) + "分之" + read_zh_number(numerator)


def _replace_found(pattern: re.Pattern | RunSkippingPattern, text: str, convert: Callable[[str], str]) -> str:
    """Find all matches first, then replace the first remaining occurrence of each (official scheme)."""
    for found in pattern.findall(text):
        value = found[0] if isinstance(found, tuple) else found
        text = text.replace(value, convert(value), 1)
    return text


def normalize_zh_numbers(text: str) -> str:
    """Read numbers in Chinese text and turn punctuation into ``,`` (the official zh number stage).

    Order: dates (2024年 -> 二零二四年), money (50元 -> 五十元), mobile and landline phone numbers (digit by
    digit), fractions (3/4 -> 四分之三), percentages (100% -> 百分之一百), number + measure word, digit
    strings of 4..32 digits (1999 -> 一九九九), remaining numbers (3.5 -> 三点五), letters-2-letters
    (P2P) restored; finally every Chinese or ASCII punctuation mark becomes ``,``.
    """
    text = "^" + text + "$"
    text = _replace_found(_ZH_DATE_RE, text, _zh_date)
    text = _replace_found(_ZH_MONEY_RE, text, _zh_money)
    text = _replace_found(_ZH_MOBILE_RE, text, lambda t: _zh_phone(t, landline=False))
    text = _replace_found(_ZH_LANDLINE_RE, text, lambda t: _zh_phone(t, landline=True))
    text = _replace_found(_ZH_FRACTION_RE, text, _zh_fraction)
    text = text.replace("％", "%")
    text = _replace_found(_ZH_PERCENT_RE, text, lambda t: "百分之" + read_zh_number(t.strip().strip("%")))
    text = _replace_found(_ZH_QUANTITY_RE, text, read_zh_number)
    text = _replace_found(
        _ZH_DIGIT_STRING_RE, text, lambda t: read_zh_number(t, use_units=False, use_liang=False)
    )
    text = _replace_found(_ZH_CARDINAL_RE, text, read_zh_number)
    for whole, left, right in _ZH_LATIN_TWO_LATIN_RE.findall(text):
        text = text.replace(whole, left + "2" + right, 1)
    text = text.lstrip("^").rstrip("$")
    return text.translate(_ZH_PUNCTUATION_TO_COMMA)


# --------------------------------------------------------------------------------------------------------
# Romanisation
# --------------------------------------------------------------------------------------------------------


def _require(name: str) -> ModuleType:
    module = optional_module(name)
    if module is None:
        raise ModuleNotFoundError(f"{name} is not installed (pip install 'songflow[multilingual]')")
    return module


def romanize_zh(text: str) -> str:
    """Pinyin with tone digits, syllables glued together: "我走过" -> "wo3zou3guo4" (needs pypinyin)."""
    pypinyin = _require("pypinyin")
    readings = pypinyin.pinyin(text, style=pypinyin.Style.TONE3, heteronym=False, neutral_tone_with_five=True)
    return "".join(item[0] for item in readings)


_KO_TRANSLITERATOR = None
_JA_ROMANIZER = None
_JA_LOCK = threading.Lock()


def romanize_ko(text: str) -> str:
    """Academic romanisation of Hangul: "사랑해요" -> "salanghae-yo" (needs hangul-romanize)."""
    global _KO_TRANSLITERATOR
    if _KO_TRANSLITERATOR is None:
        hangul = _require("hangul_romanize")
        rule = importlib.import_module("hangul_romanize.rule")
        _KO_TRANSLITERATOR = hangul.Transliter(rule.academic)
    return _KO_TRANSLITERATOR.translit(text)


def romanize_ja(text: str) -> str:
    """cutlet romaji, default settings: "東京タワー" -> "Tokyo tower" (needs cutlet, fugashi, unidic-lite).

    Not lowercased here; :func:`preprocess` lowercases. The shared MeCab tagger is not thread-safe, so
    calls are serialised.
    """
    global _JA_ROMANIZER
    with _JA_LOCK:
        if _JA_ROMANIZER is None:
            _JA_ROMANIZER = _require("cutlet").Cutlet()
        return _JA_ROMANIZER.romaji(text)


# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------


def preprocess(text: str, lang: str) -> str:
    """Normalise ``text`` for VoiceBPE in language ``lang`` (no region suffix: "zh", not "zh-cn").

    Raises :class:`UnsupportedLanguageError` for languages outside :data:`PREPROCESS_LANGUAGES` and
    ModuleNotFoundError when a needed optional library is missing (check :func:`missing_libraries` first).
    """
    if lang in CLEANER_LANGUAGES:
        text = clean_multilingual(text, lang)
        if lang == "zh":
            text = romanize_zh(text)
        elif lang == "ko":
            text = romanize_ko(text)
        return text
    if lang == "ja":
        return romanize_ja(text).lower()
    if lang == "hi":
        return collapse_whitespace(text.lower())
    supported = ", ".join(sorted(PREPROCESS_LANGUAGES))
    raise UnsupportedLanguageError(
        f"no lyric preprocessing rules for language {lang!r}; supported: {supported}"
    )
