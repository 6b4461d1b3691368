"""The text of an ACE-Step 1.5 song plan: the CoT block the 5 Hz LM reads and writes, and audio-code strings.

Pure strings (rank 0, no torch, no PyYAML). Facts: ``../shared/acestep_v15/SPEC.md`` §7.

* :func:`format_cot` writes the phase-2 CoT block ``"<think>\\n{yaml}\\n</think>"`` exactly as the official
  ``_format_metadata_as_cot``: the non-``None`` fields of :data:`METADATA_FIELDS`, ``"N/4"`` time signatures
  shortened to ``"N"``, digit strings turned into ints, then ``yaml.dump(..., allow_unicode=True,
  sort_keys=True).strip()``. The YAML is written here by :func:`yaml_scalar`, which reproduces PyYAML's
  choice of scalar style (plain, single or double quoted; the block styles are never chosen for a plain
  ``str``) and its line folding at 80 columns, for ints, floats and any string — multi-line captions
  included (tested against PyYAML with hypothesis).
* :func:`parse_plan_output` reads an LM output as the official ``parse_lm_output``: ``key: value`` lines of
  the ``<think>`` block (continuation lines start with a space or tab), YAML quotes are *not* removed,
  ``bpm``/``duration`` become ints when they parse, the caption's lines are stripped and joined by spaces.
* :func:`codes_from_text` / :func:`codes_to_text` convert ``<|audio_code_K|>`` strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from songflow.errors import ConfigError

__all__ = [
    "METADATA_FIELDS",
    "codes_from_text",
    "codes_to_text",
    "format_cot",
    "parse_plan_output",
    "postprocess_caption",
    "yaml_scalar",
]

#: the CoT fields in the (sorted) order the official planner writes them
METADATA_FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")

_CODE_RE = re.compile(r"<\|audio_code_(\d+)\|>")
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_REASONING_RE = re.compile(r"<reasoning>(.*?)</reasoning>", re.DOTALL)

# --- YAML scalar emitter (PyYAML 6 rules for a value of a top-level block mapping) --------------------

_WIDTH = 80  # PyYAML best_width
_INDENT = 2  # indentation of continuation lines of a top-level mapping value
_BREAKS = "\n\x85\u2028\u2029"
_BLANKS = "\0 \t\r\n\x85\u2028\u2029"
_ESCAPES = {
    "\0": "0", "\x07": "a", "\x08": "b", "\x09": "t", "\x0a": "n", "\x0b": "v", "\x0c": "f", "\x0d": "r",
    "\x1b": "e", '"': '"', "\\": "\\", "\x85": "N", "\xa0": "_", "\u2028": "L", "\u2029": "P",
}  # fmt: skip

# plain strings that a YAML 1.1 loader would read as another type (PyYAML's implicit resolvers, by first char)
_IMPLICIT = (
    ("yYnNtTfFoO", re.compile(
        r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")),
    ("-+0123456789.", re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")),
    ("-+0123456789", re.compile(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+"
        r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$")),
    ("<", re.compile(r"^(?:<<)$")),
    ("~nN", re.compile(r"^(?:~|null|Null|NULL|)$")),
    ("0123456789", re.compile(
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?"
        r"(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?"
        r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$")),
    ("=", re.compile(r"^(?:=)$")),
)  # fmt: skip


def _resolves_to_other_type(text: str) -> bool:
    """True when a plain ``text`` would load as null/bool/int/float/timestamp/merge/value, not a string."""
    if text == "":
        return True
    return any(text[0] in first and regex.match(text) for first, regex in _IMPLICIT)


def _is_printable(ch: str) -> bool:
    """A character YAML may write unescaped (with allow_unicode)."""
    if ch == "\n" or "\x20" <= ch <= "\x7e":
        return True
    return (
        ch == "\x85"
        or "\xa0" <= ch <= "\ud7ff"
        or "\ue000" <= ch <= "\ufffd"
        or "\U00010000" <= ch < "\U0010ffff"
    ) and ch != "\ufeff"


def _indicator_flags(text: str) -> tuple[bool, bool]:
    """(flow_indicators, block_indicators) of a non-empty scalar, as PyYAML's analysis."""
    flow = block = text.startswith("---") or text.startswith("...")
    for i, ch in enumerate(text):
        followed_by_blank = i + 1 >= len(text) or text[i + 1] in _BLANKS
        if i == 0:
            if ch in "#,[]{}&*!|>'\"%@`" or (ch == "-" and followed_by_blank):
                flow = block = True
            if ch in "?:":
                flow = True
                block = block or followed_by_blank
        else:
            if ch in ",?[]{}":
                flow = True
            if ch == ":":
                flow = True
                block = block or followed_by_blank
            if ch == "#" and text[i - 1] in _BLANKS:
                flow = block = True
    return flow, block


