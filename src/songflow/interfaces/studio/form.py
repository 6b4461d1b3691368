"""The studio's forms, derived from the request dataclasses of the loaded model family's request schema
(``songflow.requests`` for ACE-Step v1, ``songflow.requests_v15`` for 1.5); no gradio here.

Every function taking ``schema`` (a :class:`songflow.requests.RequestSchema`) defaults to v1's.

Every form field comes from a dataclass field: its widget kind from the type hint, its default from the
dataclass default, its choices from a ``Literal``, its label from the name (units from the suffix:
``_s`` seconds, ``_frac`` a fraction in [0, 1]) and its help from the class docstring's sentence naming it.
The advanced settings take their defaults from the loaded model family's ``default_params`` where the
caller passes them (:func:`params_fields`, :func:`build_request`).
So the studio, the CLI and the REST API cannot drift apart: a new request field appears everywhere.

:func:`build_request` turns widget values into a request (validation stays in the dataclasses) and
:func:`form_values` is its inverse, used to reload a history entry into the form.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from songflow.errors import ConfigError
from songflow.requests import V1_SCHEMA, GenerationParams, LoraRef, Request, RequestSchema
from songflow.requests_v15 import V15_SCHEMA, VALID_LANGUAGES

# widget kinds
BOOL, CHOICE, INT, FLOAT, TEXT, LONG_TEXT, INTS, AUDIO, FLOATS = (
    "bool",
    "choice",
    "int",
    "float",
    "text",
    "long_text",
    "ints",
    "audio",
    "floats",
)
# fields that are not plain widgets: the sampler settings and the adapters have their own panels
_NESTED = frozenset({"params", "loras"})
# GenerationParams fields shown in the main form next to the prompt, not among the advanced settings
MAIN_PARAMS = ("seeds", "batch_size")
_ACRONYMS = {"erg": "ERG", "lora": "LoRA", "oss": "OSS", "apg": "APG", "cfg": "CFG", "bpm": "BPM", "lm": "LM"}
# field names said otherwise in a musician's words (before the unit suffix is read)
_NAMED = {"key_scale": "Key"}


@dataclass(frozen=True)
class FormField:
    """One form widget for the dataclass field ``name``.

    ``default`` is the dataclass default (None when the field has none); ``optional`` fields accept
    None ("not given": an empty widget); ``required`` fields have no default. ``low``/``high`` bound a
    numeric widget: the field's ``ge``/``le`` metadata, else what the name's unit says (``_frac`` fields lie
    in [0, 1], ``_s`` fields from 0).
    """

    name: str
    kind: str
    label: str
    help: str
    default: Any = None
    required: bool = False
    optional: bool = False
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    choice_labels: tuple[str, ...] = ()  # what the dropdown shows for each choice (empty: the choices)
    custom_choice: bool = False  # the choices are suggestions: any text may be typed (checked on submit)


# a field's ``unit`` metadata -> the short unit its label shows
_UNIT_SHORT = {"seconds": "s", "fraction": "0-1", "hertz": "Hz"}


def is_compat_switch(name: str) -> bool:
    """Whether :class:`GenerationParams` field ``name`` is a reference-compatibility switch (``legacy_*``
    and ``omega_mean_over``): it reproduces or fixes a quirk of the reference code, not a musical choice."""
    return name.startswith("legacy_") or name == "omega_mean_over"


def _words(name: str) -> tuple[str, str]:
    """``(words, unit)`` of a field name: ``duration_s`` -> ("Duration", "s"), ``source_path`` ->
    ("Source audio", ""), ``n_min_frac`` -> ("N min", "0-1"), ``use_erg_tag`` -> ("Use ERG tag", "")."""
    unit = ""
    if name in _NAMED:
        return _NAMED[name], unit
    if name.endswith("_path"):
        name = name.removesuffix("_path") + "_audio"
    elif name.endswith("_frac"):
        name, unit = name.removesuffix("_frac"), "0-1"
    elif name.endswith("_s"):
        name, unit = name.removesuffix("_s"), "s"
    text = " ".join(_ACRONYMS.get(w, w) for w in name.split("_") if w)
    return text[:1].upper() + text[1:], unit


def _label(name: str, metadata: Mapping[str, Any] | None = None) -> str:
    """The widget label: the field's ``label`` metadata, else its humanised name, with its unit (the
    ``unit`` metadata, else the name's suffix): "Duration (s)", "Variance (0-1)", "Source audio"."""
    metadata = metadata or {}
    words, unit = _words(name)
    unit = _UNIT_SHORT.get(metadata.get("unit", ""), metadata.get("unit")) or unit
    words = metadata.get("label") or words
    return f"{words} ({unit})" if unit and f"({unit})" not in words else words


