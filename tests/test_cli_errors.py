"""Every documented bad input of ``songflow generate``/``bulk`` fails in the first second, before the model
loads: exit code 2, exactly one ``error:`` line on stderr, nothing written (issue 12, items 3, 4, 8, 11)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from songflow.interfaces.cli import main


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model during a bad-input test is a failure: the checks must come first."""
    import songflow.families

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(songflow.families, "load_pipeline", refuse)


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder for inputs (sidecars, JSONL files), so that the test's own tmp_path can stay empty."""
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="module")
def read_only_folder(tmp_path_factory) -> Path:
    if os.geteuid() == 0:  # root writes into a chmod 555 folder; /proc refuses new files even to root
        return Path("/proc")
    folder = tmp_path_factory.mktemp("ro")
    folder.chmod(0o555)
    return folder


def _sidecar(folder: Path, name: str, request: dict, **top) -> str:
    data = {
        "songflow_version": "0",
        "sidecar_format_version": 1,
        "request": {"task": "text2music", "tags": "pop", "duration_s": 2.0, **request},
        "sources_sha256": {},
        "outputs": ["song.wav"],
        **top,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def _jsonl(folder: Path, name: str, lines: list) -> str:
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def _generate_cases(tmp: Path, outside: Path, ro: Path) -> list[tuple[list[str], str]]:
    """(extra flags of ``generate``, a piece of the expected error line)."""
    return [
        (["--out", str(ro / "song.wav")], "not writable"),
        (["--out", str(tmp)], "is a folder"),
        (["--out", str(tmp / "new") + "/"], "is a folder"),
        (["--out", str(tmp / "song")], "has no extension"),
        (["--out", str(tmp / "song.xyz")], "unsupported output format '.xyz'"),
        (["--task", "repaint", "--source-path", str(outside / "nope.wav")], "nope.wav does not exist"),
        (["--task", "extend", "--source-path", str(outside)], "is a folder, not an audio file"),
        (["--task", "audio2audio", "--reference-path", "missing.flac"], "missing.flac does not exist"),
        (["--lora", str(outside / "no_lora")], "LoRA not found"),
        (["--lora", str(outside / "lora") + ":heavy"], "the weight 'heavy' is not a number"),
        (["--lora", str(outside / "lora") + ":99"], "weight must be in"),
        (["--duration", "0"], "duration_s must be a positive number of seconds"),
        (["--duration", "-5"], "duration_s must be a positive number of seconds"),
        (["--duration", "241"], "up to 240"),
        (["--duration", "0.01"], "too short"),
        (["--seeds", "1,2", "--batch-size", "3"], "seeds has 2 seeds for batch_size 3"),
        (["--from", _sidecar(outside, "typo", {"duraton_s": 30})], "did you mean 'duration_s'?"),
        (["--from", _sidecar(outside, "typo_p", {"params": {"stpes": 3}})], "did you mean 'steps'?"),
        (["--from", _sidecar(outside, "typo_top", {}, request_x=1)], "unknown sidecar key 'request_x'"),
        (["--from", _sidecar(outside, "erg", {"params": {"use_erg_tag": "no"}})], "use_erg_tag must be"),
        (["--from", _sidecar(outside, "batch", {"params": {"batch_size": True}})], "batch_size must be"),
        (["--from", _sidecar(outside, "shift", {"params": {"legacy_double_shift": 5}})], "true or false"),
        (["--from", _sidecar(outside, "dur", {"duration_s": "60"})], "duration_s must be a number"),
        (["--from", str(outside / "absent.json")], "parameters file not found"),
        (["--lyrics", "la " * 7000], "lyrics is 21000 characters long; the limit is 20000"),
    ]


def _bulk_cases(outside: Path) -> list[tuple[list[str], str]]:
    ok = {"tags": "pop", "duration_s": 2.0, "params": {"steps": 2}}
    return [
        (
            [_jsonl(outside, "dup", [{**ok, "name": "a"}, {**ok, "name": "b"}, {**ok, "name": "a"}])],
            "line 3: the name 'a' is already used on line 1",
        ),
        ([_jsonl(outside, "dup_default", [ok, ok, {**ok, "name": "00001"}])], "already used on line 1"),
        ([_jsonl(outside, "bad_json", [ok, "{not json"])], "line 2: Expecting property name"),
        (
            [_jsonl(outside, "bad_type", [ok, {**ok, "params": {"use_erg_tag": "no"}}])],
            "line 2: use_erg_tag must be true or false",
        ),
        ([_jsonl(outside, "bad_key", [{**ok, "duraton_s": 3}])], "line 1: unknown field"),
        (
            [_jsonl(outside, "bad_src", [{"tags": "pop", "task": "repaint", "source_path": "x.wav"}])],
            "x.wav does not",
        ),
        ([_jsonl(outside, "array", [[1, 2]])], "line 1: each line must be a JSON object"),
        ([_jsonl(outside, "slash", [{**ok, "name": "a/b"}])], "invalid name 'a/b'"),
    ]


def _run_expecting_one_error(argv: list[str], message: str, capsys) -> None:
    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert message in lines[0], (message, lines[0])
    assert elapsed < 1.0, f"{elapsed:.2f} s for {argv}"


def test_every_bad_generate_input_is_one_error_line_within_a_second(
    tiny_ckpt, tmp_path, outside, read_only_folder, no_model, capsys
):
    (outside / "lora").mkdir(exist_ok=True)
    base = ["generate", "--checkpoint", str(tiny_ckpt), "--tags", "pop", "--steps", "2"]
    cases = _generate_cases(tmp_path, outside, read_only_folder)
    assert len(cases) >= 20
    for extra, message in cases:
        argv = [*base, "--out", str(tmp_path / "song.wav"), "--quiet", *extra]
        _run_expecting_one_error(argv, message, capsys)
        assert not any(tmp_path.iterdir()), f"{extra} left files behind"


def test_every_bad_bulk_input_is_one_error_line_within_a_second(
    tiny_ckpt, tmp_path, outside, no_model, capsys
):
    out_dir = tmp_path / "out"
    base = ["bulk", "--checkpoint", str(tiny_ckpt), "--out-dir", str(out_dir), "--quiet"]
    for extra, message in _bulk_cases(outside):
        _run_expecting_one_error([*base, *extra], message, capsys)
    ok = _jsonl(outside, "ok", [{"tags": "pop"}])
    _run_expecting_one_error([*base, ok, "--format", "xyz"], "unsupported output format", capsys)
    (outside / "a_file").write_text("x")
    _run_expecting_one_error(
        ["bulk", "--out-dir", str(outside / "a_file"), ok, "--quiet"], "is a file, not a folder", capsys
    )
    assert not any(tmp_path.iterdir())


def test_a_missing_or_foreign_checkpoint_is_refused_before_loading(tmp_path, outside, no_model, capsys):
    argv = ["generate", "--checkpoint", str(outside / "no_ckpt"), "--tags", "pop", "--duration", "2"]
    _run_expecting_one_error(
        [*argv, "--out", str(tmp_path / "a.wav"), "--quiet"], "songflow download", capsys
    )
    assert not any(tmp_path.iterdir())


def test_no_room_on_the_disk_is_refused_up_front(tiny_ckpt, tmp_path, monkeypatch, no_model, capsys):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    argv = ["generate", "--checkpoint", str(tiny_ckpt), "--tags", "pop", "--duration", "60"]
    _run_expecting_one_error([*argv, "--out", str(tmp_path / "a.wav"), "--quiet"], "no space left", capsys)


def _fake_result(batch: int = 1):
    from songflow.requests import Text2Music

    request = Text2Music(tags="pop", duration_s=1.0)
    return SimpleNamespace(
        audio=[torch.zeros(2, 4800)] * batch,
        sample_rate_hz=48000,
        request=request,
        timings_s={"diffusion": 1.0},
        seeds=(1,),
    )


@pytest.mark.parametrize("how", ["oserror", "libsndfile"])
def test_a_full_disk_while_writing_says_so(tmp_path, monkeypatch, how):
    """Issue 12.11: a full disk was reported as "System error." (libsndfile's words for ENOSPC)."""
    import shutil

    import songflow.audio.io
    from songflow.errors import AudioError, SongflowError
    from songflow.interfaces.cli.generate import _save_result

    def full(path, *args, **kwargs):
        if how == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        raise AudioError(f"cannot write {path} as wav at 48000 Hz: Error opening {path}: System error.")

    monkeypatch.setattr(songflow.audio.io, "save_audio", full)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10))
    pipe = SimpleNamespace(device="cpu", dtype=torch.float32)
    out = tmp_path / "song.wav"
    with pytest.raises(SongflowError, match=f"^no space left on device writing {out}$"):
        _save_result(pipe, tmp_path, _fake_result(), out)
    assert not any(tmp_path.iterdir())


