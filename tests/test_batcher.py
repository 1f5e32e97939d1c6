import asyncio
import threading
import time

import pytest

from classifier.batcher import DynamicBatcher, Overloaded


class Model:
    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, batch: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        self.batches.append(batch)
        if self.fail_on is not None and self.fail_on in batch:
            raise RuntimeError("model exploded")
        return [x * 10 for x in batch]


async def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    model = Model(delay=0.02)
    sizes: list[int] = []
    b = DynamicBatcher(model, name="t", max_batch=8, max_wait_ms=20, max_queue=64, on_batch=lambda n, s: sizes.append(n))
    b.start()
    results = await asyncio.gather(*(b.submit(i) for i in range(32)))
    await b.close()
    assert results == [i * 10 for i in range(32)]
    assert max(sizes) == 8 and sum(sizes) == 32 and len(sizes) <= 6
    assert all(len(batch) <= 8 for batch in model.batches)
    assert model.threads == {next(iter(model.threads))} and "batcher-t" in next(iter(model.threads))


async def test_lone_item_is_not_held_for_max_wait() -> None:
    """An item that finds the model idle and the queue empty goes at once: with an hour's max_wait_ms a
    lone submit still completes (twice: the second finds the batcher after a call, not fresh)."""
    b = DynamicBatcher(Model(), name="t", max_batch=32, max_wait_ms=3_600_000, max_queue=64)
    b.start()
    assert await asyncio.wait_for(b.submit(1), 30) == 10
    assert await asyncio.wait_for(b.submit(2), 30) == 20
    await b.close()


class GatedModel(Model):
    """Blocks in its first call until released, so a test knows the model is busy without timing it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: list[int]) -> list[int]:
        self.entered.set()
        self.release.wait(30)
        return super().__call__(batch)


async def test_items_arriving_while_the_model_runs_form_the_next_batch() -> None:
    model = GatedModel()
    sizes: list[int] = []
    b = DynamicBatcher(model, name="t", max_batch=8, max_wait_ms=0, max_queue=64, on_batch=lambda n, s: sizes.append(n))
    b.start()
    first = asyncio.ensure_future(b.submit(0))
    assert await asyncio.to_thread(model.entered.wait, 30)
    rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    model.release.set()
    assert await first == 0 and [await r for r in rest] == [10, 20, 30, 40, 50]
    await b.close()
    assert model.batches == [[0], [1, 2, 3, 4, 5]] and sizes == [1, 5]


async def test_under_load_a_batch_waits_for_company_until_max_wait_after_its_first_item() -> None:
    """Once calls end with items queued, a batch that is not full waits (here: an hour, so only a full
    batch can go) for items still arriving."""
    model = GatedModel()
    b = DynamicBatcher(model, name="t", max_batch=4, max_wait_ms=3_600_000, max_queue=64)
    b.start()
    first = asyncio.ensure_future(b.submit(0))
    assert await asyncio.to_thread(model.entered.wait, 30)
    second = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    model.release.set()
    assert await first == 0
    third = [asyncio.ensure_future(b.submit(i)) for i in (3, 4)]
    assert [await s for s in second + third] == [10, 20, 30, 40]
    await b.close()
    assert model.batches == [[0], [1, 2, 3, 4]]


async def test_full_queue_refuses_at_once() -> None:
    b = DynamicBatcher(Model(delay=0.2), name="t", max_batch=1, max_wait_ms=0, max_queue=2)
    b.start()
    first = asyncio.ensure_future(b.submit(0))
    await asyncio.sleep(0.05)  # the model is busy with item 0
    queued = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await b.submit(3)
    assert await first == 0 and [await q for q in queued] == [10, 20]
    await b.close()


async def test_model_error_reaches_waiters_and_batcher_keeps_going() -> None:
    model = Model(fail_on=3)
    b = DynamicBatcher(model, name="t", max_batch=1, max_wait_ms=0, max_queue=64)
    b.start()
    with pytest.raises(RuntimeError, match="exploded"):
        await b.submit(3)
    assert await b.submit(4) == 40
    await b.close()


async def test_cancelled_waiters_are_skipped() -> None:
    model = Model(delay=0.1)
    b = DynamicBatcher(model, name="t", max_batch=4, max_wait_ms=0, max_queue=64)
    b.start()
    busy = asyncio.ensure_future(b.submit(0))
    await asyncio.sleep(0.02)
    gone = asyncio.ensure_future(b.submit(1))
    await asyncio.sleep(0)
    gone.cancel()
    kept = asyncio.ensure_future(b.submit(2))
    assert await busy == 0 and await kept == 20
    await b.close()
    assert [1] not in model.batches and all(1 not in batch for batch in model.batches)
