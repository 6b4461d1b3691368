"""Frozen architecture configs that read and write the official diffusers-style ``config.json``.

A config class is a ``@dataclass(frozen=True)`` that also inherits :class:`JsonConfig`. ``from_dict``
drops diffusers bookkeeping keys (``_class_name``, ``_diffusers_version``, any ``_*``), applies the
class's explicit ``_RENAMED`` map and ``_IGNORED`` keys, and rejects every other unknown key by name.
Lists become tuples so configs stay hashable; ``to_dict`` turns them back into lists.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from songflow.errors import ConfigError

C = TypeVar("C", bound="JsonConfig")


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


def read_json_object(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Parse a JSON file that must hold an object; every failure is a ConfigError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


class JsonConfig:
    """Mixin for frozen dataclass configs with a JSON round trip."""

    # official key -> our field name, for keys whose name we changed
    _RENAMED: ClassVar[dict[str, str]] = {}
    # official keys that are accepted and dropped (e.g. derived values the official code recomputes)
    _IGNORED: ClassVar[frozenset[str]] = frozenset()
    # value written by to_dict under "_class_name" (the official class name), when set
    _CLASS_NAME: ClassVar[str | None] = None

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in data.items():
            if key.startswith("_") or key in cls._IGNORED:
                continue
            name = cls._RENAMED.get(key, key)
            if name not in fields:
                unknown.append(key)
                continue
            kwargs[name] = _freeze(value)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {sorted(unknown)} for {cls.__name__}; "
                f"valid keys are {sorted(fields)}"
            )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid {cls.__name__}: {exc}") from exc

    @classmethod
    def from_json(cls: type[C], path: str | Path) -> C:
        data = read_json_object(path)
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._CLASS_NAME:
            out["_class_name"] = self._CLASS_NAME
        inverse = {v: k for k, v in self._RENAMED.items()}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[inverse.get(f.name, f.name)] = _thaw(getattr(self, f.name))
        return out

    def to_json(self, path: str | Path) -> None:
        from songflow.fileio import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
