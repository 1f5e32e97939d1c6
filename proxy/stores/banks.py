"""The part of the :class:`~proxy.stores.VerdictStore` seam that keeps hash banks and the moderators' log.

A bank is a named set of hashes (sha256, md5, pdq: :mod:`proxy.hashing`) with a role (:mod:`proxy.banks`);
an entry is a hash, never media. The store also answers the review page: recent decisions by filter, and
every moderator action (who, what, which sha256). A store that keeps none of this (an older or external
implementation) inherits the defaults here, which raise :class:`NotImplementedError`: banks then live in
memory only and the review page says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BankEntry:
    bank: str
    kind: str
    value: str
    quality: int | None = None
    """PDQ only: the hash's quality (0-100)."""
    sha256: str | None = None
    """The file the hash was taken from, when known (own bank, review actions)."""
    labels: tuple[str, ...] = ()
    """Why it is in the bank: the classifier labels that refused it, or imported tags."""
    ts: float = 0.0
    indicator_id: str | None = None
    """Kept from an HMA CSV import, so an export gives the rows back."""
    descriptor_id: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class BankInfo:
    name: str
    role: str
    created: float
    entries: int = 0


@dataclass(frozen=True)
class ModerationRow:
    """One moderator action on the review page (or the CLI): audited, never the media."""

    ts: float
    actor: str
    action: str
    sha256: str
    policy: str
    detail: str = ""


@dataclass(frozen=True)
class DecisionQuery:
    """Filters of the review page's decision list; empty fields do not filter."""

    action: str = ""
    label: str = ""
    source: str = ""
    instance: str = ""
    since: float | None = None
    until: float | None = None
    sha256: str = ""
    limit: int = 100
    extra: dict[str, Any] = field(default_factory=dict)


class BankStore:
    """Banks, recent decisions and the moderators' log; every method may be called from the event loop."""

    async def banks(self) -> list[BankInfo]:
        """Every bank with its role and number of entries."""
        raise NotImplementedError("this store keeps no hash banks")

    async def create_bank(self, name: str, role: str) -> bool:
        """Create a bank unless one of that name exists; whether it was created."""
        raise NotImplementedError("this store keeps no hash banks")

    async def drop_bank(self, name: str) -> int:
        """Delete a bank and its entries; how many entries went with it."""
        raise NotImplementedError("this store keeps no hash banks")

    async def bank_entries(self, bank: str | None = None) -> list[BankEntry]:
        """Entries of one bank, or of all banks."""
        raise NotImplementedError("this store keeps no hash banks")

    async def add_bank_entries(self, entries: list[BankEntry]) -> int:
        """Add entries (a repeat of (bank, kind, value) is skipped); how many were new."""
        raise NotImplementedError("this store keeps no hash banks")

    async def remove_bank_entries(self, bank: str, *, kind: str | None = None, value: str | None = None,
                                  sha256: str | None = None) -> int:
        """Remove the entries of ``bank`` matching every given field; how many."""
        raise NotImplementedError("this store keeps no hash banks")

    async def banks_version(self) -> int:
        """A number that changes whenever any bank changes, in any process sharing the store."""
        raise NotImplementedError("this store keeps no hash banks")

    async def record_moderation(self, row: ModerationRow) -> None:
        raise NotImplementedError("this store keeps no moderation log")

    async def moderation_log(self, limit: int = 100) -> list[ModerationRow]:
        raise NotImplementedError("this store keeps no moderation log")

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:
        """The newest audit rows matching ``query`` (columns of the audit log, labels and scores decoded)."""
        raise NotImplementedError("this store cannot list decisions")
