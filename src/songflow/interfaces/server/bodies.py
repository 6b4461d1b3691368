"""The REST request body: pydantic models derived from the request dataclasses of the loaded model
family's request schema (``songflow.requests`` for ACE-Step v1, ``songflow.requests_v15`` for 1.5).

Nothing here repeats a field: each task's model is built from its dataclass (names, types, defaults and
the bounds in the field metadata), with ``task`` as the tag of a discriminated union, so ``/openapi.json``
lists every field and a wrong-typed one gets a 422 whose ``loc`` names it; a field of another family's
schema (``tags`` sent to a 1.5 server, ``caption`` to a v1 one) is an unknown field, a 422 naming it.
Types are strict: ``"no"`` is not a bool and ``true`` is not a number. A body that passes still goes
through the schema's ``from_dict`` (the dataclass checks, e.g. a repaint window's end after its start),
whose errors name their field too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from songflow.errors import SongflowError
from songflow.interfaces.server.loras import LoraChoice, LoraLibrary, resolve_body_loras
from songflow.requests import V1_SCHEMA, RequestSchema

DEFAULT_TASK = "text2music"
BODY_SCHEMA_NAME = "JobRequest"
# field metadata keys that are pydantic constraints (the number bounds and text/list lengths)
_CONSTRAINTS = ("ge", "gt", "le", "lt", "min_length", "max_length")
_STRICT = ConfigDict(strict=True, extra="forbid")
_UPLOADED = "set by the server from the uploaded file (multipart field '{}'); may not be sent"


def _summary(cls: type) -> str:
    return (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def _annotation(hint: Any, items: dict[str, Any] | None) -> Any:
    """``hint`` with request dataclasses replaced by their models and ``items`` bounds on tuple items."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return model_for(hint)
    origin = get_origin(hint)
    if origin is tuple:
        item = _annotation(get_args(hint)[0], None)
        return tuple[Annotated[item, Field(**items)] if items else item, ...]  # type: ignore[misc]
    if origin in (Union, types.UnionType):
        return Union[tuple(_annotation(arg, items) for arg in get_args(hint))]  # noqa: UP007
    return hint


def _field(f: dataclasses.Field) -> Any:
    kwargs: dict[str, Any] = {k: f.metadata[k] for k in _CONSTRAINTS if k in f.metadata}
    if "unit" in f.metadata:
        kwargs["description"] = f"in {f.metadata['unit']}"
    upload = {"source_path": "source", "reference_path": "reference"}.get(f.name)
    if upload is not None:
        kwargs.update(description=_UPLOADED.format(upload), json_schema_extra={"readOnly": True})
    elif f.name == "loras":
        kwargs["description"] = (
            "LoRA adapters for this request only, each named as GET /v1/loras lists it (the server must "
            "be started with --lora-dir)"
        )
    if f.default is not dataclasses.MISSING:
        return Field(default=f.default, **kwargs)
    if f.default_factory is not dataclasses.MISSING:
        factory = f.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            return Field(default_factory=model_for(factory), **kwargs)
        return Field(default_factory=factory, **kwargs)
    return Field(**kwargs)


@functools.cache
def model_for(cls: type, task: str | None = None) -> type[BaseModel]:
    """The strict pydantic model of a request dataclass (with ``task: Literal[task]`` when given)."""
    hints = get_type_hints(cls)
    fields: dict[str, Any] = {}
    if task is not None:
        tag = Literal[task]  # type: ignore[valid-type]
        fields["task"] = (tag, Field(default=task) if task == DEFAULT_TASK else Field())
    for f in dataclasses.fields(cls):
        hint = tuple[LoraChoice, ...] if f.name == "loras" else hints[f.name]  # named, never a path
        fields[f.name] = (_annotation(hint, f.metadata.get("items")), _field(f))
    name = cls.__name__ if task is None else f"{cls.__name__}Request"
    return create_model(name, __config__=_STRICT, __doc__=_summary(cls), **fields)


def body_adapter(tasks: tuple[str, ...], schema: RequestSchema = V1_SCHEMA) -> TypeAdapter:
    """A validator of a job request over ``tasks`` of ``schema``: a union of the task models tagged by
    ``task``."""
    return _adapter(tuple((t, schema.tasks[t]) for t in tasks))


@functools.cache
def _adapter(classes: tuple[tuple[str, type], ...]) -> TypeAdapter:
    models = tuple(model_for(cls, task) for task, cls in classes)
    if len(models) == 1:
        return TypeAdapter(models[0])
    return TypeAdapter(Annotated[Union[models], Field(discriminator="task")])  # noqa: UP007


