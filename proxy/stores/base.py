"""The :class:`VerdictStore` seam: where verdicts, URL denials and the audit log live.

A store keeps what must outlive a process or be shared between processes: the audit log (one row per
decision, never the media), model verdicts by (sha256, policy) so repeats are answered at once, and URL
denials (a URL whose media was refused must not be fetched or stored downstream, by any process sharing
the store: ``serve`` and ``egress``), and the progress of ``fedi-filter sweep`` (one mark per stored object
judged, so a rerun skips what is done). SQLite is the embedded default (:mod:`proxy.stores.sqlite`);
:class:`proxy.stores.memory.VerdictCache` sits in front of any store and answers from memory first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..verdict import Action, DecidedBy, Outcome
from .banks import BankStore

log = logging.getLogger(__name__)
T = TypeVar("T")


EVERY_POLICY = "*"
"""The policy of a denial that holds for every policy: what a replica of the release before per-policy
denials announces, and an old store's denials of blocked addresses. Current code writes none."""


@dataclass(frozen=True)
class AuditRow:
    ts: float
    sha256: str
    source: str
    instance: str
    policy: str
    action: str
    decided_by: str
    labels: list[str]
    scores: dict[str, Any]
    latency_ms: float
    detail: str | None = None
    url: str | None = None
    worker: str | None = None
    """Who scored the frames: ``local`` or remote workers' names (None: no model ran)."""

    def values(self) -> tuple[Any, ...]:
        return (
            self.ts, self.sha256, self.source, self.instance, self.policy, self.action, self.decided_by,
            json.dumps(self.labels), json.dumps(self.scores), self.latency_ms, self.detail, self.url, self.worker,
        )


@dataclass(frozen=True)
class DeniedUrl:
    """A URL that must not be fetched or stored downstream (an inbox `strip`, a flagged ingestion), for the
    instances of ``policy`` (a verdict is a policy's: another policy judges the URL's bytes itself), or for
    every instance when ``policy`` is :data:`EVERY_POLICY`."""

    url: str
    ts: float
    sha256: str | None
    policy: str
    reason: str

    def values(self) -> tuple[Any, ...]:
        return (self.url, self.ts, self.sha256, self.policy, self.reason)


@dataclass(frozen=True)
class StoredVerdict:
    """A model verdict as a store keeps it."""

    sha256: str
    policy: str
    action: str
    labels: list[str]
    scores: dict[str, Any]

    def outcome(self) -> Outcome:
        return Outcome(action=Action(self.action), decided_by=DecidedBy.MODEL, labels=tuple(self.labels),
                       scores=self.scores)


@dataclass(frozen=True)
class SweepMark:
    """One stored object that ``fedi-filter sweep`` is done with: judged, and acted on as asked.

    ``source`` and ``key`` name the object (a directory and a relative path, or an ``s3://`` prefix and an
    object key); ``version`` is what changes when the object does (mtime and size, or the ETag);
    ``outcome`` is ``clean``, ``flagged`` or ``unjudged``; ``action`` what was done (``report``,
    ``quarantine``, ``delete``; ``none`` for clean and unjudged objects)."""

    source: str
    key: str
    version: str
    size: int
    policy: str
    sha256: str
    outcome: str
    action: str
    ts: float

    def values(self) -> tuple[Any, ...]:
        return (self.source, self.key, self.version, self.size, self.policy, self.sha256, self.outcome, self.action,
                self.ts)


class VerdictStore(BankStore, ABC):
    """Shared state of every process that judges for the same instances (hash banks and the review page's
    queries: :class:`~proxy.stores.banks.BankStore`)."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Write what is pending, then release the store."""

    @abstractmethod
    async def flush(self) -> None:
        """Wait until every record so far is written."""

    @abstractmethod
    def record(self, row: AuditRow) -> None:
        """Append an audit row; never blocks (a full writer queue drops and counts)."""

    @abstractmethod
    def deny_url(self, denial: DeniedUrl) -> None:
        """Deny a URL for every process sharing the store; never blocks."""

    @abstractmethod
    async def url_denial(self, url: str, policy: str) -> str | None:
        """Why ``url`` is denied to the instances of ``policy`` (its own denial or one for every policy), or None."""

    async def denials_since(self, cursor: int) -> tuple[int, dict[tuple[str, str], str]] | None:
        """The denials written since ``cursor`` (0: all of them) as ``(new cursor, {(url, policy): reason})``,
        so a cache can hold every denial and answer from memory; None when this store cannot list them (the
        cache then asks :meth:`url_denial` per URL)."""
        return None

    async def changed(self) -> bool:
        """Whether another process may have written since the last call: a cheap check that lets a cache
        skip :meth:`denials_since` while nothing changed. True when the store cannot tell."""
        return True

    @abstractmethod
    async def model_verdict(self, sha256: str, policy: str, ttl_s: float) -> StoredVerdict | None:
        """The newest model verdict for (sha256, policy) younger than ``ttl_s``, from any process."""

    def watch_denials(self, callback: Callable[[str, str, str], None]) -> None:
        """Call ``callback(url, policy, reason)`` when another process denies a URL (stores shared by
        replicas push denials; the default store has no other writers to hear from)."""

    @abstractmethod
    async def recent_model_verdicts(self, ttl_s: float, limit: int) -> list[StoredVerdict]:
        """The newest model verdict per (sha256, policy) younger than ``ttl_s`` (cache warm-up)."""

    @abstractmethod
    async def mark_swept(self, mark: SweepMark) -> None:
        """Keep a sweep mark (replacing the object's older one); waits while the writer is behind, never drops."""

    @abstractmethod
    async def swept(self, source: str, keys: Sequence[str]) -> dict[str, SweepMark]:
        """The marks kept for these keys of ``source`` (marks written so far by any process)."""


class WriteQueue(Generic[T]):
    """Records waiting for a store's one writer task, written in batches of up to 500. :meth:`put` never
    blocks (a full queue drops the record, logs it and calls ``on_drop``); :meth:`put_wait` waits for room."""

    def __init__(self, name: str, max_pending: int, on_drop: Callable[[], None] | None) -> None:
        self.name = name
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize=max_pending)
        self._on_drop = on_drop

    def put(self, row: T) -> None:
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            log.error("%s queue full: dropping %s", self.name, row)
            if self._on_drop is not None:
                self._on_drop()

    async def put_wait(self, row: T) -> None:
        await self._queue.put(row)

    async def flush(self) -> None:
        """Wait until every record put so far is written (or its write failed and was logged)."""
        await self._queue.join()

    async def run(self, write: Callable[[list[T]], Awaitable[None]], errors: tuple[type[Exception], ...]) -> None:
        """The writer task: forever, take what is queued (at least one record) and ``write`` it; a write
        failing with one of ``errors`` is logged and its records are given up."""
        while True:
            rows = [await self._queue.get()]
            while not self._queue.empty() and len(rows) < 500:
                rows.append(self._queue.get_nowait())
            try:
                await write(rows)
            except errors as exc:
                log.error("%s write of %d records failed: %s", self.name, len(rows), exc)
            finally:
                for _ in rows:
                    self._queue.task_done()
