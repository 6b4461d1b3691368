"""Fuzzing the REST body validator: random JSON values for every field of every task (and of ``params``).

Whatever is sent, ``POST /v1/jobs`` answers 202 or 422 (never 500), a 422 names a field, and a 202 stores
exactly the request that was sent (nothing dropped, coerced or defaulted differently), one that passes the
dataclass checks and the pipeline's ``check_request``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import types
import typing

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
sf = pytest.importorskip("soundfile")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from songflow.interfaces.server.app import create_app  # noqa: E402
from songflow.requests import TASKS, GenerationParams, request_from_dict, request_to_dict  # noqa: E402

UPLOADS = {"source_path": "source", "reference_path": "reference"}
JSON_HEADERS = {"content-type": "application/json"}

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
JSON = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _plausible(hint) -> st.SearchStrategy:
    """Values of roughly the field's type, near its bounds, so that some bodies pass."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(1, 4) | st.integers(-2, 1100) | st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64])
    if hint is float:
        # json.dumps writes NaN and Infinity, which Python's json.loads would accept
        edges = st.sampled_from([0.0, 1.0, 0.5, math.nan, math.inf, -math.inf])
        return st.floats(0.01, 2) | st.floats(min_value=-5, max_value=300) | edges
    if hint is str:
        return st.text(max_size=20) | st.sampled_from(["pop, piano", "[verse]\nla", " ", ""])
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(hint)) | st.text(max_size=6)
    if origin is tuple:
        return st.lists(_plausible(typing.get_args(hint)[0]), max_size=4)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_plausible(a) for a in typing.get_args(hint)])
    if hint is type(None):
        return st.none()
    return JSON


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` four times in five, else ``bad``."""
    return st.integers(0, 4).flatmap(lambda i: bad if i == 0 else good)


def _fields(cls, chaos: bool) -> dict[str, st.SearchStrategy]:
    """A strategy per field of ``cls``: of its type (near its bounds), or (``chaos``) often any JSON."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in ("params", "loras")]
    out = {f.name: _plausible(hints[f.name]) for f in fields}
    return {name: _mostly(value, JSON) for name, value in out.items()} if chaos else out


@st.composite
def bodies(draw) -> tuple[dict, bool]:
    """(a job body, whether to attach uploads for its task's audio fields). One body in three is
    "chaos" (any JSON in any field, the task included); the others have values of the right types."""
    chaos = draw(st.integers(0, 2)) == 0
    task = draw(_mostly(st.sampled_from(sorted(TASKS)), JSON) if chaos else st.sampled_from(sorted(TASKS)))
    cls = TASKS.get(task) if isinstance(task, str) else None
    body: dict = {} if draw(st.booleans()) and task == "text2music" else {"task": task}
    fields = _fields(cls, chaos) if cls is not None else {"tags": JSON, "lyrics": JSON}
    fields = {k: v for k, v in fields.items() if k not in UPLOADS}
    body["tags"] = draw(_mostly(st.sampled_from(["pop", "rock, 120 BPM"]), fields.pop("tags")))
    for name in draw(st.sets(st.sampled_from(sorted(fields)), max_size=3)) if fields else ():
        body[name] = draw(fields[name])
    params = _fields(GenerationParams, chaos)
    choice = draw(st.integers(0, 3))
    if choice == 1 and chaos:
        body["params"] = draw(JSON)
    elif choice >= 2:
        names = draw(st.sets(st.sampled_from(sorted(params)), max_size=3))
        body["params"] = {name: draw(params[name]) for name in names}
        if choice == 3:
            body["params"].update(steps=draw(st.integers(1, 4)), guidance="cfg")
    if "duration_s" in body and draw(st.booleans()):
        body["duration_s"] = 1.0
    if chaos and draw(st.integers(0, 4)) == 0:
        body[draw(st.sampled_from(["loras", "source_path", ""]) | st.text(max_size=8))] = draw(JSON)
    return body, not chaos or draw(st.booleans())


def _same(a, b) -> bool:
    """Equal as JSON values, with bool kept apart from numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=0, abs_tol=0) or a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _wav() -> bytes:
    t = np.arange(8000) / 16000
    data = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([data, data], axis=1), 16000, format="WAV")
    return buf.getvalue()


def _check_accepted(app, pipe, sent: dict, job: dict) -> None:
    stored = app.state.store.get(job["id"]).request
    request = request_from_dict(stored)  # the dataclass checks pass on what was stored
    pipe.check_request(request)
    assert _same(request_to_dict(request), stored), (sent, stored)
    for key, value in sent.items():
        if key == "params":
            for name, v in value.items():
                assert _same(stored["params"][name], v), (name, sent, stored)
        else:
            assert _same(stored[key], value), (key, sent, stored)
    assert stored["task"] == sent.get("task", "text2music")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fuzz_the_body_validator(pipe, tmp_path):
    app = create_app(pipe, data_dir=tmp_path, start_worker=False, max_queue=10**6)
    client = TestClient(app, raise_server_exceptions=False)
    wav = _wav()
    seen = {"accepted": 0, "refused": 0}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies())
    def check(case: tuple[dict, bool]) -> None:
        sent, attach = case
        task = sent.get("task", "text2music")
        needs = [f for f in UPLOADS if isinstance(task, str) and task in TASKS and f in _names(TASKS[task])]
        if attach and needs:
            files = {UPLOADS[f]: (f"{UPLOADS[f]}.wav", wav, "audio/wav") for f in needs}
            r = client.post("/v1/jobs", data={"request": json.dumps(sent)}, files=files)
        else:
            r = client.post(
                "/v1/jobs", content=json.dumps(sent), headers={"content-type": "application/json"}
            )
        assert r.status_code in (202, 422), (sent, r.status_code, r.text[:500])
        if r.status_code == 422:
            seen["refused"] += 1
            locs = [e["loc"] for e in r.json()["detail"]]
            assert locs and all(loc[0] == "body" for loc in locs), (sent, locs)
            assert any(len(loc) >= 2 for loc in locs), (sent, r.text[:500])  # it names the field
            return
        seen["accepted"] += 1
        _check_accepted(app, pipe, sent, r.json())

    check()
    assert seen["accepted"] > 0 and seen["refused"] > 0, seen


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
