"""The generic YAML -> dataclass walker: types, defaults, checks, and errors that name the path."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pytest

from proxy.schema import ConfigError, Context, build, option, positive


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    size: int = option(3, "a size", check=positive)


@dataclass(frozen=True)
class Outer:
    name: str = option("x", "a name")
    color: Color = option(Color.RED, "a color")
    ratio: float = option(0.5, "a ratio")
    tags: tuple[str, ...] = option((), "tags")
    inner: Inner = option(factory=Inner, doc="nested")
    maybe: int | None = option(None, "optional")
    renamed: bool = option(False, "yaml key differs", key="flag")


def test_defaults_and_conversions() -> None:
    assert build(Outer, None, "", Context()) == Outer()
    got = build(Outer, {"color": "blue", "ratio": 2, "tags": ["a"], "inner": {"size": 9}, "maybe": 4, "flag": True},
                "top", Context())
    assert got == Outer(color=Color.BLUE, ratio=2.0, tags=("a",), inner=Inner(9), maybe=4, renamed=True)
    assert isinstance(got.ratio, float)


@pytest.mark.parametrize(("raw", "path", "message"), [
    ({"colour": "red"}, "top.colour", "unknown key"),
    ({"color": "green"}, "top.color", "expected one of ['red', 'blue']"),
    ({"inner": {"size": 0}}, "top.inner.size", "expected a positive number"),
    ({"inner": {"size": True}}, "top.inner.size", "expected int"),
    ({"tags": "a"}, "top.tags", "expected a list"),
    ({"tags": ["a", 1]}, "top.tags[1]", "expected str"),
    ({"inner": []}, "top.inner", "expected a mapping"),
    ({"renamed": True}, "top.renamed", "unknown key"),
])
def test_errors_name_the_yaml_path(raw: dict, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(Outer, raw, "top", Context())
    assert info.value.path == path and message in info.value.message
