"""The studio (``songflow ui``): a Gradio front end over the models of ``--checkpoint``, one loaded at a time.

``build_ui(studio)`` is a factory (no module globals). At the top, the model selector lists the models
``--checkpoint`` holds (:mod:`songflow.interfaces.studio.models`: a v1 checkpoint, each DiT folder of an
ACE-Step 1.5 root with its variant); picking one loads it in place of the other and the page follows:
one form per model family (the loaded family's shown), and in it one tab per task of the family's
request schema that an offered model runs (the loaded model's shown: extract, stems, lego and complete
only on 1.5 base/sft), the advanced settings showing the loaded checkpoint's preset (1.5: its variant's
steps, shift and guidance; "Reset" goes back to them). Each tab is built from the task's dataclass fields
(:mod:`songflow.interfaces.studio.form`); a tab with a source shows its picture, with the window the run
writes highlighted and sliders bound to it (:mod:`songflow.interfaces.studio.picker`). Above the tabs
are the fields every task shares (v1: tags/lyrics with presets; 1.5: caption, lyrics with presets and the
song's metadata: bpm, key, time signature, language; the reference audio and instruction collapsed),
the seeds, the 5 Hz LM planner (1.5 with an LM), LoRA selection, the advanced sampler/guidance settings
and the reference-compatibility switches in their own collapsed section. The output panel shows the
player, the plan the LM wrote (metadata and lyrics) beside it, one player and download per stem (or
take), the waveform/spectrogram picture, downloads in every format and the parameters; the history of
outputs (:mod:`songflow.interfaces.studio.engine`) reloads any entry into the form.

Every user error surfaces as a ``gr.Error`` message in the page, never as a traceback, naming fields by
their labels and uploads by their file names (never a server or temporary folder); an upload is checked as
soon as it arrives, with a note under its input.
"""

from __future__ import annotations

import html
import logging
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from songflow.audio.io import load_audio
from songflow.errors import SongflowError
from songflow.interfaces.sidecar import known_families, pipeline_tasks, schema_of, schema_of_request
from songflow.interfaces.studio.engine import (
    HistoryEntry,
    StatusFn,
    Studio,
    check_upload,
    waveform_spectrogram_image,
)
from songflow.interfaces.studio.form import (
    AUDIO,
    BOOL,
    CHOICE,
    CHOICE_NAMES,
    FLOAT,
    FLOATS,
    INT,
    INTS,
    LONG_TEXT,
    LYRIC_PRESETS,
    MAIN_PARAMS,
    TAG_PRESETS,
    FormField,
    common_fields,
    default_values,
    field_words,
    form_values,
    is_compat_switch,
    lora_weight_field,
    params_fields,
    task_description,
    task_fields,
    widget_value,
)
from songflow.interfaces.studio.picker import SOURCE, add_picker
from songflow.requests import EDIT_PRESETS, RequestSchema, request_to_dict
from songflow.requests_v15 import V15_SCHEMA

log = logging.getLogger("songflow.ui")

TASK_LABELS = {
    "text2music": "Text to music",
    "retake": "Retake",
    "repaint": "Repaint",
    "extend": "Extend",
    "audio2audio": "Audio to audio",
    "edit": "Edit",
    "cover": "Cover",
    "extract": "Extract a stem",
    "stems": "Stems",
    "lego": "Lego (add a layer)",
    "complete": "Complete",
    "simple": "Simple (describe it)",
}
# the common fields a planner answer fills in (SongPlan attribute -> form field)
_PLAN_TO_FORM = {
    "caption": "caption",
    "lyrics": "lyrics",
    "bpm": "bpm",
    "keyscale": "key_scale",
    "timesignature": "time_signature",
    "language": "vocal_language",
}
# 1.5's song metadata, in one row under the caption and lyrics; the fields collapsed below them
_METADATA = ("bpm", "key_scale", "time_signature", "vocal_language")
_COLLAPSED = ("reference_path", "instruction")
_PRESETS = {"tags": TAG_PRESETS, "caption": TAG_PRESETS, "lyrics": LYRIC_PRESETS}
#: the tasks only the 5 Hz LM planner runs (their tab is hidden without one)
_NEEDS_LM = frozenset({"simple"})
#: the task fields that ask the 5 Hz LM to plan the song (hidden without one)
_LM_SWITCHES = frozenset({"think"})
#: the settings a 1.5 preset fills in when left empty
_PRESET_FIELDS = frozenset({"steps", "shift", "guidance_scale"})
HISTORY_HEADERS = ["created", "task", "prompt", "seeds", "entry"]  # prompt: v1 tags, 1.5 caption
_CSS = """
.sf-help {opacity: 0.8}
.sf-upload-note {font-size: 0.9em; min-height: 0}
.sf-upload-note .sf-bad {color: #d33}
.sf-history {max-height: 24em; overflow-y: auto}
.sf-history table {width: 100%; border-collapse: collapse; font-size: 0.9em}
.sf-history th, .sf-history td {text-align: left; padding: 0.3em 0.6em; border-bottom: 1px solid #8884}
.sf-history td {overflow-wrap: anywhere}
.sf-take {display: flex; align-items: center; gap: 0.8em; margin: 0.2em 0}
.sf-take b {min-width: 7em}
.sf-take audio {flex: 1; height: 2.2em}
.sf-plan {padding: 0.4em 0.8em; border-left: 3px solid #f5a623; font-size: 0.92em}
.sf-plan pre {white-space: pre-wrap; max-height: 18em; overflow-y: auto; font-size: 0.95em}
"""


