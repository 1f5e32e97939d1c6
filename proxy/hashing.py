"""Hash kinds and exact hash lists for allow and deny decisions.

A :class:`HashKind` is one class: its name (the ``kind:`` prefix in configs and banks), how a value is
parsed and validated (ThreatExchange's ``validate_signal_str``: normalise or raise ``ValueError``), how it
is computed from the bytes, and when two values match. sha256 and md5 are exact; a perceptual kind
overrides :meth:`HashKind.matches` with a distance.

Entries are written ``kind:value``. For compatibility, a bare hex value is read as sha256 or md5 by its
length; any other kind must carry its prefix.

An allow hit wins over the model (how a false positive is fixed for good); a deny hit is final.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

_HEX = re.compile(r"[0-9a-f]+")


class HashKind(ABC):
    name: ClassVar[str]
    exact: ClassVar[bool] = True
    """Exact kinds match by equality (a set lookup); others compare every entry with :meth:`matches`."""

    @abstractmethod
    def parse(self, raw: str) -> str:
        """The normalised value, or ValueError naming what is wrong."""

    @abstractmethod
    def compute(self, data: bytes) -> str:
        """The hash of ``data`` (runs off the event loop for large bodies)."""

    def matches(self, a: str, b: str) -> bool:
        return a == b


class _HexDigest(HashKind):
    length: ClassVar[int]

    def parse(self, raw: str) -> str:
        value = raw.strip().lower()
        if len(value) != self.length or not _HEX.fullmatch(value):
            raise ValueError(f"{raw!r} is not a valid {self.name} hash")
        return value


class Sha256(_HexDigest):
    name = "sha256"
    length = 64

    def compute(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


class Md5(_HexDigest):
    name = "md5"
    length = 32

    def compute(self, data: bytes) -> str:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()


HASH_KINDS: Mapping[str, HashKind] = {k.name: k for k in (Sha256(), Md5())}
_BARE = {Sha256.length: Sha256.name, Md5.length: Md5.name}


def parse_hash(raw: str) -> tuple[str, str]:
    """Normalise ``kind:value`` (or bare sha256/md5 hex) into ``(kind, value)``."""
    text = raw.strip()
    prefix, sep, rest = text.partition(":")
    if sep:
        kind = HASH_KINDS.get(prefix.lower())
        if kind is None:
            raise ValueError(f"{raw!r}: unknown hash kind {prefix!r}; known: {sorted(HASH_KINDS)}")
        return kind.name, kind.parse(rest)
    name = _BARE.get(len(text))
    if name is None or not _HEX.fullmatch(text.lower()):
        raise ValueError(f"{raw!r} is not a valid sha256 or md5 hash (write kind:value, e.g. sha256:<hex>)")
    return name, HASH_KINDS[name].parse(text)


@dataclass(frozen=True)
class HashList:
    """Hash entries by kind; :meth:`match` takes the request's digests by kind."""

    entries: Mapping[str, frozenset[str]] = field(default_factory=dict)
    files: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str]], files: tuple[str, ...] = ()) -> HashList:
        by_kind: dict[str, set[str]] = {}
        for kind, value in entries:
            by_kind.setdefault(kind, set()).add(value)
        return cls({k: frozenset(v) for k, v in by_kind.items()}, files=files)

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds a request must be hashed with to be matched against this list."""
        return frozenset(k for k, v in self.entries.items() if v)

    def match(self, digests: Mapping[str, str]) -> str | None:
        """The matching entry as ``kind:value``, or None."""
        for name, values in self.entries.items():
            digest = digests.get(name)
            if digest is None:
                continue
            kind = HASH_KINDS[name]
            if digest in values or (not kind.exact and any(kind.matches(digest, v) for v in values)):
                return f"{name}:{digest}"
        return None
