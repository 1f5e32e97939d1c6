"""Exact hash lists (sha256 and md5) for allow and deny decisions.

An allow hit wins over the model (how a false positive is fixed for good); a deny hit is final.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_HEX = re.compile(r"[0-9a-f]+")
_KINDS = {64: "sha256", 32: "md5"}


def parse_hash(raw: str) -> tuple[str, str]:
    """Normalise a hex digest into ``(kind, hex)``; the kind comes from the length.

    An optional ``sha256:``/``md5:`` prefix is accepted and checked.
    """
    value = raw.strip().lower()
    prefix, sep, rest = value.partition(":")
    if sep:
        value = rest
    kind = _KINDS.get(len(value))
    if kind is None or not _HEX.fullmatch(value) or (sep and prefix != kind):
        raise ValueError(f"{raw!r} is not a valid sha256 or md5 hash")
    return kind, value


@dataclass(frozen=True)
class HashList:
    sha256: frozenset[str] = frozenset()
    md5: frozenset[str] = frozenset()
    files: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str]], files: tuple[str, ...] = ()) -> HashList:
        entries = list(entries)
        return cls(
            sha256=frozenset(h for k, h in entries if k == "sha256"),
            md5=frozenset(h for k, h in entries if k == "md5"),
            files=files,
        )

    def __len__(self) -> int:
        return len(self.sha256) + len(self.md5)

    def match(self, sha256: str, md5: str | None) -> str | None:
        """The matching entry as ``kind:hex``, or None."""
        if sha256 in self.sha256:
            return f"sha256:{sha256}"
        if md5 is not None and md5 in self.md5:
            return f"md5:{md5}"
        return None