def _component(f: FormField, elem_id: str) -> gr.components.Component:
    """The widget of one form field, showing the field's default."""
    common = {"label": f.label, "elem_id": elem_id}
    value = default_values([f])[f.name]
    if f.kind == AUDIO:
        return gr.Audio(type="filepath", sources=["upload"], **common)
    if f.kind == BOOL:
        return gr.Checkbox(value=value, info=f.help, **common)
    if f.kind == CHOICE:
        labels = f.choice_labels or tuple(str(c) for c in f.choices)
        choices: list[Any] = [("not set", "")] * f.optional + list(zip(labels, f.choices, strict=True))
        return gr.Dropdown(
            choices=choices, value=value, allow_custom_value=f.custom_choice, info=f.help, **common
        )
    if f.kind == FLOAT and (f.low, f.high) == (0.0, 1.0) and not f.optional:  # a fraction
        return gr.Slider(f.low, f.high, value=value, step=0.01, info=f.help, **common)
    if f.kind in (INT, FLOAT) and f.optional:  # a text box: gr.Number cannot be empty (it sends 0)
        hint = "empty: the checkpoint's preset" if f.name in _PRESET_FIELDS else "empty: not set"
        return gr.Textbox(value=value, placeholder=hint, max_lines=1, info=f.help, **common)
    if f.kind in (INT, FLOAT):
        return gr.Number(
            value=value,
            precision=0 if f.kind == INT else None,
            minimum=f.low,
            maximum=f.high,
            info=f.help,
            **common,
        )
    if f.kind in (INTS, FLOATS):
        example = "e.g. 7, 8, 9" if f.kind == INTS else "e.g. 1.0, 0.75, 0.5, 0.25"
        return gr.Textbox(value=value, placeholder=example, max_lines=1, info=f.help, **common)
    lines = 8 if f.kind == LONG_TEXT else 1
    example = next(iter(TAG_PRESETS.values())) if f.name.endswith(("tags", "caption")) else None
    return gr.Textbox(
        value=value, lines=lines, max_lines=40 if lines > 1 else 1, placeholder=example, info=f.help, **common
    )


# -- handlers (plain functions: unit-testable without a browser) ---------------------------------------


def run_task(
    studio: Studio,
    task: str,
    values: Mapping[str, Any],
    params: Mapping[str, Any],
    loras: Sequence[str] = (),
    lora_weight: Any = None,
    status: StatusFn | None = None,
) -> HistoryEntry:
    """:meth:`Studio.generate`, with every failure turned into a message for the page (``gr.Error``)."""
    return _user_errors(studio.generate, task, values, params, loras, lora_weight, status)


