"""Dynamic batching: concurrent callers share one model call.

Requests wait in a bounded queue. The model runs on one dedicated thread, so the event loop never blocks,
and while a batch runs the next one fills up. When the model is free, everything queued (up to
``max_batch``) goes to it at once: an item that finds the model idle and the queue empty is never held
back. Only under load (the previous call ended with items waiting behind it) may a batch that is not full
wait for company, and then only until ``max_wait_ms`` after its first item arrived; an item that already
waited that long behind a model call goes at once. A full queue refuses at once (:class:`Overloaded`)
instead of growing: the caller's policy decides what overload means.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """The batcher's queue is full."""


@dataclass
class _Item(Generic[T, R]):
    payload: T
    future: asyncio.Future[R]
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[T, R]):
    """Runs ``fn(list_of_items) -> list_of_results`` on batches of concurrently submitted items.

    ``on_batch(size, seconds)`` is called after each model call (metrics hook).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        name: str,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.name = name
        self._fn = fn
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Item[T, R]] = asyncio.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{name}")
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        """The last model call ended with items waiting: batches are forming under load."""

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError(f"batcher {self.name} closed"))
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def submit(self, payload: T) -> R:
        """Queue one item and wait for its result. Raises :class:`Overloaded` when the queue is full."""
        if self._task is None:
            raise RuntimeError(f"batcher {self.name} is not started")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(payload, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.name}: queue full ({self._queue.maxsize} waiting)") from None
        return await future

    async def _collect(self) -> list[_Item[T, R]]:
        first = await self._queue.get()
        batch = [first]
        deadline = first.arrived + self._max_wait
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if not self._loaded or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [item for item in batch if not item.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._fn, [i.payload for i in batch])
                self._loaded = not self._queue.empty()
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: model returned {len(results)} results for {len(batch)}")
            except Exception as exc:  # the model failed: every waiter gets the error, the loop goes on
                self._loaded = not self._queue.empty()
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - started)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
