"""The in-memory cache in front of a :class:`VerdictStore` (or alone, for one-shot commands).

Answers model verdicts from memory first and asks the store only on a miss, so another process's
verdict (``egress`` and ``serve`` share a store) is found too. URL denials are all held in memory when
the store can list them (SQLite can): every answer comes from memory, and at most every
:data:`DENIALS_FRESH_S` the cache asks the store, cheaply, whether another process wrote, and then reads
only the new denials; so a denial written by another process is honoured within that time. Verdicts of
URLs are kept here only: a URL's bytes may change, its sha256 verdict lives on in the store. A store that
pushes denials (Postgres: LISTEN/NOTIFY) has them honoured at once. Sweep marks go straight to the store
(without one, a sweep keeps no progress).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from cachetools import TTLCache

from ..verdict import Outcome
from .base import EVERY_POLICY, AuditRow, DeniedUrl, SweepMark, VerdictStore

DENIALS_FRESH_S = 0.25
"""How stale the in-memory URL denials may be (plus the time of one small query) against other processes."""


class VerdictCache:
    def __init__(self, store: VerdictStore | None, *, size: int, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.size = size
        self._verdicts: TTLCache[tuple[str, str], Outcome] = TTLCache(maxsize=size, ttl=ttl_s)
        self._urls: TTLCache[tuple[str, str], Outcome] = TTLCache(maxsize=size, ttl=ttl_s)
        self._denials: TTLCache[tuple[str, str], str] = TTLCache(maxsize=size, ttl=ttl_s)
        self._not_before = 0.0
        self._all_denials: dict[tuple[str, str], str] | None = {} if store is None else None
        """Every denial by (url, policy), when the store can list them; else None and misses ask the store."""
        self._denial_cursor = 0
        self._denials_checked = 0.0
        self._denials_lock = asyncio.Lock()

    async def open(self) -> int:
        """Open the store and warm the cache with its recent model verdicts; how many were loaded."""
        if self.store is None:
            return 0
        await self.store.open()
        self.store.watch_denials(self._heard_denial)
        rows = await self.store.recent_model_verdicts(self.ttl_s, self.size)
        for row in rows:
            self._verdicts[(row.sha256, row.policy)] = row.outcome()
        await self.store.changed()
        listed = await self.store.denials_since(0)
        if listed is not None:
            self._denial_cursor, self._all_denials = listed
            self._denials_checked = time.monotonic()
        return len(rows)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    async def flush(self) -> None:
        if self.store is not None:
            await self.store.flush()

    async def verdict(self, sha256: str, policy: str) -> Outcome | None:
        """A model verdict for these bytes under this policy, from memory or from the store."""
        found = self._verdicts.get((sha256, policy))
        if found is None and self.store is not None:
            row = await self.store.model_verdict(sha256, policy, min(self.ttl_s, time.time() - self._not_before))
            if row is not None:
                found = self._verdicts[(sha256, policy)] = row.outcome()
        return found

    def remember(self, sha256: str, policy: str, outcome: Outcome) -> None:
        """Keep a model verdict (the store has it through its audit row)."""
        self._verdicts[(sha256, policy)] = outcome

    def forget(self, sha256: str, policy: str) -> None:
        self._verdicts.pop((sha256, policy), None)

    def invalidate(self) -> None:
        """Forget every model verdict so far, here and in the store (an allow entry was added: a verdict
        cached for a near copy of it must not answer before the allow bank is asked)."""
        self._verdicts.clear()
        self._urls.clear()
        self._not_before = time.time()

    def url_verdict(self, url: str, policy: str) -> Outcome | None:
        return self._urls.get((url, policy))

    def remember_url(self, url: str, policy: str, outcome: Outcome) -> None:
        self._urls[(url, policy)] = outcome

    async def url_denial(self, url: str, policy: str) -> str | None:
        """Why ``url`` is denied to the instances of ``policy``: its own denial, or one for every policy."""
        if self._all_denials is not None:
            if self.store is not None and time.monotonic() - self._denials_checked >= DENIALS_FRESH_S:
                await self._refresh_denials()
            return self._all_denials.get((url, policy)) or self._all_denials.get((url, EVERY_POLICY))
        reason = self._denials.get((url, policy)) or self._denials.get((url, EVERY_POLICY))
        if reason is None and self.store is not None:
            reason = await self.store.url_denial(url, policy)
            if reason is not None:
                self._denials[(url, policy)] = reason
        return reason

    def _heard_denial(self, url: str, policy: str, reason: str) -> None:
        """Another process denied ``url`` to ``policy``: honour it at once, and drop what was cached of it."""
        self._denials[(url, policy)] = reason
        if self._all_denials is not None:
            self._all_denials[(url, policy)] = reason
        for key in [k for k in self._urls if k[0] == url and policy in (k[1], EVERY_POLICY)]:
            self._urls.pop(key, None)

    async def _refresh_denials(self) -> None:
        """Read the denials other processes wrote since the last look (one caller at a time)."""
        assert self.store is not None and self._all_denials is not None
        async with self._denials_lock:
            if time.monotonic() - self._denials_checked < DENIALS_FRESH_S:
                return  # another request refreshed while this one waited
            if await self.store.changed():
                listed = await self.store.denials_since(self._denial_cursor)
                if listed is not None:
                    self._denial_cursor, new = listed
                    self._all_denials.update(new)
            self._denials_checked = time.monotonic()

    def deny_url(self, denial: DeniedUrl) -> None:
        if self._all_denials is not None:
            self._all_denials[(denial.url, denial.policy)] = denial.reason
        else:
            self._denials[(denial.url, denial.policy)] = denial.reason
        if self.store is not None:
            self.store.deny_url(denial)

    def record(self, row: AuditRow) -> None:
        if self.store is not None:
            self.store.record(row)

    @property
    def persistent(self) -> bool:
        """Whether there is a store behind the cache (sweep progress, verdicts outlive the process)."""
        return self.store is not None

    async def mark_swept(self, mark: SweepMark) -> None:
        if self.store is not None:
            await self.store.mark_swept(mark)

    async def swept(self, source: str, keys: Sequence[str]) -> dict[str, SweepMark]:
        return await self.store.swept(source, keys) if self.store is not None else {}