def _user_errors(fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except gr.Error:
        raise
    except SongflowError as exc:
        message = client_text(field_words(str(exc)))
        raise gr.Error(message, title="Cannot do that", print_exception=False) from None
    except Exception as exc:  # a bug: keep the traceback in the server log, not in the page
        log.exception("studio: unexpected failure")
        raise gr.Error(
            client_text(f"generation failed ({type(exc).__name__}: {exc}); the server log has the details"),
            print_exception=False,
        ) from None


def _upload_folders() -> list[str]:
    """Where Gradio keeps uploads on the server (``GRADIO_TEMP_DIR``, else ``<tmp>/gradio``)."""
    get = getattr(gr.utils, "get_upload_folder", None)
    folders = {str(Path(tempfile.gettempdir()) / "gradio"), *([get()] if get else [])}
    return sorted(folders, key=len, reverse=True)


def client_text(text: str) -> str:
    """``text`` with every path inside Gradio's upload folder cut to the file's own name (the name the
    user uploaded it under): a message in the page never shows a server or temporary folder."""
    for folder in _upload_folders():
        text = re.sub(re.escape(folder.rstrip("/\\")) + r"[/\\][^\s'\"]*", lambda m: Path(m[0]).name, text)
    return text


def upload_note(studio: Studio, task: str, field_name: str, path: str | None) -> str:
    """The note under an audio input, as soon as a file arrives: what it holds, or why it cannot be used
    (the checks :meth:`Studio.generate` runs; the upload is named by its file name only). HTML."""
    if not path:
        return ""
    try:
        text = check_upload(studio.pipeline, task, field_name, str(path))
    except SongflowError as exc:
        return f"<span class='sf-bad'>⚠ {html.escape(client_text(str(exc)))}</span>"
    except Exception:  # a bug: the server log has it; generating will report it again
        log.exception("studio: checking an upload failed")
        return "<span class='sf-bad'>⚠ this file could not be checked; the server log has the details</span>"
    return f"✓ {html.escape(text)}"


def history_rows(studio: Studio) -> list[list[str]]:
    """One row per history entry, newest first (columns: ``HISTORY_HEADERS``)."""
    rows = []
    for e in studio.history.entries():
        seeds = ", ".join(str(s) for s in e.request.params.seeds or ())
        rows.append([e.created, e.request.task, e.prompt, seeds, e.id])
    return rows


def history_table(studio: Studio) -> str:
    """The history as an HTML table (a plain table: Gradio's virtualised Dataframe does not grow
    its viewport when rows are added)."""
    rows = history_rows(studio)
    if not rows:
        return "<p class='sf-help'>No outputs yet: they appear here, newest first.</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HISTORY_HEADERS)
    body = "".join(
        "<tr>"
        + "".join(f"<td data-col='{i}'>{html.escape(str(v))}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<div class='sf-history'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def history_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(e.summary(), e.id) for e in studio.history.entries()]


def entry_info(entry: HistoryEntry) -> str:
    """Markdown describing an output: task, seeds, stems and their residual, timings, folder."""
    req = entry.request
    lines = [f"**{TASK_LABELS.get(req.task, req.task)}** · `{entry.id}`"]
    lines.append(f"seeds: `{', '.join(map(str, req.params.seeds or ()))}`")
    retake = getattr(req, "retake_seeds", None)
    if retake:
        lines.append(f"retake seeds: `{', '.join(map(str, retake))}`")
    if entry.stems:
        residual = entry.stems.get("residual_db")
        summed = f"; their sum is {residual:.1f} dB from the mix" if isinstance(residual, int | float) else ""
        lines.append(f"stems: {', '.join(entry.take_labels)}{summed}")
    if entry.timings_s:
        stages = {k: v for k, v in entry.timings_s.items() if k != "total"}  # 1.5 records its total too
        total = entry.timings_s.get("total", sum(stages.values()))
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
        lines.append(f"time: {total:.2f} s ({parts})")
    lines.append(f"files: `{entry.folder}`")
    return "  \n".join(lines)


def plan_html(plans: Sequence[Any]) -> str:
    """The plans the 5 Hz LM wrote (``SongPlan``: metadata, caption, lyrics), one block per song, as
    escaped HTML; "" without plans."""
    if not plans:
        return ""
    blocks = ["<div class='sf-plan'><b>Plan by the 5 Hz LM</b>"]
    signatures = CHOICE_NAMES["time_signature"]
    for i, plan in enumerate(plans):
        duration = f"{plan.duration_s:g} s" if plan.duration_s is not None else None
        signature = (
            signatures.get(str(plan.timesignature), plan.timesignature) if plan.timesignature else None
        )
        metas = (
            ("bpm", plan.bpm),
            ("key", plan.keyscale),
            ("time", signature),
            ("length", duration),
            ("language", plan.language),
        )
        shown = " · ".join(f"{k} <b>{html.escape(str(v))}</b>" for k, v in metas if v is not None)
        head = f"<p><b>Song {i + 1}</b></p>" if len(plans) > 1 else ""
        caption = f"<p><i>{html.escape(plan.caption)}</i></p>" if plan.caption else ""
        lyrics = f"<pre>{html.escape(plan.lyrics)}</pre>" if plan.lyrics else ""
        blocks.append(f"{head}<p class='sf-plan-metas'>{shown or 'no metadata'}</p>{caption}{lyrics}")
    return "".join(blocks) + "</div>"


def file_url(path: str | Path) -> str:
    """Where the page fetches a file of the output folder (served by Gradio: :func:`launch_ui` allows it)."""
    return "/gradio_api/file=" + urllib.parse.quote(str(Path(path).resolve()))


def takes_html(takes: Sequence[tuple[str, str]], *, stems: bool = False) -> str:
    """One row per take or stem (``(file, label)``): its name, a player and a download of its wav, as
    escaped HTML (ids ``output-take-<i>``); "" for a single take (the main player has it)."""
    if not takes:
        return ""
    title = "Stems: one player and download each" if stems else "Takes"
    rows = []
    for i, (path, label) in enumerate(takes):
        url, name = html.escape(file_url(path)), html.escape(Path(path).name)
        rows.append(
            f"<div class='sf-take' id='output-take-{i}'><b>{html.escape(label)}</b>"
            f"<audio controls preload='metadata' src='{url}'></audio>"
            f"<a href='{url}' download='{name}'>⬇ {name}</a></div>"
        )
    return f"<div class='sf-takes'><p><b>{title}</b></p>{''.join(rows)}</div>"


def entry_view(entry: HistoryEntry) -> dict[str, Any]:
    """What the output panel shows of an entry: ``audio`` (its first take), ``plan`` (:func:`plan_html`),
    ``takes`` (``(file, label)`` of every take or stem when there are several), ``image`` (the first
    take's waveform/spectrogram), ``files`` (downloads), ``info`` and ``params`` (the request)."""
    wav, rate = load_audio(entry.takes[0])
    several = len(entry.takes) > 1
    return {
        "audio": str(entry.takes[0]),
        "plan": plan_html(entry.plans),
        "takes": list(zip(map(str, entry.takes), entry.take_labels, strict=True)) if several else [],
        "image": waveform_spectrogram_image(wav, rate),
        "files": [str(p) for p in entry.files],
        "info": entry_info(entry),
        "params": request_to_dict(entry.request),
    }


def model_status(studio: Studio) -> str:
    """One line on the loaded model: which, where, its preset (1.5) and the tasks it runs."""
    choice = studio.model
    name = choice.label if choice is not None else Path(str(studio.runtime.get("checkpoint", "?"))).name
    defaults = studio.param_defaults
    preset = ""
    if isinstance(getattr(defaults, "steps", None), int) and hasattr(defaults, "shift"):
        guided = defaults.guidance_scale > 1.0
        guidance = f"guidance {defaults.guidance_scale:g}" if guided else "no guidance"
        preset = f" · preset {defaults.steps} steps, shift {defaults.shift:g}, {guidance}"
    tasks = ", ".join(TASK_LABELS.get(t, t).lower() for t in shown_tasks(studio))
    no_lm = studio.schema.name == V15_SCHEMA.name and not studio.has_planner
    lm = "  \nno 5 Hz LM in this checkpoint: simple mode and planning are off" if no_lm else ""
    return f"Loaded **{name}** on `{studio.runtime.get('device', '?')}`{preset}  \nruns: {tasks}{lm}"


# -- layout --------------------------------------------------------------------------------------------


class _Form:
    """One model family's form (its components by field name, for the handlers); ``prefix`` starts its
    element ids when the page has several families' forms ("v15-"), else ""."""

    def __init__(self, schema: RequestSchema, prefix: str = "") -> None:
        self.schema = schema
        self.prefix = prefix
        self.common: dict[str, gr.components.Component] = {}
        self.tasks: dict[str, dict[str, gr.components.Component]] = {}
        self.params: dict[str, gr.components.Component] = {}
        self.lora_select: gr.Dropdown | None = None
        self.lora_weight: gr.components.Component | None = None
        self.buttons: dict[str, gr.Button] = {}
        self.tab_items: dict[str, gr.Tab] = {}
        self.tabs: gr.Tabs | None = None
        self.column: gr.Column | None = None
        self.planner: gr.Accordion | None = None
        self.lm_switches: list[gr.Checkbox] = []  # "Plan with the LM" of each tab, shown with an LM
        self.selected: gr.State | None = None  # the task of the tab shown
        self.reset: gr.Button | None = None

    def id(self, name: str) -> str:
        return self.prefix + name

    def inputs(self, task: str) -> set:
        return {
            *self.common.values(),
            *self.tasks[task].values(),
            *self.params.values(),
            self.lora_select,
            self.lora_weight,
        }

    def split(self, task: str, data: Mapping) -> tuple[dict, dict, list, Any]:
        values = {name: data[c] for name, c in {**self.common, **self.tasks[task]}.items()}
        params = {name: data[c] for name, c in self.params.items()}
        return values, params, list(data[self.lora_select] or []), data[self.lora_weight]

    def audio_inputs(self) -> list:
        return [c for comps in self.tasks.values() for name, c in comps.items() if name.endswith("_path")]

    def all_fields(self) -> list:
        fields = [*self.common.values(), *self.params.values(), self.lora_select, self.lora_weight]
        return fields + [c for comps in self.tasks.values() for c in comps.values()]


def studio_tasks(studio: Studio) -> tuple[str, ...]:
    """The tasks the loaded model runs, in its family's request schema order."""
    runs = pipeline_tasks(studio.pipeline)
    return tuple(task for task in studio.schema.tasks if task in runs)


def shown_tasks(studio: Studio) -> tuple[str, ...]:
    """The tabs shown for the loaded model: :func:`studio_tasks`, less those that need the 5 Hz LM
    (simple mode) when the checkpoint has none (they could only fail)."""
    return tuple(t for t in studio_tasks(studio) if studio.has_planner or t not in _NEEDS_LM)


def offered_families(studio: Studio) -> list[tuple[RequestSchema, tuple[str, ...]]]:
    """One ``(request schema, tasks)`` per model family the studio offers, the tasks being those some
    offered model of the family runs (schema order); the loaded model alone when no models are listed."""
    if not studio.models:
        return [(studio.schema, studio_tasks(studio))]
    runs: dict[str, set[str]] = {}
    for model in studio.models:
        runs.setdefault(model.family, set()).update(model.tasks)
    families = known_families()
    out = []
    for name, tasks in runs.items():
        schema = schema_of(families.get(name))
        out.append((schema, tuple(t for t in schema.tasks if t in tasks)))
    return out


def _family_defaults(studio: Studio, schema: RequestSchema) -> Any:
    """The settings a family's form starts from: the loaded model's preset, else the family's own."""
    if schema.name == studio.schema.name:
        return studio.param_defaults
    family = next((f for f in known_families().values() if schema_of(f).name == schema.name), None)
    return getattr(family, "default_params", None)


def build_ui(studio: Studio, *, title: str = "songflow studio") -> gr.Blocks:
    """The studio page over ``studio`` (not launched; see :func:`launch_ui`)."""
    offered = offered_families(studio)
    forms = []
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        heading = gr.Markdown(_heading(studio), elem_id="heading")
        selector = _model_selector(studio) if studio.models else None
        with gr.Row():
            with gr.Column(scale=3):
                for schema, tasks in offered:
                    prefix = schema.name.removeprefix("acestep-") + "-" if len(offered) > 1 else ""
                    forms.append(_family_form(studio, _Form(schema, prefix), tasks))
            with gr.Column(scale=2):
                view = _OutputPanel()
        history = _HistoryPanel(studio)
        for form in forms:
            _wire_form(studio, form, view, history)
        history.wire(forms, view)
        demo.load(history.refresh, outputs=[history.table, history.pick], api_name=False, queue=False)
        if selector is not None:
            _wire_selector(studio, selector, heading, forms)
    return demo


def _heading(studio: Studio) -> str:
    checkpoint = studio.runtime.get("checkpoint", "?")
    return (
        f"## songflow studio\nmodel `{Path(checkpoint).name}` on `{studio.runtime.get('device', '?')}` · "
        f"outputs in `{studio.history.root}`"
    )


def _family_form(studio: Studio, form: _Form, tasks: Sequence[str]) -> _Form:
    """A family's form in a column shown while one of its models is loaded."""
    loaded = form.schema.name == studio.schema.name
    defaults = _family_defaults(studio, form.schema)
    with gr.Column(visible=loaded, elem_id=form.id("form")) as form.column:
        _prompt_and_tasks(form, studio, tasks, defaults)
        if form.schema.name == V15_SCHEMA.name:
            _planner_panel(form, studio, visible=loaded and studio.has_planner)
        _lora_panel(form, studio)
        form.reset = _advanced_panel(form, defaults)
    return form


def _wire_form(studio: Studio, form: _Form, view: _OutputPanel, history: _HistoryPanel) -> None:
    """The Generate buttons of a form's tabs and its reset button."""

    def after_generate(entry: HistoryEntry) -> dict:
        return view.updates(entry) | history.updates(entry.id)

    api = form.prefix.replace("-", "_")
    for task, button in form.buttons.items():
        button.click(
            _generate_handler(studio, form, task, after_generate),
            inputs=form.inputs(task),
            outputs=[*view.components, history.table, history.pick],
            show_progress_on=view.audio,  # the progress bar (and an error) on the player only
            concurrency_limit=1,
            concurrency_id="generate",
            api_name=f"{api}generate_{task}",
        )
    assert form.reset is not None
    form.reset.click(
        lambda: [default_values(params_fields(studio.param_defaults, form.schema))[n] for n in form.params],
        outputs=list(form.params.values()),
        api_name=False,
    )


class _OutputPanel:
    """Player, the LM's plan beside it, a player per take or stem, picture, downloads, info and
    parameters of the shown output."""

    def __init__(self) -> None:
        self.audio = gr.Audio(
            label="Output", type="filepath", interactive=False, buttons=["download"], elem_id="output-audio"
        )
        self.plan = gr.HTML("", visible=False, elem_id="output-plan")
        # one HTML block, not a gr.Audio per take: Gradio 6.17 does not show a hidden player again once
        # an update kept it hidden (a single take after a stems run, then stems again)
        self.takes = gr.HTML("", elem_id="output-takes")
        self.image = gr.Image(
            label="Waveform and spectrogram",
            type="numpy",
            interactive=False,
            buttons=["download", "fullscreen"],
            elem_id="output-picture",
        )
        self.files = gr.File(
            label="Download (every format + parameters)",
            file_count="multiple",
            interactive=False,
            elem_id="output-files",
        )
        self.info = gr.Markdown(elem_id="output-info")
        with gr.Accordion("Parameters", open=False):
            self.params = gr.JSON(label="The request (seeds included)", elem_id="output-params")

    @property
    def components(self) -> list:
        return [self.audio, self.plan, self.takes, self.image, self.files, self.info, self.params]

    def updates(self, entry: HistoryEntry) -> dict:
        """Every component's value showing ``entry`` (:func:`entry_view`)."""
        view = entry_view(entry)
        return {
            self.audio: view["audio"],
            self.plan: gr.update(value=view["plan"], visible=bool(view["plan"])),
            self.takes: takes_html(view["takes"], stems=entry.request.task == "stems"),
            self.image: view["image"],
            self.files: view["files"],
            self.info: view["info"],
            self.params: view["params"],
        }


class _HistoryPanel:
    """The history table and its controls: pick an entry, reload it into the form, use it as source."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        with gr.Accordion("History", open=True):
            self.table = gr.HTML(history_table(studio), elem_id="history-table")
            with gr.Row():
                self.pick = gr.Dropdown(
                    choices=history_choices(studio),
                    value=None,
                    label="Entry",
                    scale=3,
                    elem_id="history-pick",
                )
                self.reload_btn = gr.Button("Reload into form", scale=1, elem_id="history-reload")
                self.source_btn = gr.Button("Use as source audio", scale=1, elem_id="history-source")
                self.refresh_btn = gr.Button("Refresh", scale=1, elem_id="history-refresh")

    def updates(self, entry_id: str) -> dict:
        """The table and the picker after ``entry_id`` was added (and picked)."""
        return {
            self.table: history_table(self.studio),
            self.pick: gr.Dropdown(choices=history_choices(self.studio), value=entry_id),
        }

    def wire(self, forms: Sequence[_Form], view: _OutputPanel) -> None:
        studio = self.studio

        def reload(entry_id: str | None) -> dict:
            entry = _user_errors(_entry, studio, entry_id)
            shown = _user_errors(view.updates, entry)
            return _reload_updates(studio, _form_of(forms, entry), entry) | shown

        fields = [c for form in forms for c in form.all_fields()]
        states: list[Any] = [c for form in forms for c in (form.tabs, form.selected)]
        self.reload_btn.click(
            reload, inputs=self.pick, outputs=[*fields, *states, *view.components], api_name=False
        )
        inputs = [c for form in forms for c in form.audio_inputs()]

        def use_as_source(entry_id: str | None) -> list:
            entry = _user_errors(_entry, studio, entry_id)
            return [str(entry.takes[0])] * len(inputs)

        self.source_btn.click(use_as_source, inputs=self.pick, outputs=inputs, api_name=False)
        self.refresh_btn.click(self.refresh, outputs=[self.table, self.pick], api_name=False)

    def refresh(self) -> tuple[str, Any]:
        """The table and the picker's choices as the history is now (the page loads them too)."""
        return history_table(self.studio), gr.Dropdown(choices=history_choices(self.studio))


def _form_of(forms: Sequence[_Form], entry: HistoryEntry) -> _Form:
    """The form of the family that made ``entry``; gr.Error when the page has none."""
    name = schema_of_request(entry.request).name
    for form in forms:
        if form.schema.name == name:
            return form
    raise gr.Error(f"this entry was made by a {name} model, and none is offered here", print_exception=False)


def _prompt_and_tasks(form: _Form, studio: Studio, tasks: Sequence[str], defaults: Any) -> None:
    """The shared fields (tags or caption and lyrics with presets; 1.5's metadata in a row, its reference
    audio and instruction collapsed), the seeds, then one tab per task with its own fields and button."""
    fields = {f.name: f for f in common_fields(form.schema)}
    for name, f in fields.items():
        if name in _METADATA or name in _COLLAPSED:
            continue
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                form.common[name] = _component(f, form.id(f"field-{name}"))
            if name in _PRESETS:
                with gr.Column(scale=1, min_width=180):
                    _preset_picker(form, name)
    metadata = [fields[n] for n in _METADATA if n in fields]
    if metadata:
        with gr.Row(elem_id=form.id("metadata")):
            for f in metadata:
                form.common[f.name] = _component(f, form.id(f"field-{f.name}"))
    collapsed = [fields[n] for n in _COLLAPSED if n in fields]
    if collapsed:
        with gr.Accordion("Reference audio and instruction", open=False, elem_id=form.id("more-fields")):
            for f in collapsed:
                form.common[f.name] = _component(f, form.id(f"field-{f.name}"))
    _main_params(form, defaults)
    runs = set(shown_tasks(studio)) if form.schema.name == studio.schema.name else set()
    form.selected = gr.State(tasks[0] if tasks else None)
    with gr.Tabs(elem_id=form.id("tasks")) as form.tabs:
        for task in tasks:
            label = TASK_LABELS.get(task, task)
            with gr.Tab(label, id=task, elem_id=form.id(f"tab-{task}"), visible=task in runs) as tab:
                form.buttons[task] = _task_tab(form, studio, task)
            form.tab_items[task] = tab
            tab.select(lambda task=task: task, outputs=form.selected, api_name=False, queue=False)


def _preset_picker(form: _Form, name: str) -> None:
    table = _PRESETS[name]
    choice = gr.Dropdown(choices=list(table), value=None, label="Preset", elem_id=form.id(f"preset-{name}"))
    choice.change(
        lambda key: table.get(key, gr.skip()) if key else gr.skip(),
        inputs=choice,
        outputs=form.common[name],
        api_name=False,
    )


def _main_params(form: _Form, defaults: Any) -> None:
    """The sampler settings a musician picks per song (the seeds, how many takes), in the main form."""
    by_name = {f.name: f for f in params_fields(defaults, form.schema)}
    with gr.Row(elem_id=form.id("main-params")):
        for name in MAIN_PARAMS:
            form.params[name] = _component(by_name[name], form.id(f"params-{name}"))


def _task_tab(form: _Form, studio: Studio, task: str) -> gr.Button:
    """A task's tab: its description, its fields (each audio input with a note checking the upload as
    soon as it arrives; the source with its picture and window sliders) and its Generate button."""
    gr.Markdown(task_description(task, form.schema), elem_classes="sf-help")
    fields = task_fields(task, form.schema)
    comps, picker = {}, None
    for f in fields:
        comps[f.name] = _component(f, form.id(f"{task}-{f.name}"))
        if f.kind == AUDIO:
            note = gr.HTML("", elem_id=form.id(f"{task}-{f.name}-note"), elem_classes="sf-upload-note")
            comps[f.name].change(
                lambda path, name=f.name: upload_note(studio, task, name, path),
                inputs=comps[f.name],
                outputs=note,
                api_name=False,
                show_progress="hidden",
            )
        if f.name == SOURCE:
            picker = add_picker(form.id(task), {g.name for g in fields}, default_values(fields))
    if picker is not None:
        picker.wire(comps)
    for name in _LM_SWITCHES & comps.keys():
        form.lm_switches.append(comps[name])
        comps[name].visible = form.schema.name == studio.schema.name and studio.has_planner
    if task == "edit" and "n_min_frac" in comps:
        _edit_presets(comps, form.id("edit-preset"))
    form.tasks[task] = comps
    with gr.Row(elem_id=form.id("generate-row")):
        return gr.Button(
            f"Generate ({TASK_LABELS.get(task, task).lower()})",
            variant="primary",
            elem_id=form.id(f"generate-{task}"),
        )


def _edit_presets(comps: dict, elem_id: str) -> None:
    targets = [comps["n_min_frac"], comps["n_max_frac"]]
    preset = gr.Dropdown(
        choices=[(key.replace("_", " ").capitalize(), key) for key in sorted(EDIT_PRESETS)],
        value=None,
        label="Edit preset",
        info=f"Fills in {targets[0].label} and {targets[1].label}.",
        elem_id=elem_id,
    )
    preset.change(
        lambda name: list(EDIT_PRESETS[name]) if name in EDIT_PRESETS else [gr.skip(), gr.skip()],
        inputs=preset,
        outputs=targets,
        api_name=False,
    )


def planner_updates(form_fields_by_name: Mapping[str, FormField], plan: Any) -> dict[str, Any]:
    """Widget values (by form field name) of a planner answer's caption, lyrics and metadata (those the
    answer has and the form shows)."""
    out = {}
    for attr, name in _PLAN_TO_FORM.items():
        value = getattr(plan, attr, None)
        if value is not None and name in form_fields_by_name:
            out[name] = widget_value(form_fields_by_name[name], value)
    return out


def ask_planner(
    studio: Studio, task: str, values: Mapping, params: Mapping, audio: str | None = None
) -> dict:
    """:meth:`Studio.ask_planner` as form values (by field name) plus a ``"note"``; errors for the page."""
    plan = _user_errors(studio.ask_planner, task, values, params, audio)
    fields = {f.name: f for f in common_fields(studio.schema)}
    updates = planner_updates(fields, plan)
    n_codes = len(plan.audio_codes or ())
    done = "read the audio" if task == "understand" else "tidied the caption and lyrics"
    codes = f" ({n_codes} audio codes)" if n_codes else ""
    return {**updates, "note": f"The planner {done}{codes}: {', '.join(updates) or 'nothing to fill in'}."}


def _planner_panel(form: _Form, studio: Studio, *, visible: bool) -> None:
    """Format (tidy the caption and lyrics above) and understand (read an uploaded song back) with the
    5 Hz LM; their answers fill the caption, lyrics and metadata fields. Shown while the loaded model
    has an LM."""
    with gr.Accordion(
        "5 Hz LM planner: format, understand", open=False, visible=visible, elem_id=form.id("planner")
    ) as form.planner:
        gr.Markdown(
            "Tick **Plan with the LM** in a tab to let the LM plan the song (metadata and audio codes); "
            "*Simple* writes a whole song from a description. Here the LM tidies the caption and lyrics "
            "above, or reads an uploaded song back into them.",
            elem_classes="sf-help",
        )
        audio = gr.Audio(
            label="Audio to understand", type="filepath", sources=["upload"], elem_id=form.id("planner-audio")
        )
        with gr.Row():
            fmt = gr.Button("Format caption and lyrics", size="sm", elem_id=form.id("planner-format"))
            und = gr.Button("Understand the audio", size="sm", elem_id=form.id("planner-understand"))
        note = gr.Markdown("", elem_id=form.id("planner-note"))
    targets = {name: form.common[name] for name in _PLAN_TO_FORM.values() if name in form.common}
    inputs = {*form.common.values(), *form.params.values(), audio}

    def handler(task: str):
        def run(data: dict) -> dict:
            values = {name: data[c] for name, c in form.common.items()}
            params = {name: data[c] for name, c in form.params.items()}
            answer = ask_planner(studio, task, values, params, data[audio])
            out: dict = {targets[n]: v for n, v in answer.items() if n in targets}
            return out | {note: answer["note"]}

        return run

    for task, button in (("format", fmt), ("understand", und)):
        button.click(
            handler(task),
            inputs=inputs,
            outputs=[*targets.values(), note],
            concurrency_limit=1,
            concurrency_id="generate",
            api_name=f"{form.prefix.replace('-', '_')}planner_{task}",
        )


def _lora_panel(form: _Form, studio: Studio) -> None:
    takes_loras = "loras" in form.schema.common
    offered = studio.loras if takes_loras else []
    with gr.Accordion("LoRA adapters", open=bool(offered), elem_id=form.id("lora")):
        info = (
            "adapters found in --lora-dir, for this song only; the weight applies to each"
            if offered
            else "none offered: start the studio with --lora-dir DIR"
            if takes_loras
            else "this model family takes no LoRA adapters yet"
        )
        form.lora_select = gr.Dropdown(
            choices=list(offered),
            value=None,
            multiselect=True,
            label="Adapters",
            info=info,
            interactive=bool(offered),
            elem_id=form.id("lora-select"),
        )
        form.lora_weight = _component(lora_weight_field(), form.id("lora-weight"))


def _advanced_panel(form: _Form, defaults: Any) -> gr.Button:
    """The sampler/guidance widgets showing ``defaults`` (the loaded checkpoint's preset), the
    reference-compatibility switches in their own collapsed section, and the reset button (it resets the
    seeds too)."""
    fields = [f for f in params_fields(defaults, form.schema) if f.name not in MAIN_PARAMS]
    with gr.Accordion(
        "Advanced settings (the checkpoint's defaults)", open=False, elem_id=form.id("advanced")
    ):
        _param_rows(form, [f for f in fields if not is_compat_switch(f.name)])
        button = gr.Button("Reset settings and seeds to defaults", size="sm", elem_id=form.id("params-reset"))
    with gr.Accordion("Reference compatibility", open=False, elem_id=form.id("compat")):
        gr.Markdown(
            "Switches that reproduce quirks of the original ACE-Step code (to match its songs exactly) or "
            "use the corrected behaviour. They do not change the musical settings.",
            elem_classes="sf-help",
        )
        _param_rows(form, [f for f in fields if is_compat_switch(f.name)])
    return button


def _param_rows(form: _Form, fields: Sequence[FormField]) -> None:
    for start in range(0, len(fields), 3):
        with gr.Row():
            for f in fields[start : start + 3]:
                form.params[f.name] = _component(f, form.id(f"params-{f.name}"))


def _generate_handler(studio: Studio, form: _Form, task: str, after: Callable[[HistoryEntry], dict]):
    def generate(data: dict, progress=gr.Progress()) -> dict:  # noqa: B008 (gradio's injection idiom)
        if form.schema.name != studio.schema.name:
            raise gr.Error(f"the loaded model is not a {form.schema.name} model; pick one in Model first")
        values, params, loras, weight = form.split(task, data)

        def status(frac: float, what: str) -> None:
            progress(frac, desc=what)

        entry = run_task(studio, task, values, params, loras, weight, status)
        return after(entry)

    return generate


def _entry(studio: Studio, entry_id: str | None) -> HistoryEntry:
    if not entry_id:
        raise gr.Error("pick an entry of the history first", print_exception=False)
    return studio.history.get(entry_id)


def _reload_updates(studio: Studio, form: _Form, entry: HistoryEntry) -> dict:
    """Field updates showing ``entry``'s request in ``form``: its tab selected, every tab field of the
    same name filled (a text2music song reloads into the retake tab too), seeds included so it
    regenerates. A warning says when the loaded model cannot run it again."""
    state = form_values(entry.request)
    if form.schema.name != studio.schema.name or state.task not in studio_tasks(studio):
        gr.Warning(
            f"the loaded model does not run this {TASK_LABELS.get(state.task, state.task).lower()} entry; "
            "pick a model that does in Model to generate it again"
        )
    updates: dict = {form.tabs: gr.Tabs(selected=state.task), form.selected: state.task}
    for name, comp in form.common.items():
        if name in state.values:
            updates[comp] = state.values[name]
    for comps in form.tasks.values():
        for name, comp in comps.items():
            if name in state.values:
                updates[comp] = state.values[name]
    for name, comp in form.params.items():
        updates[comp] = state.params[name]
    assert form.lora_select is not None
    choices = list(form.lora_select.choices or [])
    known = {value for _, value in choices}
    extra = [(Path(p).name, p) for p in state.loras if p not in known]
    updates[form.lora_select] = gr.Dropdown(choices=choices + extra, value=state.loras or None)
    updates[form.lora_weight] = state.lora_weight
    return updates


# -- the model selector --------------------------------------------------------------------------------


def _model_selector(studio: Studio) -> tuple[gr.Dropdown, gr.Markdown]:
    with gr.Row(equal_height=False, elem_id="model-row"):
        select = gr.Dropdown(
            choices=[(m.label, m.key) for m in studio.models],
            value=studio.model.key if studio.model is not None else None,
            label="Model",
            info="the models in --checkpoint; picking one loads it in place of the loaded one",
            interactive=len(studio.models) > 1,
            scale=3,
            elem_id="model-select",
        )
        status = gr.Markdown(model_status(studio), elem_id="model-status")
    return select, status


def switch_updates(studio: Studio, form: _Form, before: Any, selected: str | None) -> dict:
    """What changes in ``form`` once ``studio`` loaded another model (``before``: the settings defaults
    of the model before): the form shown when its family is loaded, the tabs of the tasks the model runs
    (the first one selected when the shown tab's task is not among them), the planner shown with an LM,
    and each advanced setting whose default changed (a 1.5 preset: steps, shift, guidance) set to it."""
    loaded = form.schema.name == studio.schema.name
    runs = [t for t in shown_tasks(studio) if t in form.tab_items] if loaded else []
    out: dict = {form.column: gr.Column(visible=loaded)}
    for task, tab in form.tab_items.items():
        out[tab] = gr.Tab(visible=task in runs)
    if runs and selected not in runs:
        out[form.tabs] = gr.Tabs(selected=runs[0])
        out[form.selected] = runs[0]
    if form.planner is not None:
        out[form.planner] = gr.Accordion(visible=loaded and studio.has_planner)
    for switch in form.lm_switches:
        out[switch] = gr.Checkbox(visible=loaded and studio.has_planner)
    if loaded:
        old = default_values(params_fields(before, form.schema))
        for f in params_fields(studio.param_defaults, form.schema):
            value = default_values([f])[f.name]
            if value != old[f.name]:
                out[form.params[f.name]] = gr.update(value=value, info=f.help)
    return out


def _wire_selector(
    studio: Studio, selector: tuple[gr.Dropdown, gr.Markdown], heading: gr.Markdown, forms: Sequence[_Form]
) -> None:
    select, status = selector

    def switch(data: dict, progress=gr.Progress()) -> dict:  # noqa: B008 (gradio's injection idiom)
        before = studio.param_defaults
        key = data[select]
        label = next((m.label for m in studio.models if m.key == key), key)
        progress(0.0, desc=f"loading {label}")
        _user_errors(studio.switch, key)
        out: dict = {status: model_status(studio), heading: _heading(studio)}
        for form in forms:
            out |= switch_updates(studio, form, before, data[form.selected])
        return out

    outputs: list[Any] = [status, heading]
    for form in forms:
        outputs += [form.column, form.tabs, form.selected, *form.tab_items.values(), *form.params.values()]
        outputs += [form.planner] if form.planner is not None else []
        outputs += form.lm_switches
    select.input(
        switch,
        inputs={select, *(form.selected for form in forms if form.selected is not None)},
        outputs=outputs,
        show_progress_on=status,
        concurrency_limit=1,
        concurrency_id="generate",
        api_name="load_model",
    )


def launch_ui(
    demo: gr.Blocks,
    *,
    output_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Serve ``demo`` (one generation at a time; the output folder is served for playback/downloads)."""
    demo.queue(default_concurrency_limit=1)
    return demo.launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(Path(output_dir).expanduser().resolve())],
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        css=_CSS,
        ssr_mode=False,
        mcp_server=False,
        footer_links=["settings"],
    )