def install_body_schema(app: FastAPI, adapter: TypeAdapter) -> None:
    """Add the request body's models to ``app``'s OpenAPI components (as ``JobRequest`` and its parts)."""
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        doc = default_openapi()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault(BODY_SCHEMA_NAME, schema)
        for name, part in defs.items():
            components.setdefault(name, part)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def invalid(loc: tuple[str | int, ...], message: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 in FastAPI's validation-error form, ``loc`` naming the body field (``("task",)``)."""
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": message}])


def check_task(
    data: dict[str, Any], tasks: tuple[str, ...], family: str | None, known: Any = frozenset()
) -> None:
    """Fill in the default task and refuse one the model does not run (a 422 naming ``task``); a task
    of ``known`` (every family's, default: v1's) is named as one this model does not run."""
    task = data.setdefault("task", DEFAULT_TASK)
    if task in tasks:
        return
    if isinstance(task, str) and task in (known or V1_SCHEMA.tasks) and family is not None:
        raise invalid(
            ("task",), f"the {family} model does not run task {task!r}; choose one of {list(tasks)}"
        )
    raise invalid(("task",), f"unknown task {task!r}; choose one of {sorted(tasks)}")


def _check_uploaded(data: dict[str, Any], upload_fields: dict[str, str], schema: RequestSchema) -> None:
    for f in dataclasses.fields(schema.tasks[data["task"]]):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data and f.name in upload_fields.values():
            upload = next(k for k, v in upload_fields.items() if v == f.name)
            message = (
                f"task {data['task']!r} needs {f.name}: upload the audio as multipart file field {upload!r}"
            )
            raise invalid((f.name,), message, "missing")


def _field_of(exc: SongflowError, data: dict[str, Any]) -> tuple[str | int, ...]:
    """The field an error names: its ``loc``, else a request field its message starts with."""
    loc = getattr(exc, "loc", None)
    if loc:
        return tuple(loc)
    first = str(exc).split(" ", 1)[0]
    return (first,) if first in data and first != "task" else ()


def parse_request(
    adapter: TypeAdapter,
    pipeline: Any,
    data: dict[str, Any],
    upload_fields: dict[str, str],
    upload_names: dict[str, str] | None = None,
    data_dir: Path | None = None,
    schema: RequestSchema = V1_SCHEMA,
    loras: LoraLibrary | None = None,
) -> Any:
    """Validate ``data`` (the body model first, then the request's own checks in ``schema`` and the
    pipeline's, where it has ``check_request``); 422 on error. ``loras`` items name adapters of the
    server's ``--lora-dir`` (``loras``; None: none may be chosen), the request gets their server paths.

    A schema error's ``loc`` is the field's path in the body (the union's task tag left out); messages
    name uploads by their client file names (``upload_names``: server path -> name) and adapters by
    name, never a server path.
    """
    _check_uploaded(data, upload_fields, schema)
    try:
        adapter.validate_json(json.dumps(data))
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        tag = data["task"]
        raise RequestValidationError([_foreign(_relocated(e, tag), tag, schema) for e in errors]) from None
    try:
        request = schema.from_dict(resolve_body_loras(data, loras))
        check = getattr(pipeline, "check_request", None)
        if check is not None:
            check(request)
    except SongflowError as exc:
        message = str(exc)
        for path, name in {**(upload_names or {}), **(loras.scrub_names() if loras else {})}.items():
            message = message.replace(path, repr(name))
        if data_dir is not None:
            message = message.replace(str(data_dir.resolve()), "<data>").replace(str(data_dir), "<data>")
        raise invalid(_field_of(exc, data), message) from exc
    return request


def _relocated(error: dict[str, Any], tag: str) -> dict[str, Any]:
    """A body model error with ``loc`` the field's path in the body (the union's task tag left out)."""
    loc = error["loc"]
    return {**error, "loc": ("body", *(loc[1:] if loc[:1] == (tag,) else loc))}


def _foreign(error: dict[str, Any], task: str, schema: RequestSchema) -> dict[str, Any]:
    """An unknown top-level field that another family's schema has, said so (``tags`` sent to a 1.5
    server: "'tags' is a field of acestep-v1 requests, not of acestep-v15 ones ...")."""
    from songflow.interfaces.sidecar import known_schemas

    if error.get("type") != "extra_forbidden" or len(error["loc"]) != 2:
        return error
    name = error["loc"][1]
    owners = [
        other.name
        for other in known_schemas()
        if other.name != schema.name
        and any(name in {f.name for f in dataclasses.fields(c)} for c in other.tasks.values())
    ]
    if not owners:
        return error
    message = (
        f"{name!r} is a field of {' and '.join(owners)} requests, not of {schema.name} ones: this server "
        f"runs an {schema.name} model, whose task {task!r} has no field {name!r}"
    )
    return {**error, "msg": message}


def reject_paths(data: dict[str, Any], upload_fields: dict[str, str]) -> None:
    """Refuse request fields that name server paths (clients upload the audio instead)."""
    named = sorted(k for k in data if k.endswith("_path") or k in upload_fields.values())
    if named:
        hint = ", ".join(f"{k!r} for {v}" for k, v in upload_fields.items())
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", name),
                    "msg": f"field(s) {named} name server paths and cannot be set; upload the audio as a "
                    f"multipart file field ({hint})",
                }
                for name in named
            ]
        )