def _choose_style(text: str) -> str:
    """PyYAML's style for a ``str`` value in block context: ``""`` plain, ``"'"`` or ``'"'``."""
    if not text:
        return "'"  # the empty string resolves to null -> quoted
    _, block = _indicator_flags(text)
    special = any(not _is_printable(ch) for ch in text)
    line_breaks = any(ch in _BREAKS for ch in text)
    space_break = break_space = False
    for prev, ch in zip(text, text[1:], strict=False):
        space_break = space_break or (prev == " " and ch in _BREAKS)
        break_space = break_space or (prev in _BREAKS and ch == " ")
    edge_blank = text[0] in " " + _BREAKS or text[-1] in " " + _BREAKS
    plain_ok = not (edge_blank or break_space or space_break or special or line_breaks or block)
    if plain_ok and not _resolves_to_other_type(text):
        return ""
    if not (break_space or space_break or special):
        return "'"
    return '"'


class _Writer:
    """Column bookkeeping of PyYAML's emitter while it writes one mapping value (indent 2, width 80)."""

    def __init__(self, column: int) -> None:
        self.out: list[str] = []
        self.column = column
        self.whitespace = False  # the last thing written was whitespace (PyYAML `whitespace`)
        self.indention = False  # only indentation on this line so far (PyYAML `indention`)

    def write(self, data: str) -> None:
        self.out.append(data)
        self.column += len(data)

    def line_break(self, data: str = "\n") -> None:
        self.out.append(data)
        self.column = 0
        self.whitespace = self.indention = True

    def indent(self) -> None:
        if not self.indention or self.column > _INDENT or (self.column == _INDENT and not self.whitespace):
            self.line_break()
        if self.column < _INDENT:
            self.whitespace = True
            self.out.append(" " * (_INDENT - self.column))
            self.column = _INDENT

    def breaks(self, chunk: str) -> None:
        """Write a run of line breaks of a quoted/plain scalar (the first ``\\n`` is doubled), then indent."""
        if chunk[0] == "\n":
            self.line_break()
        for br in chunk:
            self.line_break("\n" if br == "\n" else br)
        self.indent()


def _split_runs(text: str) -> list[str]:
    """``text`` cut into runs of spaces, runs of line breaks and runs of other characters."""
    runs: list[str] = []
    for ch in text:
        kind = 0 if ch == " " else 1 if ch in _BREAKS else 2
        if runs and (0 if runs[-1][0] == " " else 1 if runs[-1][0] in _BREAKS else 2) == kind:
            runs[-1] += ch
        else:
            runs.append(ch)
    return runs


def _write_plain(w: _Writer, text: str) -> None:
    w.write(" ")
    for i, run in enumerate(_split_runs(text)):
        if run[0] == " " and len(run) == 1 and w.column > _WIDTH and i > 0:
            w.indent()
            w.whitespace = w.indention = False
        elif run[0] in _BREAKS:
            w.breaks(run)
            w.whitespace = w.indention = False
        else:
            w.write(run)


def _write_single_quoted(w: _Writer, text: str) -> None:
    w.write(" '")
    runs = _split_runs(text)
    pos = 0
    for run in runs:
        if run[0] == " ":
            last = pos + len(run) == len(text)
            if len(run) == 1 and w.column > _WIDTH and pos != 0 and not last:
                w.indent()
            else:
                w.write(run)
        elif run[0] in _BREAKS:
            w.breaks(run)
        else:
            w.write(run.replace("'", "''"))
        pos += len(run)
    w.write("'")


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return "\\" + _ESCAPES[ch]
    if ch <= "\xff":
        return f"\\x{ord(ch):02X}"
    if ch <= "\uffff":
        return f"\\u{ord(ch):04X}"
    return f"\\U{ord(ch):08X}"


def _needs_escape(ch: str) -> bool:
    if ch in '"\\\x85\u2028\u2029\ufeff':
        return True
    return not ("\x20" <= ch <= "\x7e" or "\xa0" <= ch <= "\ud7ff" or "\ue000" <= ch <= "\ufffd")


def _write_double_quoted(w: _Writer, text: str) -> None:
    w.write(' "')
    start = 0
    for end in range(len(text) + 1):
        ch = text[end] if end < len(text) else None
        if ch is None or _needs_escape(ch):
            if start < end:
                w.write(text[start:end])
                start = end
            if ch is not None:
                w.write(_escape(ch))
                start = end + 1
        if 0 < end < len(text) - 1 and (ch == " " or start >= end) and w.column + (end - start) > _WIDTH:
            w.write(text[start:end] + "\\")
            start = max(start, end)
            w.indent()
            w.whitespace = w.indention = False
            if text[start] == " ":
                w.write("\\")
    w.write('"')