def _mention(cls: type, name: str) -> str | None:
    """How running text names field ``name`` of ``cls`` (its label without the unit, lower case), or None
    when ``cls`` has no such field."""
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    if name not in fields:
        return None
    words = re.sub(r"\s*\([^()]*\)$", "", fields[name].metadata.get("label") or _words(name)[0])
    return words if words[:2].isupper() else words[:1].lower() + words[1:]


# parentheticals pointing at code or docs: "(see ``songflow.sampling.schedules.flow_sigmas``)", "(docs/…)"
_CODE_ASIDE = re.compile(r"\s*\((?:see\s+)?[^()]*(?:``songflow\.|songflow\.[a-z_]+\.|docs/|\.md\b)[^()]*\)")
_CONSTANT_ASIDE = re.compile(r"\s*\(``[A-Z][A-Z0-9_]*``\)")
_QUOTED = re.compile(r"``([^`]+)``")
_ROLE = re.compile(r":[a-z]+:`~?([\w.]+)`")  # a Sphinx cross-reference, :class:`Extract15`
#: a request class named in a docstring, said as its task ("the Extract15" -> "the extract")
_TASK_OF_CLASS = {cls.__name__: cls.task for s in (V1_SCHEMA, V15_SCHEMA) for cls in s.tasks.values()}
_SNAKE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9*]+)+\b")
_CONSTANT = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")


def plain_text(text: str, cls: type, mention: Callable[[str], str] = str) -> str:
    """Docstring text in a musician's words: no markup, no module paths or constant names, fields named
    by their labels (each passed through ``mention``, e.g. to make it bold), other code names as words."""

    def name_of(token: str) -> str:
        said = _mention(cls, token)
        if said is not None:
            return mention(said)
        if _CONSTANT.fullmatch(token):
            return token.replace("_", " ").lower()
        return token.replace("_", " ") if _SNAKE.fullmatch(token) else token

    text = _CONSTANT_ASIDE.sub("", _CODE_ASIDE.sub("", text))
    text = _ROLE.sub(lambda m: _TASK_OF_CLASS.get(name := m[1].rsplit(".", 1)[-1], name), text)
    text = re.sub(r"``songflow\.[\w.]+``|\bsongflow\.[\w.]+", "", text)
    text = _QUOTED.sub(lambda m: name_of(m.group(1)), text)
    text = _SNAKE.sub(lambda m: name_of(m.group(0)), text)
    text = _CONSTANT.sub(lambda m: name_of(m.group(0)), text)
    text = re.sub(r"\s+([,.;:)])", r"\1", " ".join(text.split()))
    return re.sub(r"(?<!e\.g)(?<!i\.e)([.!?] )([a-z])", lambda m: m[1] + m[2].upper(), text)


def _doc_chunks(cls: type) -> list[str]:
    """Paragraphs and bullet items of the docstrings of ``cls`` and its bases (own first), except each
    docstring's first paragraph: that describes the whole task and heads its tab already."""
    chunks = []
    for klass in cls.__mro__:
        doc = inspect.getdoc(klass) if "__doc__" in vars(klass) else None
        if not doc:
            continue
        for para in re.split(r"\n\s*\n", doc)[1:]:
            for item in re.split(r"\n\s*- ", para):
                chunks.append(" ".join(item.split()).removeprefix("- "))
    return chunks


