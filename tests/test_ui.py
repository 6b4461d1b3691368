"""The studio (``songflow ui``) without a browser: the form <-> request mapping derived from the request
dataclasses, the history (written atomically, reloadable, regenerating the same audio), error messages,
LoRA discovery, the waveform/spectrogram picture and the built Blocks. The browser test is test_ui_browser.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import write_random_lora
from songflow.audio.io import SUPPORTED_FORMATS, load_audio, save_audio
from songflow.checkpoint.lora import discover_loras
from songflow.errors import AudioError, ConfigError
from songflow.interfaces.studio import form as ui_form
from songflow.interfaces.studio.engine import History, Studio, waveform_spectrogram_image
from songflow.interfaces.studio.form import (
    AUDIO,
    BOOL,
    CHOICE,
    FLOAT,
    INT,
    INTS,
    build_request,
    common_fields,
    default_values,
    form_values,
    params_fields,
    task_fields,
)
from songflow.requests import (
    EDIT_PRESETS,
    SAMPLER_NAMES,
    TASKS,
    AudioToAudio,
    Edit,
    Extend,
    GenerationParams,
    LoraRef,
    Repaint,
    RequestFieldError,
    Retake,
    Text2Music,
)
from songflow.requests_v15 import V15_SCHEMA

FAST = {"steps": 3}  # sampler steps for the generations below (the rest: official defaults)


def _widget_params(**overrides) -> dict:
    return default_values(params_fields()) | overrides


class _FakePipeline:
    """Accepts every request; ``generate`` raises ``error``."""

    def __init__(self, error: Exception):
        self.error = error

    def check_request(self, request) -> None:
        pass

    def generate(self, request, progress=None):
        raise self.error


@pytest.fixture(scope="module")
def gr():
    return pytest.importorskip("gradio", reason="the studio needs the 'ui' extra (gradio)")


@pytest.fixture
def studio(pipe, tmp_path):
    return Studio(pipe, History(tmp_path / "out"), runtime={"checkpoint": "tiny", "device": "cpu"})


@pytest.fixture
def source_wav(tmp_path):
    """2 s of a 440 Hz stereo tone at 44.1 kHz."""
    t = torch.arange(88200) / 44100
    path = tmp_path / "source.wav"
    save_audio(path, 0.3 * torch.sin(2 * torch.pi * 440 * t).expand(2, -1), 44100)
    return path


# -- fields derived from the dataclasses --------------------------------------------------------------


def test_every_request_field_has_exactly_one_widget():
    common = {f.name for f in common_fields()}
    assert common == {"tags", "lyrics"}
    for task, cls in TASKS.items():
        names = {f.name for f in dataclasses.fields(cls)} - {"params", "loras"}
        own = [f.name for f in task_fields(task)]
        assert len(own) == len(set(own))
        assert common | set(own) == names, task
        assert not common & set(own)
    assert [f.name for f in params_fields()] == [f.name for f in dataclasses.fields(GenerationParams)]


def test_widgets_carry_the_dataclass_types_defaults_and_choices():
    official = GenerationParams()
    by_name = {f.name: f for f in params_fields()}
    for name, f in by_name.items():
        assert f.default == getattr(official, name), name
    assert by_name["steps"].kind == INT and by_name["steps"].default == 60
    assert by_name["sampler"].kind == CHOICE and by_name["sampler"].choices == SAMPLER_NAMES
    assert by_name["omega_mean_over"].choices == ("sample", "batch")
    assert by_name["use_erg_tag"].kind == BOOL and by_name["use_erg_tag"].default is True
    assert by_name["seeds"].kind == INTS and by_name["seeds"].optional
    assert by_name["guidance_scale"].kind == FLOAT and by_name["guidance_scale"].default == 15.0
    repaint = {f.name: f for f in task_fields("repaint")}
    assert repaint["source_path"].kind == AUDIO and repaint["source_path"].required
    assert (repaint["variance_frac"].low, repaint["variance_frac"].high) == (0.0, 1.0)
    assert (
        repaint["end_s"].label == "End (s)"
        and repaint["end_s"].default == Repaint.__dataclass_fields__["end_s"].default
    )
    assert ui_form.lora_weight_field().default == LoraRef("x").weight


def test_help_texts_come_from_the_metadata_or_the_docstrings():
    retake = {f.name: f for f in task_fields("retake")}
    variance = Retake.__dataclass_fields__["variance_frac"].metadata.get("help")
    expected = variance.rstrip(".")[:20] if variance else "fresh song"
    assert expected.lower() in retake["variance_frac"].help.lower()
    assert "Default: 0.2." in retake["variance_frac"].help
    lyrics = {f.name: f for f in common_fields()}["lyrics"]
    assert "[inst]" in lyrics.help and "``" not in lyrics.help
    legacy = {f.name: f for f in params_fields()}["legacy_double_shift"]
    assert "twice" in legacy.help and "Default: on." in legacy.help
    assert "edit" in TASKS and "FlowEdit" in ui_form.task_description("edit")


@dataclasses.dataclass(frozen=True)
class _Documented:
    """A made-up request.

    ``speed_frac`` sets how fast; the presets (``SPEED_PRESETS``) include fast_lane. ``loud`` True plays
    loud (see ``songflow.audio.loudness.normalise``), as the reference (docs/reference_behaviour.md#r9).
    """

    speed_frac: float = 0.5
    loud: bool = False
    take_s: float = dataclasses.field(default=1.0, metadata={"label": "Take length", "unit": "seconds"})
    source_path: str = dataclasses.field(default="", metadata={"label": "Your recording"})
    gain: float = dataclasses.field(default=0.0, metadata={"help": "louder than ``SPEED_PRESETS`` say"})


def test_labels_come_from_the_metadata_then_the_name():
    by_name = {f.name: f for f in ui_form.form_fields(_Documented)}
    assert by_name["take_s"].label == "Take length (s)"
    assert by_name["source_path"].label == "Your recording"
    assert by_name["speed_frac"].label == "Speed (0-1)" and by_name["gain"].label == "Gain"
    assert {f.name: f.label for f in task_fields("repaint")}["source_path"] == "Source audio"
    assert {f.name: f.label for f in task_fields("text2music")}["duration_s"] == "Duration (s)"


def test_help_is_in_plain_words_without_code_names():
    by_name = {f.name: f.help for f in ui_form.form_fields(_Documented)}
    assert by_name["speed_frac"].startswith("Speed sets how fast; the presets include fast lane.")
    assert "fast lane. Loud on plays loud, as the reference. Default: off." in by_name["loud"]
    assert by_name["gain"] == "Louder than speed presets say. Default: 0.0."
    edit = ui_form.task_description("edit")
    assert "EDIT_PRESETS" not in edit and "only_lyrics" not in edit and "**source audio**" in edit
    assert "Presets" in edit
    fields = [*common_fields(), *params_fields()] + [f for task in TASKS for f in task_fields(task)]
    texts = [f.help for f in fields] + [ui_form.task_description(task) for task in TASKS]
    for text in texts:
        assert "``" not in text and "songflow." not in text and "docs/" not in text, text
        assert not re.search(r"\b[A-Z]+_[A-Z_]+\b", text), text  # no constant names
        assert not re.search(r"\b[a-z]+_[a-z_]+\b", text), text  # no field or code names


def _examples(path: str) -> list:
    params = GenerationParams(
        steps=7,
        sampler="pingpong",
        guidance="cfg",
        guidance_scale=4.5,
        use_erg_lyric=False,
        step_indices=(1, 3, 5),
        seeds=(11, 12),
        batch_size=2,
        omega_mean_over="batch",
        legacy_double_shift=False,
    )
    loras = (LoraRef("/adapters/a", 0.7), LoraRef("/adapters/b", 0.7))
    return [
        Text2Music(tags="jazz", lyrics="[verse]\nla la", duration_s=12.5, params=params, loras=loras),
        Retake(tags="jazz", duration_s=30, variance_frac=0.4, retake_seeds=(3, 4), params=params),
        Repaint(tags="rock", source_path=path, start_s=1.0, end_s=2.5, variance_frac=0.9),
        Extend(tags="rock", source_path=path, left_s=0.0, right_s=4.0, retake_seeds=(5,)),
        AudioToAudio(tags="lofi", reference_path=path, strength_frac=0.25),
        Edit(
            tags="rock", source_path=path, target_lyrics="[verse]\nnew words", n_min_frac=0.2, n_max_frac=0.4
        ),
        Edit(tags="rock", source_path=path, target_tags="jazz", n_avg=3),
    ]


@pytest.mark.parametrize("index", range(7))
def test_form_round_trip(index):
    """A request shown in the form and read back is the same request (what reloading history relies on)."""
    request = _examples("/songs/src.wav")[index]
    state = form_values(request)
    assert state.task == request.task
    again = build_request(state.task, state.values, state.params, state.loras, state.lora_weight)
    assert again == request


def test_untouched_form_gives_the_official_defaults():
    request = build_request("text2music", {"tags": "pop", "lyrics": ""}, _widget_params())
    assert request == Text2Music(tags="pop")
    # cleared widgets (None) mean "the default" too, checkboxes included
    cleared = build_request("retake", {"tags": "pop"}, {name: None for name in _widget_params()})
    assert cleared == Retake(tags="pop")
    assert cleared.params.use_erg_tag is True


def test_bad_widget_values_name_the_field():
    with pytest.raises(ConfigError, match=r"Seeds: expected whole numbers.*'1, x'"):
        build_request("text2music", {"tags": "pop"}, _widget_params(seeds="1, x"))
    with pytest.raises(ConfigError, match=r"N avg: expected a whole number"):
        build_request("edit", {"tags": "a", "source_path": "s.wav", "target_tags": "b", "n_avg": 1.5}, {})
    with pytest.raises(ConfigError, match=r"Source audio: no audio uploaded"):
        build_request("repaint", {"tags": "pop", "source_path": None}, {})
    with pytest.raises(ConfigError, match="tags must be a non-empty text"):
        build_request("text2music", {"tags": "  "}, {})
    with pytest.raises(ConfigError, match="edit needs target_tags and/or target_lyrics"):
        build_request("edit", {"tags": "a", "source_path": "s.wav", "target_tags": " "}, {})
    with pytest.raises(ConfigError, match="unknown task"):
        build_request("karaoke", {"tags": "a"}, {})


def test_edit_presets_are_valid_n_ranges():
    for n_min, n_max in EDIT_PRESETS.values():
        values = {
            "tags": "a",
            "source_path": "s.wav",
            "target_tags": "b",
            "n_min_frac": n_min,
            "n_max_frac": n_max,
        }
        assert build_request("edit", values, {}).n_min_frac == n_min


# -- the studio: history, reload, errors ----------------------------------------------------------------


def test_generate_writes_every_format_and_a_reload_regenerates_the_same_song(studio):
    steps = []
    values = {"tags": "funk, pop", "lyrics": "[verse]\nneon lights", "duration_s": 1.0}
    entry = studio.generate("text2music", values, _widget_params(**FAST), status=lambda f, w: steps.append(f))
    assert steps[0] == 0.0 and steps[-1] == 1.0 and len(steps) >= FAST["steps"] + 2

    # 1. every format, the sidecar last; the history lists the entry
    names = sorted(p.name for p in entry.folder.iterdir())
    assert names == sorted([f"song.{fmt}" for fmt in SUPPORTED_FORMATS] + ["song.json"])
    assert [p.name for p in entry.files] == [f"song.{fmt}" for fmt in SUPPORTED_FORMATS] + ["song.json"]
    assert [e.id for e in studio.history.entries()] == [entry.id]
    sidecar = json.loads((entry.folder / "song.json").read_text())
    assert sidecar["request"]["params"]["seeds"] == list(entry.request.params.seeds)
    assert sidecar["runtime"]["checkpoint"] == "tiny"

    # 2. reload the entry into the form and generate again: the same request, the same audio
    again_entry = studio.history.get(entry.id)
    state = form_values(again_entry.request)
    assert state.params["seeds"] == str(entry.request.params.seeds[0])
    again = studio.generate(state.task, state.values, state.params, state.loras, state.lora_weight)
    assert again.request == entry.request
    first, _ = load_audio(entry.takes[0])
    second, _ = load_audio(again.takes[0])
    assert torch.equal(first, second)
    assert len(studio.history.entries()) == 2


def test_uploaded_source_is_kept_with_the_entry(studio, source_wav):
    values = {"tags": "rock", "lyrics": "", "source_path": str(source_wav), "right_s": 1.0}
    entry = studio.generate("extend", values, _widget_params(**FAST))
    kept = entry.folder / "source.wav"
    assert entry.request.source_path == str(kept)
    assert kept.read_bytes() == source_wav.read_bytes()
    source_wav.unlink()  # the upload was temporary; the entry still regenerates
    state = form_values(studio.history.get(entry.id).request)
    assert state.values["source_path"] == str(kept)
    wav, rate = load_audio(entry.takes[0])
    assert wav.shape[-1] / rate > 2.5  # 2 s source + 1 s on the right


@pytest.mark.parametrize(
    ("task", "values", "message"),
    [
        ("repaint", {"tags": "rock"}, "Source audio: no audio uploaded"),
        ("audio2audio", {"tags": "rock", "reference_path": ""}, "Reference audio: no audio uploaded"),
        ("text2music", {"tags": "rock", "duration_s": 100000}, "240"),
        ("text2music", {"tags": "rock", "duration_s": -3}, "positive number of seconds"),
        ("text2music", {"tags": ""}, "tags must be a non-empty text"),
        (
            "repaint",
            {"tags": "rock", "source_path": "UNREADABLE", "start_s": 5, "end_s": 1},
            "window is empty",
        ),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(gr, studio, tmp_path, task, values, message):
    from songflow.interfaces.studio.app import run_task

    with pytest.raises(gr.Error) as info:
        run_task(studio, task, values, _widget_params(**FAST))
    assert message in info.value.message
    assert "Traceback" not in info.value.message
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


def test_unreadable_upload_is_a_message(gr, studio, tmp_path):
    from songflow.interfaces.studio.app import run_task

    bogus = tmp_path / "notes.wav"
    bogus.write_text("these are not samples")
    with pytest.raises(gr.Error) as info:
        run_task(studio, "repaint", {"tags": "rock", "source_path": str(bogus)}, _widget_params(**FAST))
    assert "the uploaded source audio cannot be used" in info.value.message
    assert "notes.wav" in info.value.message
    assert list((tmp_path / "out").iterdir()) == []


def test_unexpected_failure_is_a_message_and_leaves_no_entry(gr, tmp_path):
    from songflow.interfaces.studio.app import run_task

    studio = Studio(_FakePipeline(RuntimeError("device lost")), History(tmp_path / "out"))
    with pytest.raises(gr.Error) as info:
        run_task(studio, "text2music", {"tags": "rock", "duration_s": 1}, {})
    assert info.value.message.startswith("generation failed (RuntimeError: device lost)")
    assert list((tmp_path / "out").iterdir()) == []


def test_history_skips_foreign_folders_and_refuses_unknown_ids(tmp_path):
    history = History(tmp_path)
    (tmp_path / "notes").mkdir()
    damaged = tmp_path / "20260101-000000-text2music-0123abcd"
    damaged.mkdir()
    (damaged / "song.json").write_text("{not json")
    assert history.entries() == []
    for bad in ("../etc", "notes", "20260101-000000-text2music-0123abcd", ""):
        with pytest.raises(ConfigError):
            history.get(bad)


def test_discover_loras(tmp_path):
    (tmp_path / "waltz").mkdir()
    (tmp_path / "waltz" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (tmp_path / "rap.safetensors").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "readme.txt").write_text("hi")
    assert discover_loras(tmp_path) == [
        ("rap.safetensors", str(tmp_path / "rap.safetensors")),
        ("waltz", str(tmp_path / "waltz")),
    ]
    assert discover_loras(None) == []
    with pytest.raises(ConfigError, match="not a folder"):
        discover_loras(tmp_path / "missing")


def test_lora_chosen_in_the_form_changes_the_song(studio, tiny_ckpt, tmp_path):
    """An adapter offered from --lora-dir and selected in the form is applied (weight 0: the base song)."""
    from songflow.checkpoint.acestep_v1 import load_transformer
    from songflow.checkpoint.lora import OFFICIAL_TARGET_MODULES

    model = load_transformer(tiny_ckpt / "ace_step_transformer", dtype=torch.float32, device="cpu")
    write_random_lora(model, OFFICIAL_TARGET_MODULES, tmp_path / "loras" / "style")
    (offered,) = discover_loras(tmp_path / "loras")

    values = {"tags": "waltz", "lyrics": "", "duration_s": 1.0}
    params = _widget_params(seeds="5", **FAST)
    try:
        base = studio.generate("text2music", values, params)
        styled = studio.generate("text2music", values, params, [offered[1]], 1.0)
        off = studio.generate("text2music", values, params, [offered[1]], 0.0)
    finally:
        studio.pipeline.apply_loras(())  # the pipeline fixture is shared
    assert styled.request.loras == (LoraRef(offered[1], 1.0),)
    audio = {
        name: load_audio(e.takes[0])[0] for name, e in [("base", base), ("styled", styled), ("off", off)]
    }
    assert not torch.allclose(audio["styled"], audio["base"], atol=1e-4)
    assert torch.allclose(audio["off"], audio["base"], atol=1e-5)
    assert form_values(styled.request).loras == [offered[1]]


def test_spectrogram_picture_puts_a_tone_at_its_frequency():
    rate = 48000
    t = torch.arange(rate * 2) / rate
    image = waveform_spectrogram_image(0.5 * torch.sin(2 * torch.pi * 1000 * t)[None], rate)
    assert image.shape == (90 + 230, 900, 3) and image.dtype == np.uint8
    spec = image[90:].astype(float).sum(axis=(1, 2))  # brightness per row (high frequencies on top)
    rows_hz = np.geomspace(30.0, rate / 2, 230)[::-1]
    assert abs(np.log2(rows_hz[spec.argmax()] / 1000)) < 0.1
    wave = image[:90].astype(int).sum(-1)
    assert (wave > 3 * (16 + 18 + 28)).any(axis=0).all()  # a waveform mark in every column


# -- the Gradio layer ----------------------------------------------------------------------------------


def test_blocks_have_a_widget_per_field_and_reload_fills_the_form(gr, studio):
    from songflow.interfaces.studio.app import build_ui

    entry = studio.generate(
        "text2music", {"tags": "lofi <b>", "lyrics": "[inst]", "duration_s": 1.0}, _widget_params(**FAST)
    )
    demo = build_ui(studio)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for task in TASKS:
        assert f"generate-{task}" in by_id
        for f in task_fields(task):
            assert f"{task}-{f.name}" in by_id
    for f in params_fields():
        assert by_id[f"params-{f.name}"].value == default_values([f])[f.name]
    assert by_id["field-tags"].value == "" and "lora-select" in by_id
    fns = {f.name: f for f in demo.fns.values()}
    generate = [f for f in demo.fns.values() if f.name == "generate"]
    assert len(generate) == len(TASKS)
    assert {f.concurrency_id for f in generate} == {"generate"}

    updates = fns["reload"].fn(entry.id)
    shown = {getattr(c, "elem_id", None): v for c, v in updates.items()}
    assert shown["field-tags"] == "lofi <b>" and shown["field-lyrics"] == "[inst]"
    assert shown["text2music-duration_s"] == 1.0 and shown["retake-duration_s"] == 1.0
    assert shown["params-steps"] == FAST["steps"]
    assert shown["params-seeds"] == str(entry.request.params.seeds[0])
    assert shown["output-audio"] == str(entry.takes[0])
    assert shown["output-params"]["params"]["seeds"] == list(entry.request.params.seeds)
    assert "repaint-source_path" not in shown  # a text2music entry has no source
    sources = fns["use_as_source"].fn(entry.id)  # into every audio input: repaint, extend, edit, audio2audio
    assert sources == [str(entry.takes[0])] * 4
    assert entry.id in by_id["history-table"].value
    assert "lofi &lt;b&gt;" in by_id["history-table"].value  # user text is escaped in the table
    with pytest.raises(gr.Error, match="pick an entry"):
        fns["reload"].fn(None)


def test_tabs_are_the_tasks_the_loaded_family_runs(gr, tmp_path):
    import types

    from songflow.interfaces.studio.app import build_ui, studio_tasks

    fake = _FakePipeline(RuntimeError("unused"))
    assert studio_tasks(Studio(fake, History(tmp_path / "a"))) == tuple(TASKS)  # no family: every task
    fake.family = types.SimpleNamespace(tasks=("retake", "text2music", "not-a-task"))
    studio = Studio(fake, History(tmp_path / "b"))
    assert studio_tasks(studio) == ("text2music", "retake")  # in the order of TASKS, known tasks only
    demo = build_ui(studio)
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {i for i in ids if i.startswith("tab-")} == {"tab-text2music", "tab-retake"}
    assert "generate-repaint" not in ids and "repaint-source_path" not in ids
    assert len([f for f in demo.fns.values() if f.name == "generate"]) == 2


def test_advanced_defaults_come_from_the_loaded_family(gr, tmp_path):
    import types

    from songflow.interfaces.studio.app import build_ui

    def advanced(studio):
        demo = build_ui(studio)
        by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
        button = by_id["params-reset"]._id
        (reset,) = [f for f in demo.fns.values() if any(target == button for target, _ in f.targets)]
        shown = {f.name: by_id[f"params-{f.name}"].value for f in params_fields()}
        names = [c.elem_id.removeprefix("params-") for c in reset.outputs]
        return by_id, shown, dict(zip(names, reset.fn(), strict=True))

    family_params = GenerationParams(steps=27, guidance_scale=7.0)
    fake = _FakePipeline(RuntimeError("unused"))
    fake.family = types.SimpleNamespace(tasks=tuple(TASKS), default_params=family_params)
    studio = Studio(fake, History(tmp_path / "a"))
    by_id, shown, restored = advanced(studio)
    assert shown["steps"] == 27 and shown["guidance_scale"] == 7.0
    assert "Default: 27." in by_id["params-steps"].info
    assert restored == shown == default_values(params_fields(family_params))
    cleared = build_request("text2music", {"tags": "pop"}, {"steps": None}, defaults=family_params)
    assert cleared.params.steps == 27 and cleared.params.guidance_scale == 7.0
    seen = []
    fake.check_request = seen.append  # the studio's own requests fall back to the family's defaults too
    with pytest.raises(RuntimeError, match="unused"):
        studio.generate("text2music", {"tags": "pop"}, _widget_params(steps=None, guidance_scale=""))
    assert seen[0].params.steps == 27 and seen[0].params.guidance_scale == 7.0

    plain = GenerationParams()  # without a family (or one without default_params): the dataclass defaults
    for family in (None, types.SimpleNamespace(tasks=tuple(TASKS))):
        fake.family = family
        _, shown, restored = advanced(Studio(fake, History(tmp_path / "b")))
        assert shown["steps"] == plain.steps and shown["guidance_scale"] == plain.guidance_scale
        assert restored == shown == default_values(params_fields())
    assert build_request("text2music", {"tags": "pop"}, {"steps": None}).params.steps == plain.steps


def _ids_under(block) -> set[str]:
    """The elem_ids of the components inside a layout block (an accordion, a row...)."""
    ids = set()
    for child in getattr(block, "children", []):
        if getattr(child, "elem_id", None):
            ids.add(child.elem_id)
        ids |= _ids_under(child)
    return ids


def test_compatibility_switches_are_apart_and_the_seeds_in_the_main_form(gr, tmp_path):
    from songflow.interfaces.studio.app import build_ui

    demo = build_ui(Studio(_FakePipeline(RuntimeError("unused")), History(tmp_path / "out")))
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    names = [f.name for f in dataclasses.fields(GenerationParams)]
    switches = {n for n in names if n.startswith("legacy_") or n == "omega_mean_over"}
    assert switches >= {
        "legacy_double_shift",
        "omega_mean_over",
        "legacy_batch_noise",
        "legacy_heun_interval",
    }
    compat, advanced = by_id["compat"], by_id["advanced"]
    assert compat.label == "Reference compatibility" and compat.open is False and advanced.open is False
    assert {i.removeprefix("params-") for i in _ids_under(compat) if i.startswith("params-")} == switches
    in_advanced = {i.removeprefix("params-") for i in _ids_under(advanced) if i.startswith("params-")}
    assert in_advanced - {"reset"} == set(names) - switches - {"seeds", "batch_size"}
    assert {"params-seeds", "params-batch_size"} <= _ids_under(by_id["main-params"])
    assert by_id["params-seeds"].label == "Seeds"
    preset = by_id["edit-preset"]
    assert [label for label, _ in preset.choices] == ["Only lyrics", "Remix"]
    assert "EDIT_PRESETS" not in str(preset.info) and "_" not in preset.label


def _upload(tmp_path, name: str, seconds: float, rate: int = 44100, amplitude: float = 0.3):
    """An upload as Gradio keeps it: the user's file name inside a temporary folder."""
    folder = tmp_path / "gradio" / "3f9c0a"
    folder.mkdir(parents=True, exist_ok=True)
    t = torch.arange(int(seconds * rate)) / rate
    save_audio(folder / name, amplitude * torch.sin(2 * torch.pi * 220 * t)[None], rate)
    return folder / name


def test_uploads_are_checked_on_arrival_and_named_by_their_file_name(gr, studio, tmp_path):
    from songflow.interfaces.studio.app import build_ui, run_task

    demo = build_ui(studio)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    notes = {}  # note elem_id -> its handler (the change event of the audio input)
    for fn in demo.fns.values():
        for out in fn.outputs:
            if (getattr(out, "elem_id", None) or "").endswith("-note"):
                notes[out.elem_id] = fn.fn
    assert set(notes) == {
        f"{task}-{f.name}-note" for task in TASKS for f in task_fields(task) if f.kind == AUDIO
    }
    assert "repaint-source_path-note" in by_id
    repaint, extend = notes["repaint-source_path-note"], notes["extend-source_path-note"]

    good = _upload(tmp_path, "take one.wav", 2.0)
    assert repaint(str(good)).startswith("✓ take one.wav: 2.0 s, 44100 Hz, mono")
    assert repaint(None) == ""
    bogus = good.with_name("notes.wav")
    bogus.write_text("these are not samples")
    long_song = _upload(tmp_path, "long.wav", 241.0, rate=8000)
    cases = {
        bogus: "the uploaded source audio cannot be used: cannot read audio file notes.wav",
        _upload(tmp_path, "quiet.wav", 1.0, amplitude=0.0): "quiet.wav is silent",
        _upload(tmp_path, "blip.wav", 0.01): "blip.wav is too short",
        long_song: "long.wav lasts 241.0 s",
        _upload(tmp_path, "old.wav", 0.5, rate=4000): "old.wav has a sample rate of 4000 Hz",
    }
    for path, message in cases.items():
        note = repaint(str(path))
        assert message in note and "⚠" in note, note
        assert str(tmp_path) not in note and "3f9c0a" not in note, note
    assert extend(str(long_song)).startswith("✓ long.wav: 241.0 s")  # extend keeps long sources whole
    with pytest.raises(gr.Error) as info:  # generating refuses it with the same message
        run_task(studio, "repaint", {"tags": "rock", "source_path": str(long_song)}, _widget_params(**FAST))
    assert "long.wav lasts 241.0 s" in info.value.message and str(tmp_path) not in info.value.message
    assert list((tmp_path / "out").iterdir()) == []


class _SourceComplainer(_FakePipeline):
    """Refuses every source, naming the file the studio passed (as the pipeline's own checks do)."""

    def generate(self, request, progress=None):
        raise AudioError(f"the source audio {request.source_path} is odd")


def test_errors_name_the_upload_never_a_server_folder(gr, tmp_path):
    from songflow.interfaces.studio.app import _user_errors, run_task

    studio = Studio(_SourceComplainer(RuntimeError("unused")), History(tmp_path / "out"))
    upload = _upload(tmp_path, "my take.wav", 1.0)
    with pytest.raises(gr.Error) as info:
        run_task(studio, "repaint", {"tags": "rock", "source_path": str(upload), "end_s": 0.5}, {})
    assert info.value.message == "the source audio my take.wav is odd"
    assert list((tmp_path / "out").iterdir()) == []

    def bad_value():
        raise RequestFieldError(("params", "n_min_frac"), "n_min_frac 0.7 must be < n_max_frac 0.5")

    with pytest.raises(gr.Error) as info:  # fields are named by their labels, not their code names
        _user_errors(bad_value)
    assert info.value.message == "N min (0-1) 0.7 must be < N max (0-1) 0.5"

    temp = gr.utils.get_upload_folder()

    def broken():
        raise RuntimeError(f"cannot open {temp}/0a1b2c/song for you.wav now")

    with pytest.raises(gr.Error) as info:
        _user_errors(broken)
    assert temp not in info.value.message and "0a1b2c" not in info.value.message


def test_ui_command_line(tmp_path, capsys):
    from songflow.interfaces.cli.commands import build_parser, main

    args = build_parser().parse_args(["ui"])
    assert (args.checkpoint, args.host, args.port, args.lora_dir) == (None, "127.0.0.1", 7860, None)
    assert args.output_dir == "songflow-studio" and args.device == "auto"
    assert main(["ui", "--lora-dir", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


# -- ACE-Step 1.5 in the studio: the model selector over a root of v1 + 1.5 turbo/base --------------------

V15_FAST = {"seeds": "3", "timesteps": "1, 0.5"}  # turbo: two custom timesteps
V15_BASE_FAST = {"seeds": "3", "steps": "2"}  # base/sft take steps, not timesteps


@pytest.fixture(scope="module")
def v15_root(tiny_ckpt, tmp_path_factory):
    """A folder of models: the tiny v1 checkpoint beside a 1.5 ``checkpoints/`` root holding a turbo and a
    base DiT folder, a shared VAE and text encoder and a tiny 5 Hz LM."""
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_ckpt, root / "v1-tiny")
    build_random_v15_checkpoint(root / "checkpoints", variant="turbo", lm=True)
    build_random_v15_checkpoint(root / "checkpoints", variant="base")
    return root


@pytest.fixture(scope="module")
def studio15(gr, v15_root, tmp_path_factory):
    """The studio ``songflow ui --checkpoint <v15_root> --device cpu`` starts (turbo loaded first)."""
    from songflow.interfaces.cli.commands import build_parser
    from songflow.interfaces.cli.ui import make_studio

    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    out = tmp_path_factory.mktemp("studio15")
    argv = ["ui", "--checkpoint", str(v15_root), "--device", "cpu", "--output-dir", str(out)]
    yield make_studio(build_parser().parse_args(argv))
    torch.set_num_threads(threads)


def _by_id(demo) -> dict:
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def _fn(demo, name: str):
    (fn,) = [f for f in demo.fns.values() if f.name == name]
    return fn


def _switch(demo, studio, label_start: str) -> dict:
    """Pick the model whose label starts with ``label_start`` in the selector, as the page does; the
    updates by elem_id (component updates as their constructor arguments)."""
    key = next(m.key for m in studio.models if m.label.startswith(label_start))
    fn = _fn(demo, "switch")
    select = _by_id(demo)["model-select"]
    data = {c: key if c is select else "text2music" for c in fn.inputs}
    return {getattr(c, "elem_id", None) or c._id: v for c, v in fn.fn(data).items()}


def _visible(update) -> bool:
    return bool(getattr(update, "visible", update.get("visible") if isinstance(update, dict) else None))


def test_v15_model_selector_lists_v1_and_the_variants_and_switching_follows_the_model(studio15):
    from songflow.interfaces.studio.app import build_ui

    studio15.switch(next(m.key for m in studio15.models if m.variant == "turbo"))
    demo = build_ui(studio15)
    by_id = _by_id(demo)
    labels = [label for label, _ in by_id["model-select"].choices]
    assert labels == [
        "acestep-v15-turbo (ACE-Step 1.5 turbo, with the 5 Hz LM)",
        "acestep-v15-base (ACE-Step 1.5 base, with the 5 Hz LM)",
        "v1-tiny (ACE-Step v1)",
    ]
    assert by_id["model-select"].value == studio15.model.key and by_id["model-select"].interactive
    # turbo loaded: the 1.5 form with turbo's tabs and preset; the base-only tabs and the v1 form hidden
    assert by_id["v15-form"].visible and not by_id["v1-form"].visible
    assert by_id["v15-tab-simple"].visible and by_id["v15-text2music-think"].visible
    assert not any(by_id[f"v15-tab-{t}"].visible for t in ("extract", "stems", "lego", "complete"))
    assert (by_id["v15-params-steps"].value, by_id["v15-params-shift"].value) == ("8", "3.0")
    assert "preset 8 steps, shift 3, no guidance" in by_id["model-status"].value

    shown = _switch(demo, studio15, "acestep-v15-base")
    assert studio15.model.variant == "base" and studio15.pipeline.variant == "base"
    for task in ("extract", "stems", "lego", "complete", "text2music", "simple"):
        assert _visible(shown[f"v15-tab-{task}"]), task
    assert _visible(shown["v15-form"]) and not _visible(shown["v1-form"])
    assert shown["v15-params-steps"]["value"] == 50 and shown["v15-params-guidance_scale"]["value"] == 7.0
    assert "acestep-v15-base" in shown["model-status"] and "guidance 7" in shown["model-status"]

    shown = _switch(demo, studio15, "v1-tiny")
    assert studio15.schema.name == "acestep-v1"
    assert _visible(shown["v1-form"]) and not _visible(shown["v15-form"])
    assert _visible(shown["v1-tab-audio2audio"]) and not _visible(shown["v15-tab-text2music"])
    assert "v1-tiny" in shown["model-status"]


def test_v15_form_has_the_song_metadata_and_durations_up_to_600_s(studio15):
    from songflow.interfaces.studio.app import build_ui

    by_id = _by_id(build_ui(studio15))
    metadata = _ids_under(by_id["v15-metadata"])
    assert {"v15-field-bpm", "v15-field-key_scale", "v15-field-time_signature"} <= metadata
    assert "v15-field-vocal_language" in metadata
    assert ("4/4", "4") in by_id["v15-field-time_signature"].choices
    assert ("English (en)", "en") in by_id["v15-field-vocal_language"].choices
    assert ("C major", "C major") in by_id["v15-field-key_scale"].choices
    duration = by_id["v15-text2music-duration_s"]
    assert (duration.minimum, duration.maximum, duration.value) == (1.0, 600.0, 30.0)
    assert by_id["v1-text2music-duration_s"].maximum == 240.0  # v1's own limit
    assert by_id["v15-extend-right_s"].maximum == 1200.0
    assert "v15-lora-select" in by_id and "v15-repaint-window" in by_id
    assert {"v15-repaint-start_s-slider", "v15-lego-end_s-slider", "v15-extend-right_s-slider"} <= set(by_id)
    with pytest.raises(RequestFieldError, match="duration_s"):
        build_request("text2music", {"duration_s": 601}, {}, schema=V15_SCHEMA)


def test_v15_stems_run_gives_one_player_and_download_per_stem(studio15, tmp_path):
    from songflow.interfaces.studio.app import build_ui, run_task

    studio15.switch(next(m.key for m in studio15.models if m.variant == "base"))
    source = tmp_path / "mix.wav"
    t = torch.arange(4 * 48000) / 48000
    save_audio(source, 0.3 * torch.sin(2 * torch.pi * 220 * t).expand(2, -1), 48000)
    values = {"source_path": str(source), "tracks": "vocals, drums", "caption": "rock"}
    entry = run_task(studio15, "stems", values, V15_BASE_FAST)
    assert entry.take_labels == ["vocals", "drums"]
    assert [p.name for p in entry.takes] == ["song_vocals.wav", "song_drums.wav"]

    demo = build_ui(studio15)
    shown = {getattr(c, "elem_id", None): v for c, v in _fn(demo, "reload").fn(entry.id).items()}
    takes = shown["output-takes"]
    assert "Stems: one player and download each" in takes
    rows = re.findall(
        r"<div class='sf-take' id='output-take-(\d)'><b>(\w+)</b><audio [^>]*src='([^']+)'", takes
    )
    assert [(int(i), label) for i, label, _ in rows] == [(0, "vocals"), (1, "drums")]
    for (_, _, url), take in zip(rows, entry.takes, strict=True):
        assert url == "/gradio_api/file=" + str(take.resolve()) and f"download='{take.name}'" in takes
    assert shown["output-audio"] == str(entry.takes[0])
    files = {p.rsplit("/", 1)[-1] for p in shown["output-files"]}
    for stem in ("vocals", "drums"):
        assert {f"song_{stem}.{fmt}" for fmt in SUPPORTED_FORMATS} <= files
    assert "song.json" in files and "stems: vocals, drums" in shown["output-info"]


def test_v15_planner_plan_is_shown_beside_the_player_and_simple_mode_runs(studio15):
    from songflow.interfaces.studio.app import build_ui, entry_view, run_task

    studio15.switch(next(m.key for m in studio15.models if m.variant == "turbo"))
    assert studio15.has_planner
    values = {"caption": "dream pop", "lyrics": "[verse]\nla la", "duration_s": 10, "think": True}
    planned = run_task(studio15, "text2music", values, V15_FAST)
    (plan,) = planned.plans
    view = entry_view(planned)
    assert "Plan by the 5 Hz LM" in view["plan"] and f"bpm <b>{plan.bpm}</b>" in view["plan"]
    assert "<pre>" in view["plan"] and load_audio(planned.takes[0])[0].shape[-1] == 10 * 48000
    demo = build_ui(studio15)
    by_id = _by_id(demo)
    assert by_id["v15-planner"].visible and by_id["v15-tab-simple"].visible
    shown = {getattr(c, "elem_id", None): v for c, v in _fn(demo, "reload").fn(planned.id).items()}
    assert _visible(shown["output-plan"]) and "Plan by the 5 Hz LM" in shown["output-plan"]["value"]

    simple = run_task(studio15, "simple", {"description": "a calm piano song", "duration_s": "10"}, V15_FAST)
    assert len(simple.plans) == 1 and simple.plans[0].duration_s == 10.0
    plain = run_task(studio15, "text2music", {"caption": "pop", "duration_s": 10}, V15_FAST)
    assert plain.plans == () and entry_view(plain)["plan"] == ""


def test_v15_without_an_lm_hides_simple_mode_and_planning(gr, tmp_path):
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
    from songflow.families import load_pipeline
    from songflow.interfaces.studio.app import build_ui, model_status

    root = build_random_v15_checkpoint(tmp_path / "checkpoints", variant="turbo")
    studio = Studio(load_pipeline(root, device="cpu"), History(tmp_path / "out"))
    assert not studio.has_planner
    by_id = _by_id(build_ui(studio))
    assert by_id["tab-text2music"].visible and by_id["tab-cover"].visible
    assert not by_id["tab-simple"].visible and not by_id["text2music-think"].visible
    assert not by_id["planner"].visible
    runs, no_lm = model_status(studio).split("\n")[1:]
    assert "simple" not in runs and "cover" in runs and "no 5 Hz LM" in no_lm


def test_v15_lora_picked_in_the_studio_changes_the_song(studio15, tmp_path):
    """A 1.5 adapter in --lora-dir is offered in the 1.5 form's LoRA picker and applied to that song only
    (weight 0 and no adapter: the base song)."""
    import copy

    from songflow.interfaces.studio.app import build_ui, run_task

    studio15.switch(next(m.key for m in studio15.models if m.variant == "turbo"))
    decoder = copy.deepcopy(studio15.pipeline.dit.decoder)  # the official trainer's targets
    write_random_lora(decoder, ("q_proj", "k_proj", "v_proj", "o_proj"), tmp_path / "loras" / "style")
    (offered,) = discover_loras(tmp_path / "loras")
    studio15.loras = [offered]
    try:
        picker = _by_id(build_ui(studio15))["v15-lora-select"]
        assert picker.interactive and offered in [tuple(c) for c in picker.choices]
        values = {"caption": "waltz", "duration_s": 10}
        base = run_task(studio15, "text2music", values, V15_FAST)
        styled = run_task(studio15, "text2music", values, V15_FAST, [offered[1]], 1.0)
        off = run_task(studio15, "text2music", values, V15_FAST, [offered[1]], 0.0)
        again = run_task(studio15, "text2music", values, V15_FAST)
    finally:
        studio15.loras = []
    assert styled.request.loras == (LoraRef(offered[1], 1.0),) and again.request.loras == ()
    audio = [load_audio(e.takes[0])[0] for e in (base, styled, off, again)]
    # the tiny random DiT's songs barely depend on its decoder: the adapter moves them by ~1e-5 here (its
    # numerics are test_v15_lora.py's); the studio's part is that it reaches this song and no other
    assert not torch.equal(audio[1], audio[0])
    assert torch.equal(audio[2], audio[0]) and torch.equal(audio[3], audio[0])
