"""One generic walker from YAML to typed, frozen dataclasses, with errors that name the YAML path.

Each config key is declared once, as a dataclass field: its type, its default and a one-line doc
(``option(default, "doc")``; classifier fields carry the same metadata as a plain dict). The walker reads
the types: ``bool``, ``int``, ``float``, ``str``, ``StrEnum``s (choices), ``X | None``, ``tuple[X, ...]``,
``dict[str, X]`` and nested dataclasses. A field may add ``check`` (value -> error message or None) or
``parse`` (raw, path, ctx -> value) for what types cannot say; both may raise ``ValueError``, which becomes
a :class:`ConfigError` at the field's path. A dataclass may define ``from_config(cls, values, path, ctx)``
to check fields against each other. Unknown keys are errors; ``None`` means the default.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass
class Context:
    """What a parse hook may need besides the raw value: the config file's folder, the policies so far."""

    base: Path = Path(".")
    policies: dict[str, Any] = field(default_factory=dict)


Check = Callable[[Any], "str | None"]
Parse = Callable[[Any, str, Context], Any]


def option(default: Any = MISSING, doc: str = "", *, factory: Callable[[], Any] | None = None,
           check: Check | None = None, parse: Parse | None = None, key: str | None = None,
           internal: bool = False) -> Any:
    """A config field: default (or ``factory``), one-line doc, optional check/parse, YAML ``key`` when it
    differs from the field name; ``internal`` fields are derived, never read from YAML."""
    meta = {"doc": doc, "check": check, "parse": parse, "key": key, "internal": internal}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def positive(value: int | float) -> str | None:
    return None if value > 0 else f"expected a positive number, got {value}"


def non_negative(value: int | float) -> str | None:
    return None if value >= 0 else f"expected 0 or more, got {value}"


def sub(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def yaml_fields(cls: type) -> list[tuple[str, dataclasses.Field[Any]]]:
    """(YAML key, field) for every field read from YAML, in declaration order."""
    return [(f.metadata.get("key") or f.name, f) for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def convert(tp: Any, raw: Any, path: str, ctx: Context) -> Any:
    """Convert ``raw`` to the type ``tp`` or raise ConfigError at ``path``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return raw
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return convert(inner[0], raw, path, ctx)
        raise TypeError(f"{path}: unions other than X | None need a parse hook")
    if origin is tuple:
        if not isinstance(raw, list):
            raise ConfigError(path, f"expected a list, got {type(raw).__name__}")
        item = typing.get_args(tp)[0]
        return tuple(convert(item, v, sub(path, i), ctx) for i, v in enumerate(raw))
    if origin in (dict, Mapping, typing.get_origin(Mapping[str, int])):
        if not isinstance(raw, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(raw).__name__}")
        value_tp = typing.get_args(tp)[1]
        return {str(k): convert(value_tp, v, sub(path, str(k)), ctx) for k, v in raw.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, raw, path, ctx)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        if raw not in choices:
            raise ConfigError(path, f"expected one of {choices}, got {raw!r}")
        return tp(raw)
    if tp is bool:
        if not isinstance(raw, bool):
            raise ConfigError(path, f"expected bool, got {type(raw).__name__} {raw!r}")
        return raw
    if tp is int or tp is float:
        ok = isinstance(raw, int) or (tp is float and isinstance(raw, float))
        if not ok or isinstance(raw, bool):
            raise ConfigError(path, f"expected {_type_name(tp)}, got {type(raw).__name__} {raw!r}")
        return tp(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise ConfigError(path, f"expected str, got {type(raw).__name__} {raw!r}")
        return raw
    raise TypeError(f"{path}: no conversion for {tp!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def build(cls: type[T], raw: Any, path: str, ctx: Context) -> T:
    """Build dataclass ``cls`` from the mapping ``raw``: every key checked, unknown keys refused."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(raw).__name__}")
    known = yaml_fields(cls)
    names = {k for k, _ in known}
    for key in raw:
        if key not in names:
            raise ConfigError(sub(path, str(key)), f"unknown key; expected one of {sorted(names)}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for key, f in known:
        p = sub(path, key)
        value = raw.get(key)
        try:
            if value is None:
                value = default_of(f)
                if value is MISSING:
                    raise ConfigError(p, "required")
            elif f.metadata.get("parse") is not None:
                value = f.metadata["parse"](value, p, ctx)
            else:
                value = convert(hints[f.name], value, p, ctx)
            check = f.metadata.get("check")
            problem = check(value) if check is not None and value is not None else None
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(p, str(exc)) from None
        if problem:
            raise ConfigError(p, problem)
        values[f.name] = value
    hook = getattr(cls, "from_config", None)
    if hook is not None:
        return typing.cast(T, hook(values, path, ctx))
    return cls(**values)
