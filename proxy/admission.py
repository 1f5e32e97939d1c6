"""Admission of request bodies against a byte budget (``server.max_inflight_bytes``).

Every body the proxy holds in memory to judge it, and every media body it fetches for an inbox, takes
its size from one budget first. A body that does not fit waits, within its deadline, for others to
finish; past it the caller gives the policy's overload answer. So memory stays bounded under any number
of concurrent uploads, and load turns into retryable answers, never into crashes.
"""

from __future__ import annotations

import asyncio
import time


class OverBudget(Exception):
    """No room in the byte budget before the deadline. ``read``: what the caller had read of the body
    when room ran out (so an inbox can still be forwarded whole)."""

    read: bytes = b""


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    async def acquire(self, n: int, deadline: float) -> None:
        """Take ``n`` bytes, waiting until ``deadline`` (time.monotonic()) at most. A request larger than
        the whole budget is admitted alone."""
        async with self._changed:
            while self.used and self.used + n > self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OverBudget(f"{self.used} of {self.limit} bytes in flight")
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    raise OverBudget(f"{self.used} of {self.limit} bytes in flight") from None
            self.used += n

    async def release(self, n: int) -> None:
        async with self._changed:
            self.used -= n
            self._changed.notify_all()