def test_main_reports_enospc_in_one_line(monkeypatch, capsys):
    import songflow.interfaces.cli.checkpoint as ckpt_cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/y.safetensors")

    monkeypatch.setattr(ckpt_cli, "cmd_random_checkpoint", full)
    code = main(["random-checkpoint", "/x"])
    assert code == 2
    assert capsys.readouterr().err == "error: no space left on device writing /x/y.safetensors\n"


def test_every_generate_flag_is_described_and_grouped_by_task():
    import argparse

    from songflow.interfaces.cli.commands import build_parser
    from songflow.requests import TASKS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("generate", "bulk"):
        for action in sub.choices[name]._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    gen = sub.choices["generate"]
    titles = [g.title for g in gen._action_groups]
    for task in TASKS:
        assert any(task in (t or "") for t in titles), task
    assert "sampler, guidance and seeds (all tasks)" in titles
    by_dest = {a.dest: g.title for g in gen._action_groups for a in g._group_actions}
    assert (
        by_dest["start_s"] == "repaint options" and by_dest["source_path"] == "repaint, extend, edit options"
    )
    assert by_dest["steps"] == "sampler, guidance and seeds (all tasks)"
    help_text = gen.format_help()
    assert "only for --task edit" in help_text and "diffusion steps" in help_text


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("loras/a", {"path": "loras/a", "weight": 1.0}),
        ("loras/a:0.5", {"path": "loras/a", "weight": 0.5}),
        ("C:\\loras\\a", {"path": "C:\\loras\\a", "weight": 1.0}),
        ("C:\\loras\\a:-1", {"path": "C:\\loras\\a", "weight": -1.0}),
    ],
)
def test_lora_flag_parsing(text, parsed):
    from songflow.interfaces.cli.generate import _parse_lora

    assert _parse_lora(text) == parsed


def test_progress_line_estimates_the_time_left(monkeypatch, capsys):
    """Issue 12.11: a long CPU run shows the time left, from the time per step measured so far."""
    import songflow.interfaces.cli.generate as gen

    clock = iter([100.0, 103.0, 106.0])
    monkeypatch.setattr(gen.time, "perf_counter", lambda: next(clock))
    show = gen._progress_printer()
    show(1, 61)
    assert "left" not in capsys.readouterr().err
    show(2, 61)
    assert "sampling step 2/61, about 3 min left (3.00 s/step)" in capsys.readouterr().err
    show(3, 61)
    assert "about 3 min left" in capsys.readouterr().err