def field_help(cls: type, name: str) -> str:
    """The help of field ``name`` of ``cls``: its ``help`` metadata, else the docstring passage that names
    ````name```` (the one naming it earliest), in plain words (:func:`plain_text`); on/off for switches."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    text = fields[name].metadata.get("help", "") if name in fields else ""
    if not text:
        tag = f"``{name}``"
        found = [(chunk.index(tag), i, chunk) for i, chunk in enumerate(_doc_chunks(cls)) if tag in chunk]
        text = min(found)[2] if found else ""
    text = plain_text(text, cls)
    text = re.sub(r"\bTrue\b", "on", re.sub(r"\bFalse\b", "off", text))
    if text and text[-1] not in ".!?":
        text += "."
    return text[:1].upper() + text[1:]


def _default_text(f: FormField) -> str:
    if f.required:
        return "Required."
    if f.default is None or f.default == ():
        return "Empty: random." if f.name.endswith("seeds") else "Empty: not set."
    if f.default == "":
        return "Default: empty."
    if f.kind == BOOL:
        return f"Default: {'on' if f.default else 'off'}."
    return f"Default: {f.default}."


def _field(cls: type, f: dataclasses.Field, hint: Any) -> FormField | None:
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and len(args) == 2:
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    low = high = None
    if f.name.endswith("_path") and hint is str:
        kind = AUDIO
    elif hint is bool:
        kind = BOOL
    elif origin is typing.Literal:
        kind = CHOICE
    elif origin is tuple and args and args[0] is int:
        kind = INTS
    elif origin is tuple and args and args[0] is float:
        kind = FLOATS
    elif hint is int:
        kind = INT
    elif hint is float:
        kind = FLOAT
        if f.name.endswith("_frac"):
            low, high = 0.0, 1.0
        elif f.name.endswith("_s"):
            low = 0.0
    elif hint is str and f.name in SUGGESTED_CHOICES:
        kind, args = CHOICE, SUGGESTED_CHOICES[f.name]
    elif hint is str:
        kind = LONG_TEXT if "lyrics" in f.name else TEXT
    else:
        return None
    if kind in (INT, FLOAT):  # the dataclass's own bounds ("ge"/"le"), e.g. a 1.5 song's 1..600 s
        low = f.metadata.get("ge", low)
        high = f.metadata.get("le", high)
    choices = tuple(args) if kind == CHOICE else ()
    names = CHOICE_NAMES.get(f.name, {})
    spec = FormField(
        name=f.name,
        kind=kind,
        label=_label(f.name, f.metadata),
        help="",
        default=default,
        required=not has_default,
        optional=optional,
        choices=choices,
        low=low,
        high=high,
        choice_labels=tuple(names.get(c, str(c)) for c in choices) if names else (),
        custom_choice=hint is str and kind == CHOICE,
    )
    text = field_help(cls, f.name)
    return dataclasses.replace(spec, help=f"{text} {_default_text(spec)}".strip())


def form_fields(cls: type, skip: Sequence[str] = ()) -> tuple[FormField, ...]:
    """The widgets of dataclass ``cls`` in field order (nested settings and ``skip`` left out)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in _NESTED or f.name in skip:
            continue
        spec = _field(cls, f, hints[f.name])
        if spec is not None:
            out.append(spec)
    return tuple(out)


def common_fields(schema: RequestSchema = V1_SCHEMA) -> tuple[FormField, ...]:
    """The fields the schema declares common (``schema.common``; v1: the tags and the lyrics; 1.5: the
    caption, lyrics, metadata and reference audio), shown once above the task tabs. A task without one
    of them (1.5's simple mode writes its own caption and lyrics) ignores it."""
    first = next(iter(schema.tasks.values()))
    return tuple(f for f in form_fields(first) if f.name in schema.common)


