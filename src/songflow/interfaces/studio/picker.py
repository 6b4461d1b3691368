"""The window picker of a task tab: a picture of the uploaded source with the part the run writes
highlighted, and sliders bound to the window's fields.

Gradio has no range slider, so a window is two sliders beside the two number fields of the request
(``start_s``/``end_s`` of a repaint or lego span, ``left_s``/``right_s`` of the seconds an extend adds):
moving a slider writes its number (in the browser, no round trip), typing a number moves its slider,
and every change of the numbers or the upload redraws the picture
(:func:`songflow.interfaces.studio.engine.window_picture`). Tabs with a source and no window show the
source's picture alone. The numbers stay the request's fields, so the form round trip (history reload)
is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import gradio as gr

from songflow.errors import SongflowError
from songflow.interfaces.studio.engine import source_envelope, window_picture

log = logging.getLogger("songflow.ui")

SPAN = ("start_s", "end_s")  # a span of the source (repaint, lego)
PAD = ("left_s", "right_s")  # seconds added around the source (extend)
SOURCE = "source_path"
_SLIDER_LABELS = {
    "start_s": "Span start (s)",
    "end_s": "Span end (s)",
    "left_s": "Add before (s)",
    "right_s": "Add after (s)",
}
_SPAN_SLIDER_MAX_S = 30.0  # until a source is uploaded
_PAD_SLIDER_MAX_S = 240.0  # the slider's reach past which the number field takes longer extensions
# slider -> its field (a number, or a text box for an optional field); field -> slider, kept when the
# field holds no number (an empty end: to the end)
_TO_NUMBER_JS = "(value) => value"
_TO_TEXT_JS = "(value) => String(value)"
_TO_SLIDER_JS = "(text, now) => (text === null || text === '' || isNaN(Number(text))) ? now : Number(text)"


def window_fields(names: set[str] | Any) -> tuple[str, str] | None:
    """The window fields of a task with these field names: :data:`SPAN`, :data:`PAD`, or None."""
    names = set(names)
    if SOURCE not in names:
        return None
    for pair in (SPAN, PAD):
        if set(pair) <= names:
            return pair
    return None


def _seconds(value: Any) -> float | None:
    """A number widget's value in seconds (None when empty or not a number)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def picture(path: str | None, window: tuple[str, str] | None, first: Any = None, second: Any = None):
    """The picker's picture (uint8 RGB [H, W, 3]) of the upload ``path`` with the window ``first`` ..
    ``second`` (the values of the ``window`` fields' widgets); None without a readable upload (the note
    under the upload says why)."""
    if not path:
        return None
    try:
        envelope = source_envelope(path)
    except (SongflowError, OSError, ValueError):
        return None
    if window == SPAN:
        return window_picture(envelope, _seconds(first) or 0.0, _seconds(second))
    if window == PAD:
        return window_picture(envelope, left_s=_seconds(first) or 0.0, right_s=_seconds(second) or 0.0)
    return window_picture(envelope)


def slider_ranges(path: str | None, window: tuple[str, str] | None, second: Any = None) -> list[dict]:
    """``gr.Slider`` settings of the two sliders once ``path`` is uploaded: a span's reach the source's
    length (the end slider at the end when the end field is empty); an extend's are unchanged."""
    if window != SPAN or not path:
        return [{}, {}]
    try:
        duration_s = round(source_envelope(path).duration_s, 2)
    except (SongflowError, OSError, ValueError):
        return [{}, {}]
    end = _seconds(second)
    return [{"maximum": duration_s}, {"maximum": duration_s, "value": duration_s if end is None else end}]


@dataclasses.dataclass
class Picker:
    """The picker's components in one tab: the picture and, for a window, its two sliders."""

    window: tuple[str, str] | None
    image: gr.Image
    sliders: list[gr.Slider]

    def wire(self, comps: Mapping[str, Any]) -> None:
        """Bind the sliders and the picture to the tab's fields ``comps`` (by field name)."""
        source = comps[SOURCE]
        numbers = [comps[name] for name in self.window or ()]
        quiet: dict[str, Any] = {"api_name": False, "show_progress": "hidden", "queue": False}
        for slider, number in zip(self.sliders, numbers, strict=True):
            to_field = _TO_TEXT_JS if isinstance(number, gr.Textbox) else _TO_NUMBER_JS
            slider.input(None, inputs=slider, outputs=number, js=to_field, **quiet)
            number.input(None, inputs=[number, slider], outputs=slider, js=_TO_SLIDER_JS, **quiet)
        window = self.window

        def redraw(path, *values):
            return picture(path, window, *values)

        for trigger in (source, *numbers):
            trigger.change(
                redraw, inputs=[source, *numbers], outputs=self.image, trigger_mode="always_last", **quiet
            )
        if window == SPAN:

            def reach(path, end):
                return [gr.Slider(**settings) for settings in slider_ranges(path, window, end)]

            source.change(reach, inputs=[source, numbers[1]], outputs=self.sliders, **quiet)


def add_picker(task_id: str, names: set[str], defaults: Mapping[str, Any]) -> Picker:
    """The picture (and the sliders of the task's window, showing the fields' ``defaults``) of a tab
    whose fields ``names`` include a source; placed where it is called (below the upload)."""
    window = window_fields(names)
    image = gr.Image(
        label="Window (the highlighted part is written)" if window else "Source",
        type="numpy",
        interactive=False,
        height=130,
        buttons=[],
        elem_id=f"{task_id}-window",
    )
    sliders = []
    if window is not None:
        reach = _SPAN_SLIDER_MAX_S if window == SPAN else _PAD_SLIDER_MAX_S
        with gr.Row():
            for name in window:
                value = _seconds(defaults.get(name))
                sliders.append(
                    gr.Slider(
                        0.0,
                        max(reach, value or 0.0),
                        value=reach if value is None else value,
                        step=0.1,
                        label=_SLIDER_LABELS[name],
                        elem_id=f"{task_id}-{name}-slider",
                    )
                )
    return Picker(window, image, sliders)
