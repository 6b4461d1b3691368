"""LoRA adapters over the REST API: the ones ``songflow serve --lora-dir DIR`` found in DIR, chosen by name.

A client never names a server path: each ``loras`` item of a job names an adapter as ``GET /v1/loras``
lists it (``{"name": "waltz", "weight": 0.8}``), or gives ``path``, which must be that same name (or the
adapter's own path in DIR, as a sidecar or another server's record may hold it). The lookup is lexical,
against what discovery found at startup: an unknown name, a ``..``, an absolute path outside DIR is
refused (a 422 naming the item) without touching the file system, and an entry of DIR that is a link
leaving DIR (or holds weights that do) is never offered. Job records, sidecars and error messages name
the adapter, never its server path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from songflow.requests import LoraRef, RequestFieldError

log = logging.getLogger("songflow.server")

_WEIGHT = next(f for f in dataclasses.fields(LoraRef) if f.name == "weight")
_DEFAULT_WEIGHT: float = LoraRef("x").weight
NO_LORA_DIR = (
    "LoRA adapters can be chosen over the API only when the server offers them: start it with "
    "`songflow serve --lora-dir DIR` (DIR holding adapter folders or .safetensors files); this one has none"
)


class LoraChoice(BaseModel):
    """A LoRA adapter for this request only: ``name`` as ``GET /v1/loras`` lists it (or ``path``, the same
    name or the adapter's path in the server's --lora-dir), and its weight (0 = off)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str | None = Field(default=None, min_length=1, description="the adapter's name (GET /v1/loras)")
    path: str | None = Field(
        default=None,
        min_length=1,
        description="instead of name: the adapter's name, or its path inside the server's --lora-dir",
    )
    weight: float = Field(
        default=_DEFAULT_WEIGHT, ge=_WEIGHT.metadata["ge"], le=_WEIGHT.metadata["le"], description="0 = off"
    )

    @model_validator(mode="after")
    def _one_of_name_and_path(self) -> LoraChoice:
        if (self.name is None) == (self.path is None):
            raise ValueError("give the adapter's 'name' (GET /v1/loras lists them), or 'path', not both")
        return self


def _escapes(root: Path, path: str) -> Path | None:
    """The file of adapter ``path`` (itself, its weights, its config) that resolves outside ``root``."""
    from songflow.checkpoint.lora import resolve_lora_files

    inside = root.resolve()
    weights, config = resolve_lora_files(path)
    for candidate in (Path(path), weights, config):
        if candidate is not None and not candidate.resolve().is_relative_to(inside):
            return candidate
    return None


@dataclass(frozen=True)
class LoraLibrary:
    """The adapters of one ``--lora-dir``: ``paths`` maps each name to its path there."""

    root: Path
    paths: dict[str, str]
    _names: dict[str, str] = field(init=False, repr=False)  # normalised server path -> name

    def __post_init__(self) -> None:
        names = {}
        for name, path in self.paths.items():
            names[os.path.normpath(path)] = name
            names[os.path.normpath(Path(path).resolve())] = name
        object.__setattr__(self, "_names", names)

    @classmethod
    def discover(cls, lora_dir: str | Path) -> LoraLibrary:
        """The adapters in ``lora_dir`` (the studio's discovery), less any entry that links out of it."""
        from songflow.checkpoint.lora import discover_loras

        root = Path(lora_dir).expanduser().absolute()  # jobs get absolute paths, whatever the cwd
        paths = {}
        for name, path in discover_loras(root):
            outside = _escapes(root, path)
            if outside is not None:
                log.warning("LoRA %r not offered: %s leads outside --lora-dir %s", name, outside, root)
                continue
            paths[name] = path
        log.info("offering %d LoRA adapter(s) from %s: %s", len(paths), root, ", ".join(paths) or "none")
        return cls(root, paths)

    def name_of(self, path: str) -> str:
        """The name of the adapter at server ``path`` (a path this library does not hold: its last part)."""
        return self._names.get(os.path.normpath(path), Path(path).name)

    def lookup(self, text: str) -> str | None:
        """The adapter a client's ``name``/``path`` names, found lexically (no file is opened), or None."""
        pure = PurePosixPath(text)
        if ".." in pure.parts:
            return None
        if pure.is_absolute():
            return self._names.get(os.path.normpath(text))
        return str(pure) if str(pure) in self.paths else None

    def resolve(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The ``loras`` of a checked body (:class:`LoraChoice` items) as the request schema's
        ``{"path", "weight"}`` with server paths; an item naming no adapter here is a
        :class:`RequestFieldError` naming it."""
        out = []
        for i, item in enumerate(items):
            key = "name" if item.get("name") is not None else "path"
            name = self.lookup(item[key])
            if name is None:
                raise RequestFieldError(("loras", i, key), self.unknown_message(item[key]))
            out.append({"path": self.paths[name], **({"weight": item["weight"]} if "weight" in item else {})})
        return out

    def unknown_message(self, text: str) -> str:
        offered = f"choose one of {sorted(self.paths)}" if self.paths else "it offers none"
        if ".." in PurePosixPath(text).parts or PurePosixPath(text).is_absolute():
            what = f"{text!r} is not one of the server's LoRA adapters (they are chosen by name, not by path)"
        else:
            what = f"no LoRA adapter {text!r} in the server's --lora-dir"
        return f"{what}; {offered} (GET /v1/loras lists them)"

    def named(self, request: Any) -> Any:
        """``request`` with each adapter's path replaced by its name (what records show)."""
        loras = getattr(request, "loras", ())
        if not loras:
            return request
        refs = tuple(dataclasses.replace(ref, path=self.name_of(ref.path)) for ref in loras)
        return dataclasses.replace(request, loras=refs)

    def named_result(self, result: Any) -> Any:
        """``result`` with its request (and the request it was planned from) naming adapters by name."""
        changes = {"request": self.named(result.request)}
        planned = getattr(result, "planned_from", None)
        if planned is not None:
            changes["planned_from"] = self.named(planned)
        if not dataclasses.is_dataclass(result) or isinstance(result, type):
            return result
        return dataclasses.replace(result, **changes)

    def scrub_names(self) -> dict[str, str]:
        """Server path -> name of every adapter (error messages name adapters, not paths)."""
        return {path: name for name, path in self.paths.items()}


def public_loras(items: Any, library: LoraLibrary | None) -> Any:
    """A stored request's ``loras`` (``{"path", "weight"}`` with server paths) as a client sees them:
    ``{"name", "weight"}``."""
    if not isinstance(items, list):
        return items
    out = []
    for item in items:
        if not isinstance(item, dict):
            return items
        path = str(item.get("path", ""))
        name = library.name_of(path) if library is not None else Path(path).name
        out.append({"name": name, **({"weight": item["weight"]} if "weight" in item else {})})
    return out


def resolve_body_loras(data: dict[str, Any], library: LoraLibrary | None) -> dict[str, Any]:
    """``data`` with its ``loras`` items turned into server paths (:meth:`LoraLibrary.resolve`); a
    :class:`RequestFieldError` when there are any and the server has no ``--lora-dir``."""
    if not data.get("loras"):
        return data
    if library is None:
        raise RequestFieldError(("loras",), f"loras: {NO_LORA_DIR}")
    return {**data, "loras": library.resolve(data["loras"])}