def _fields_of(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def task_fields(task: str, schema: RequestSchema = V1_SCHEMA) -> tuple[FormField, ...]:
    """The fields of ``task``'s own tab (everything but the common fields)."""
    common = {f.name for f in common_fields(schema)}
    return form_fields(_task_class(task, schema), skip=tuple(common))


def params_fields(defaults: Any = None, schema: RequestSchema | None = None) -> tuple[FormField, ...]:
    """The advanced sampler/guidance settings (``schema.params_cls``; without a schema the class of
    ``defaults``, else :class:`GenerationParams`), with the official defaults.

    ``defaults`` (the loaded model family's ``default_params``) replaces each field's default and the
    default its help names; None (or settings of another class) keeps the dataclass defaults.
    """
    cls = schema.params_cls if schema is not None else type(defaults) if defaults is not None else None
    cls = cls or GenerationParams
    fields = form_fields(cls)
    if not isinstance(defaults, cls):
        return fields
    out = []
    for f in fields:
        spec = dataclasses.replace(f, default=getattr(defaults, f.name))
        text = field_help(cls, f.name)
        out.append(dataclasses.replace(spec, help=f"{text} {_default_text(spec)}".strip()))
    return tuple(out)


def lora_weight_field() -> FormField:
    """The weight of the selected LoRA adapters (from :class:`LoraRef`)."""
    (weight,) = form_fields(LoraRef, skip=("path",))
    return weight


def task_description(task: str, schema: RequestSchema = V1_SCHEMA) -> str:
    """The first paragraph of the task's docstring (shown at the top of its tab)."""
    cls = _task_class(task, schema)
    doc = inspect.getdoc(cls) or ""
    return plain_text(re.split(r"\n\s*\n", doc)[0], cls, mention=lambda words: f"**{words}**")


def _task_class(task: str, schema: RequestSchema = V1_SCHEMA) -> type:
    cls = schema.tasks.get(task)
    if cls is None:
        raise ConfigError(f"unknown task {task!r}; choose one of {sorted(schema.tasks)}")
    return cls


def field_words(text: str, schema: RequestSchema | None = None) -> str:
    """A message with each request field's code name (``duration_s``, ``params.n_min_frac``...) replaced
    by the label its widget shows ("Duration (s)"); plain words such as "tags" are left alone. The
    fields are ``schema``'s (None: those of every family)."""
    from songflow.interfaces.sidecar import known_schemas

    labels = {}
    schemas = (schema,) if schema is not None else known_schemas()
    for cls in (*(c for s in schemas for c in (*s.tasks.values(), s.params_cls)), LoraRef):
        for f in form_fields(cls):
            if "_" in f.name:
                labels.setdefault(f.name, f.label)
    if not labels:
        return text
    pattern = r"\b(?:params\.)?(" + "|".join(sorted(map(re.escape, labels), key=len, reverse=True)) + r")\b"
    return re.sub(pattern, lambda m: labels[m[1]], text)


# -- widget values <-> field values ------------------------------------------------------------------


def parse_value(f: FormField, raw: Any) -> Any:
    """A widget's value -> the dataclass field value (empty widgets give the default, or None)."""
    if f.kind == AUDIO:
        if f.optional and (raw is None or (isinstance(raw, str) and not raw.strip())):
            return None
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise ConfigError(f"{f.label}: no audio uploaded; upload an audio file (wav, flac, ogg, mp3)")
        return str(raw)
    if f.kind in (INTS, FLOATS):
        text = "" if raw is None else str(raw).strip()
        if not text:
            return f.default
        number, what = (int, "whole numbers") if f.kind == INTS else (float, "numbers")
        try:
            return tuple(number(part) for part in re.split(r"[,\s]+", text) if part)
        except ValueError:
            raise ConfigError(f"{f.label}: expected {what} separated by commas, got {text!r}") from None
    if f.kind in (INT, FLOAT):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if f.required:
                raise ConfigError(f"{f.label}: a number is required")
            return f.default
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{f.label}: expected a number, got {raw!r}") from None
        if f.kind == FLOAT:
            return number
        if not number.is_integer():
            raise ConfigError(f"{f.label}: expected a whole number, got {raw!r}")
        return int(number)
    if f.kind in (TEXT, LONG_TEXT):
        if raw is None and isinstance(f.default, str):  # a widget the page did not send: its default
            return f.default
        text = "" if raw is None else str(raw)
        return None if f.optional and not text.strip() else text
    if f.kind == CHOICE and (raw is None or raw == ""):  # a cleared dropdown, or its "not set" entry
        return None if f.optional else f.default
    if raw is None:  # an unset checkbox
        return f.default
    if f.kind == BOOL:
        return bool(raw)
    return raw


def widget_value(f: FormField, value: Any) -> Any:
    """Inverse of :func:`parse_value`: a field value -> what the widget shows."""
    if f.kind in (INTS, FLOATS):
        return ", ".join(str(v) for v in value) if value else ""
    if f.kind in (TEXT, LONG_TEXT) or (f.kind == CHOICE and f.optional):
        return "" if value is None else value  # an optional dropdown's "not set" entry is ""
    return value


def default_values(fields: Sequence[FormField]) -> dict[str, Any]:
    """Widget values showing each field's default."""
    return {f.name: widget_value(f, f.default) for f in fields}


def build_request(
    task: str,
    values: Mapping[str, Any],
    params: Mapping[str, Any],
    loras: Sequence[str] = (),
    lora_weight: Any = None,
    defaults: Any = None,
    schema: RequestSchema = V1_SCHEMA,
) -> Request:
    """The request a filled-in form describes.

    Args:
        task: a key of ``schema.tasks``.
        values: widget values of the common fields and of the task's own fields, by field name.
        params: widget values of the advanced settings, by ``schema.params_cls`` field name.
        loras: paths of the selected LoRA adapters; ``lora_weight`` applies to each (schemas whose
            requests take adapters only).
        defaults: what cleared advanced settings fall back to (the loaded family's ``default_params``;
            None: the dataclass defaults), see :func:`params_fields`.
        schema: the loaded family's request schema.

    Raises:
        ConfigError: a missing upload or an invalid value, with a message naming the field.
    """
    data: dict[str, Any] = {"task": task}
    own = _fields_of(_task_class(task, schema))
    for f in (*common_fields(schema), *task_fields(task, schema)):
        if f.name in own:
            data[f.name] = parse_value(f, values.get(f.name))
    data["params"] = {f.name: parse_value(f, params.get(f.name)) for f in params_fields(defaults, schema)}
    if "loras" in {f.name for f in dataclasses.fields(_task_class(task, schema))}:
        weight = parse_value(lora_weight_field(), lora_weight)
        data["loras"] = [{"path": str(path), "weight": weight} for path in loras or ()]
    return schema.from_dict(data)


@dataclass(frozen=True)
class FormState:
    """What a request looks like in the form (see :func:`form_values`)."""

    task: str
    values: dict[str, Any]
    params: dict[str, Any]
    loras: list[str]
    lora_weight: float


def form_values(request: Any) -> FormState:
    """The widget values that :func:`build_request` turns back into ``request`` (of any family's schema).

    ``values`` holds the common fields and every field of the request's task; the caller fills any tab
    whose fields share these names (so a text2music song reloads into the retake tab as well).
    Adapters of different weights cannot be shown with one weight: the first adapter's weight is used.
    """
    from songflow.interfaces.sidecar import schema_of_request

    schema = schema_of_request(request)
    values = {
        f.name: widget_value(f, getattr(request, f.name))
        for f in common_fields(schema)
        if hasattr(request, f.name)
    }
    own = task_fields(request.task, schema)
    values |= {f.name: widget_value(f, getattr(request, f.name)) for f in own}
    settings = params_fields(schema=schema)
    params = {f.name: widget_value(f, getattr(request.params, f.name)) for f in settings}
    loras = getattr(request, "loras", ())
    weight = loras[0].weight if loras else lora_weight_field().default
    return FormState(request.task, values, params, [ref.path for ref in loras], weight)


# -- choices of text fields (UI content: the dataclasses check the value) -----------------------------

_NOTES = ("C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#", "Bb", "B")
#: text fields offered as dropdowns of their usual values (a typed value is checked as any other)
SUGGESTED_CHOICES: dict[str, tuple[str, ...]] = {
    "key_scale": tuple(f"{note} {mode}" for note in _NOTES for mode in ("major", "minor")),
    "vocal_language": VALID_LANGUAGES,
}
_LANGUAGE_NAMES = {
    "ar": "Arabic", "az": "Azerbaijani", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole",
    "hu": "Hungarian", "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "la": "Latin", "lt": "Lithuanian", "ms": "Malay", "ne": "Nepali", "nl": "Dutch",
    "no": "Norwegian", "pa": "Punjabi", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sa": "Sanskrit", "sk": "Slovak", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili",
    "ta": "Tamil", "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian",
    "ur": "Urdu", "vi": "Vietnamese", "yue": "Cantonese", "zh": "Chinese", }  # fmt: skip
#: what a dropdown shows for a choice, by field name (beats per bar as a time signature, language names)
CHOICE_NAMES: dict[str, dict[str, str]] = {
    "time_signature": {"2": "2/4", "3": "3/4", "4": "4/4", "6": "6/8"},
    "vocal_language": {
        code: f"{_LANGUAGE_NAMES[code]} ({code})"
        if code in _LANGUAGE_NAMES
        else "Unknown (the model decides)"
        for code in VALID_LANGUAGES
    },
}


# -- presets (UI content, not parameters) ------------------------------------------------------------

TAG_PRESETS: dict[str, str] = {
    "Funk pop": "funk, pop, soul, 105 BPM, energetic, groovy, electric guitar, bass, drums, male vocal",
    "Lo-fi piano": "lofi, hip hop, chill, 70 BPM, piano, vinyl crackle, soft drums, instrumental",
    "Pop rock": "pop rock, upbeat, 120 BPM, female vocal, electric guitar, drums, catchy",
    "EDM": "edm, electronic, dance, 128 BPM, synthesizer, four on the floor, euphoric, drop",
    "Acoustic folk": "folk, acoustic guitar, 90 BPM, warm, male vocal, harmonica, storytelling",
    "Orchestral": "orchestral, cinematic, epic, strings, brass, timpani, 80 BPM, instrumental",
    "Jazz trio": "jazz, piano trio, upright bass, brushed drums, swing, 140 BPM, instrumental",
    "Rap": "hip hop, rap, 90 BPM, boom bap, male vocal, deep bass, scratches",
}

LYRIC_PRESETS: dict[str, str] = {
    "Instrumental": "[inst]",
    "Verse + chorus": (
        "[verse]\nNeon lights on the river tonight\nEvery window is a story in flight\n\n"
        "[chorus]\nWe keep on dancing, dancing till the morning\nWe keep on singing, never see it coming"
    ),
    "Full song": (
        "[intro]\n\n[verse]\nWoke up early with the sun in my eyes\nCoffee's cold but the morning is mine\n\n"
        "[chorus]\nOh, let it shine, let it shine on me\nEverything I need is everything I see\n\n"
        "[verse]\nCity's humming like a song in my head\nEvery word that I never said\n\n"
        "[bridge]\nSlow it down, slow it down\n\n"
        "[chorus]\nOh, let it shine, let it shine on me\nEverything I need is everything I see\n\n[outro]"
    ),
    "Empty": "",
}
