"""The studio (``songflow ui``): a Gradio front end over one loaded pipeline.

``build_ui(studio)`` is a factory (no module globals): one tab per task the loaded model family runs
(``pipeline.family.tasks``, in the order of its request schema's tasks: ``songflow.requests`` for v1,
``songflow.requests_v15`` for 1.5), each built from the task's dataclass fields
(:mod:`songflow.interfaces.studio.form`), the fields every task shares above the tabs (v1: tags/lyrics
with presets; 1.5: caption, lyrics with presets, the song's metadata and an optional reference), LoRA
selection, the seeds in the main form, the advanced sampler/guidance settings with the official defaults
of the loaded family (``pipeline.family.default_params``; the dataclass defaults without a family), the
reference-compatibility switches in their own collapsed section, an output panel (player,
waveform/spectrogram picture, downloads in every format, progress during generation) and the history of
outputs (:mod:`songflow.interfaces.studio.engine`), any of which reloads into the form.

Every user error surfaces as a ``gr.Error`` message in the page, never as a traceback, naming fields by
their labels and uploads by their file names (never a server or temporary folder); an upload is checked as
soon as it arrives, with a note under its input.
"""

from __future__ import annotations

import html
import logging
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from songflow.audio.io import load_audio
from songflow.errors import SongflowError
from songflow.interfaces.sidecar import pipeline_tasks
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
from songflow.requests import EDIT_PRESETS, request_to_dict

log = logging.getLogger("songflow.ui")