def _float_text(value: float) -> str:
    if value != value:
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value).lower()
    return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text


def yaml_scalar(key: str, value: Any) -> str:
    """``key: value`` as PyYAML writes it inside a top-level block mapping (no trailing newline).

    ``value``: int, float or str (bool/None/others raise :class:`ConfigError`). Long strings fold at column
    80 and multi-line strings are quoted, with continuation lines indented by 2 spaces, as PyYAML does.
    """
    w = _Writer(column=len(key) + 1)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(
            f"plan field {key!r}: cannot write {type(value).__name__} {value!r}; give a number or text"
        )
    if isinstance(value, int):
        w.write(f" {value}")
    elif isinstance(value, float):
        w.write(f" {_float_text(value)}")
    else:
        style = _choose_style(value)
        writer = {"": _write_plain, "'": _write_single_quoted, '"': _write_double_quoted}[style]
        writer(w, value)
    return f"{key}:" + "".join(w.out)


def cot_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The CoT fields of ``metadata`` as the official planner puts them into YAML: non-``None`` fields of
    :data:`METADATA_FIELDS` only, ``"N/4"`` time signature -> ``"N"``, digit strings -> int."""
    items: dict[str, Any] = {}
    for key in METADATA_FIELDS:
        value = metadata.get(key)
        if value is None:
            continue
        if key == "timesignature" and isinstance(value, str) and value.endswith("/4"):
            value = value.split("/")[0]
        if isinstance(value, str) and value.isdigit():
            try:
                value = int(value)
            except ValueError:  # str.isdigit() accepts e.g. superscripts that int() refuses: keep the text
                pass
        items[key] = value
    return items


def format_cot(metadata: Mapping[str, Any]) -> str:
    """The phase-2 CoT block ``"<think>\\n{yaml}\\n</think>"`` of ``metadata`` (official
    ``_format_metadata_as_cot``; the YAML equals ``yaml.dump(items, allow_unicode=True, sort_keys=True)``
    stripped)."""
    items = cot_values(metadata)
    body = "\n".join(yaml_scalar(key, items[key]) for key in sorted(items))
    return f"<think>\n{body.strip()}\n</think>"


# --- parsing ---------------------------------------------------------------------------------------------


def postprocess_caption(caption: str) -> str:
    """A YAML multi-line caption as one line: every line stripped, empty lines dropped, joined by spaces."""
    if not caption:
        return caption
    return " ".join(line.strip() for line in caption.split("\n") if line.strip())


def _int_or_text(value: str) -> int | str:
    try:
        return int(value.strip())
    except ValueError:
        return value.strip()


def _field_value(key: str, lines: list[str]) -> Any:
    value = "\n".join(lines)
    if key in ("bpm", "duration"):
        return _int_or_text(value)
    if key == "caption":
        return postprocess_caption(value)
    return value.strip()


def _reasoning_text(text: str) -> str:
    """The ``<think>`` (else ``<reasoning>``) block; when there is none or it is blank, the text before the
    first audio code (an unclosed ``<think>`` of a phase-1 output lands here)."""
    for regex in (_THINK_RE, _REASONING_RE):
        match = regex.search(text)
        if match:
            return match.group(1).strip() or text.split("<|audio_code_")[0].strip()
    return text.split("<|audio_code_")[0].strip()


_KNOWN_KEYS = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")


def parse_plan_output(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, audio-code string) of an LM output, as the official ``parse_lm_output``.

    metadata keys: any of bpm (int, or str when not a number), caption (one line), duration (int or str),
    genres, keyscale, language, timesignature (str); the code string is every ``<|audio_code_K|>`` in order.
    """
    audio_codes = "".join(m.group(0) for m in _CODE_RE.finditer(text))
    metadata: dict[str, Any] = {}
    key: str | None = None
    lines: list[str] = []

    def save() -> None:
        if key in _KNOWN_KEYS and lines:
            metadata[key] = _field_value(key, lines)

    for line in _reasoning_text(text).split("\n"):
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            save()
            name, first = line.split(":", 1)
            key, lines = name.strip().lower(), ([first] if first.strip() else [])
        elif line.startswith((" ", "\t")) and key:
            lines.append(line)
    save()
    return metadata, audio_codes


def codes_from_text(text: str) -> list[int]:
    """All ``<|audio_code_K|>`` values of ``text``, in order."""
    return [int(m.group(1)) for m in _CODE_RE.finditer(text)]


def codes_to_text(codes: Iterable[int]) -> str:
    """``<|audio_code_K|>`` tokens of ``codes``, concatenated."""
    return "".join(f"<|audio_code_{int(code)}|>" for code in codes)
