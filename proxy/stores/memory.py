"""The in-memory cache in front of a :class:`VerdictStore` (or alone, for one-shot commands).

Answers model verdicts and URL denials from memory first and asks the store only on a miss, so another
process's verdict (``egress`` and ``serve`` share a store) is found too. Verdicts of URLs are kept here
only: a URL's bytes may change, its sha256 verdict lives on in the store. Sweep marks go straight to the
store (without one, a sweep keeps no progress).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from cachetools import TTLCache

from ..verdict import Outcome
from .base import AuditRow, DeniedUrl, SweepMark, VerdictStore


class VerdictCache:
    def __init__(self, store: VerdictStore | None, *, size: int, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.size = size
        self._verdicts: TTLCache[tuple[str, str], Outcome] = TTLCache(maxsize=size, ttl=ttl_s)
        self._urls: TTLCache[tuple[str, str], Outcome] = TTLCache(maxsize=size, ttl=ttl_s)
        self._denials: TTLCache[str, str] = TTLCache(maxsize=size, ttl=ttl_s)
        self._not_before = 0.0

    async def open(self) -> int:
        """Open the store and warm the cache with its recent model verdicts; how many were loaded."""
        if self.store is None:
            return 0
        await self.store.open()
        self.store.watch_denials(self._heard_denial)
        rows = await self.store.recent_model_verdicts(self.ttl_s, self.size)
        for row in rows:
            self._verdicts[(row.sha256, row.policy)] = row.outcome()
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

    async def url_denial(self, url: str) -> str | None:
        reason = self._denials.get(url)
        if reason is None and self.store is not None:
            reason = await self.store.url_denial(url)
            if reason is not None:
                self._denials[url] = reason
        return reason

    def _heard_denial(self, url: str, reason: str) -> None:
        """Another process denied ``url``: honour it at once, and drop what was cached of it."""
        self._denials[url] = reason
        for key in [k for k in self._urls if k[0] == url]:
            self._urls.pop(key, None)

    def deny_url(self, denial: DeniedUrl) -> None:
        self._denials[denial.url] = denial.reason
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