TASK_LABELS = {
    "text2music": "Text to music",
    "retake": "Retake",
    "repaint": "Repaint",
    "extend": "Extend",
    "audio2audio": "Audio to audio",
    "edit": "Edit",
    "cover": "Cover",
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
HISTORY_HEADERS = ["created", "task", "tags", "seeds", "entry"]
_CSS = """
.sf-help {opacity: 0.8}
.sf-upload-note {font-size: 0.9em; min-height: 0}
.sf-upload-note .sf-bad {color: #d33}
.sf-history {max-height: 24em; overflow-y: auto}
.sf-history table {width: 100%; border-collapse: collapse; font-size: 0.9em}
.sf-history th, .sf-history td {text-align: left; padding: 0.3em 0.6em; border-bottom: 1px solid #8884}
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
        return gr.Dropdown(choices=list(f.choices), value=value, info=f.help, **common)
    if f.kind == FLOAT and f.low is not None and f.high is not None:
        return gr.Slider(f.low, f.high, value=value, step=0.01, info=f.help, **common)
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
        return gr.Textbox(value=value, placeholder=example, info=f.help, **common)
    lines = 8 if f.kind == LONG_TEXT else 1
    example = next(iter(TAG_PRESETS.values())) if f.name.endswith("tags") else None
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
    """Markdown describing an output: task, seeds, timings, folder."""
    req = entry.request
    lines = [f"**{TASK_LABELS.get(req.task, req.task)}** · `{entry.id}`"]
    lines.append(f"seeds: `{', '.join(map(str, req.params.seeds or ()))}`")
    retake = getattr(req, "retake_seeds", None)
    if retake:
        lines.append(f"retake seeds: `{', '.join(map(str, retake))}`")
    if entry.timings_s:
        total = sum(entry.timings_s.values())
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in entry.timings_s.items())
        lines.append(f"time: {total:.2f} s ({parts})")
    lines.append(f"files: `{entry.folder}`")
    return "  \n".join(lines)


def entry_view(entry: HistoryEntry) -> tuple[str, Any, list[str], str, dict]:
    """(player file, waveform/spectrogram picture, downloads, info, parameters) of an entry's first take."""
    wav, rate = load_audio(entry.takes[0])
    image = waveform_spectrogram_image(wav, rate)
    files = [str(p) for p in entry.files]
    return str(entry.takes[0]), image, files, entry_info(entry), request_to_dict(entry.request)


# -- layout --------------------------------------------------------------------------------------------


class _Form:
    """The form's components, by field name, for the handlers."""

    def __init__(self) -> None:
        self.common: dict[str, gr.components.Component] = {}
        self.tasks: dict[str, dict[str, gr.components.Component]] = {}
        self.params: dict[str, gr.components.Component] = {}
        self.lora_select: gr.Dropdown | None = None
        self.lora_weight: gr.components.Component | None = None

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
    """The tasks the studio offers: those of the family's request schema that the family runs."""
    runs = pipeline_tasks(studio.pipeline)
    return tuple(task for task in studio.schema.tasks if task in runs)


def build_ui(studio: Studio, *, title: str = "songflow studio") -> gr.Blocks:
    """The studio page over ``studio`` (not launched; see :func:`launch_ui`)."""
    form = _Form()
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(_heading(studio))
        with gr.Row():
            with gr.Column(scale=3):
                tabs, buttons = _prompt_and_tasks(form, studio)
                if studio.has_planner:
                    _planner_panel(form, studio)
                _lora_panel(form, studio)
                reset = _advanced_panel(form, studio)
            with gr.Column(scale=2):
                view = _output_panel()
        history = _HistoryPanel(studio)
        out_audio = view[0]

        def after_generate(entry: HistoryEntry) -> dict:
            return dict(zip(view, entry_view(entry), strict=True)) | history.updates(entry.id)

        for task, button in buttons.items():
            button.click(
                _generate_handler(studio, form, task, after_generate),
                inputs=form.inputs(task),
                outputs=[*view, history.table, history.pick],
                show_progress_on=out_audio,  # the progress bar (and an error) on the player only
                concurrency_limit=1,
                concurrency_id="generate",
                api_name=f"generate_{task}",
            )
        history.wire(form, tabs, view)
        reset.click(
            lambda: [
                default_values(params_fields(studio.param_defaults, studio.schema))[n] for n in form.params
            ],
            outputs=list(form.params.values()),
            api_name=False,
        )
    return demo


def _heading(studio: Studio) -> str:
    checkpoint = studio.runtime.get("checkpoint", "?")
    return (
        f"## songflow studio\nmodel `{Path(checkpoint).name}` on `{studio.runtime.get('device', '?')}` · "
        f"outputs in `{studio.history.root}`"
    )


def _output_panel() -> list:
    """Player, picture, downloads, info and parameters of the shown output (in :func:`entry_view` order)."""
    out_audio = gr.Audio(
        label="Output",
        type="filepath",
        interactive=False,
        buttons=["download"],
        elem_id="output-audio",
    )
    out_image = gr.Image(
        label="Waveform and spectrogram",
        type="numpy",
        interactive=False,
        buttons=["download", "fullscreen"],
        elem_id="output-picture",
    )
    out_files = gr.File(
        label="Download (every format + parameters)",
        file_count="multiple",
        interactive=False,
        elem_id="output-files",
    )
    out_info = gr.Markdown(elem_id="output-info")
    with gr.Accordion("Parameters", open=False):
        out_params = gr.JSON(label="The request (seeds included)", elem_id="output-params")
    return [out_audio, out_image, out_files, out_info, out_params]


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

    def wire(self, form: _Form, tabs: gr.Tabs, view: list) -> None:
        studio = self.studio

        def reload(entry_id: str | None) -> dict:
            entry = _user_errors(_entry, studio, entry_id)
            shown = dict(zip(view, _user_errors(entry_view, entry), strict=True))
            return _reload_updates(form, tabs, entry) | shown

        self.reload_btn.click(
            reload, inputs=self.pick, outputs=[*form.all_fields(), tabs, *view], api_name=False
        )

        def use_as_source(entry_id: str | None) -> list:
            entry = _user_errors(_entry, studio, entry_id)
            return [str(entry.takes[0])] * len(form.audio_inputs())

        self.source_btn.click(use_as_source, inputs=self.pick, outputs=form.audio_inputs(), api_name=False)
        self.refresh_btn.click(
            lambda: (history_table(studio), gr.Dropdown(choices=history_choices(studio))),
            outputs=[self.table, self.pick],
            api_name=False,
        )


def _prompt_and_tasks(form: _Form, studio: Studio) -> tuple[gr.Tabs, dict[str, gr.Button]]:
    """The shared fields (tags or caption, lyrics with presets, 1.5's metadata), the seeds, then one tab
    per task with its own fields and its button."""
    buttons = {}
    fields = {f.name: f for f in common_fields(studio.schema)}
    presets = {"tags": TAG_PRESETS, "lyrics": LYRIC_PRESETS}
    for name, f in fields.items():
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                form.common[name] = _component(f, f"field-{name}")
            if name in presets:
                with gr.Column(scale=1, min_width=180):
                    choice = gr.Dropdown(
                        choices=list(presets[name]), value=None, label="Preset", elem_id=f"preset-{name}"
                    )
                choice.change(
                    lambda key, table=presets[name]: table.get(key, gr.skip()) if key else gr.skip(),
                    inputs=choice,
                    outputs=form.common[name],
                    api_name=False,
                )
    _main_params(form, studio)
    with gr.Tabs() as tabs:
        for task in studio_tasks(studio):
            with gr.Tab(TASK_LABELS.get(task, task), id=task, elem_id=f"tab-{task}"):
                buttons[task] = _task_tab(form, studio, task)
    return tabs, buttons


def _main_params(form: _Form, studio: Studio) -> None:
    """The sampler settings a musician picks per song (the seeds, how many takes), in the main form."""
    by_name = {f.name: f for f in params_fields(studio.param_defaults, studio.schema)}
    with gr.Row(elem_id="main-params"):
        for name in MAIN_PARAMS:
            form.params[name] = _component(by_name[name], f"params-{name}")


def _task_tab(form: _Form, studio: Studio, task: str) -> gr.Button:
    """A task's tab: its description, its fields (each audio input with a note checking the upload as
    soon as it arrives) and its Generate button."""
    gr.Markdown(task_description(task, studio.schema), elem_classes="sf-help")
    comps = {}
    for f in task_fields(task, studio.schema):
        comps[f.name] = _component(f, f"{task}-{f.name}")
        if f.kind == AUDIO:
            note = gr.HTML("", elem_id=f"{task}-{f.name}-note", elem_classes="sf-upload-note")
            comps[f.name].change(
                lambda path, name=f.name: upload_note(studio, task, name, path),
                inputs=comps[f.name],
                outputs=note,
                api_name=False,
                show_progress="hidden",
            )
    if task == "edit":
        _edit_presets(comps)
    form.tasks[task] = comps
    with gr.Row(elem_id="generate-row"):
        return gr.Button(
            f"Generate ({TASK_LABELS.get(task, task).lower()})",
            variant="primary",
            elem_id=f"generate-{task}",
        )


def _edit_presets(comps: dict) -> None:
    targets = [comps["n_min_frac"], comps["n_max_frac"]]
    preset = gr.Dropdown(
        choices=[(key.replace("_", " ").capitalize(), key) for key in sorted(EDIT_PRESETS)],
        value=None,
        label="Edit preset",
        info=f"Fills in {targets[0].label} and {targets[1].label}.",
        elem_id="edit-preset",
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


def _planner_panel(form: _Form, studio: Studio) -> None:
    """Format (tidy the caption and lyrics above) and understand (read an uploaded song back) with the
    5 Hz LM; their answers fill the caption, lyrics and metadata fields."""
    with gr.Accordion("5 Hz LM planner: format, understand", open=False, elem_id="planner"):
        gr.Markdown(
            "Tick **Plan with the LM** in a tab to let the LM plan the song (metadata and audio codes); "
            "*Simple* writes a whole song from a description. Here the LM tidies the caption and lyrics "
            "above, or reads an uploaded song back into them.",
            elem_classes="sf-help",
        )
        audio = gr.Audio(
            label="Audio to understand", type="filepath", sources=["upload"], elem_id="planner-audio"
        )
        with gr.Row():
            fmt = gr.Button("Format caption and lyrics", size="sm", elem_id="planner-format")
            und = gr.Button("Understand the audio", size="sm", elem_id="planner-understand")
        note = gr.Markdown("", elem_id="planner-note")
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
            api_name=f"planner_{task}",
        )


def _lora_panel(form: _Form, studio: Studio) -> None:
    takes_loras = "loras" in studio.schema.common
    offered = studio.loras if takes_loras else []
    with gr.Accordion("LoRA adapters", open=bool(offered)):
        info = (
            "adapters found in --lora-dir; the weight applies to each"
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
            elem_id="lora-select",
        )
        form.lora_weight = _component(lora_weight_field(), "lora-weight")


def _advanced_panel(form: _Form, studio: Studio) -> gr.Button:
    """The sampler/guidance widgets showing the loaded family's defaults, the reference-compatibility
    switches in their own collapsed section, and the reset button (it resets the seeds too)."""
    fields = [f for f in params_fields(studio.param_defaults, studio.schema) if f.name not in MAIN_PARAMS]
    with gr.Accordion("Advanced settings (official defaults)", open=False, elem_id="advanced"):
        _param_rows(form, [f for f in fields if not is_compat_switch(f.name)])
        button = gr.Button("Reset settings and seeds to defaults", size="sm", elem_id="params-reset")
    with gr.Accordion("Reference compatibility", open=False, elem_id="compat"):
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
                form.params[f.name] = _component(f, f"params-{f.name}")


def _generate_handler(studio: Studio, form: _Form, task: str, after: Callable[[HistoryEntry], dict]):
    def generate(data: dict, progress=gr.Progress()) -> dict:  # noqa: B008 (gradio's injection idiom)
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


def _reload_updates(form: _Form, tabs: gr.Tabs, entry: HistoryEntry) -> dict:
    """Field updates showing ``entry``'s request: its tab selected, every tab field of the same name
    filled (a text2music song reloads into the retake tab too), seeds included so it regenerates."""
    state = form_values(entry.request)
    updates: dict = {tabs: gr.Tabs(selected=state.task)}
    for name, comp in form.common.items():
        updates[comp] = state.values[name]
    for comps in form.tasks.values():
        for name, comp in comps.items():
            if name in state.values:
                updates[comp] = state.values[name]
    for name, comp in form.params.items():
        updates[comp] = state.params[name]
    choices = list(form.lora_select.choices or [])
    known = {value for _, value in choices}
    extra = [(Path(p).name, p) for p in state.loras if p not in known]
    updates[form.lora_select] = gr.Dropdown(choices=choices + extra, value=state.loras or None)
    updates[form.lora_weight] = state.lora_weight
    return updates


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
