"""The byte budget: bodies wait for room within their deadline, then are refused; never over the limit."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.admission import ByteBudget, OverBudget


async def test_waits_for_room_then_admits() -> None:
    budget = ByteBudget(100)
    await budget.acquire(80, time.monotonic() + 1)
    waiter = asyncio.ensure_future(budget.acquire(40, time.monotonic() + 30))
    await asyncio.sleep(0)
    assert not waiter.done() and budget.used == 80
    await budget.release(80)
    await waiter
    assert budget.used == 40


async def test_refuses_past_the_deadline() -> None:
    budget = ByteBudget(100)
    await budget.acquire(100, time.monotonic() + 1)
    with pytest.raises(OverBudget):
        await budget.acquire(1, time.monotonic() + 0.05)
    assert budget.used == 100


async def test_a_body_larger_than_the_budget_is_admitted_alone() -> None:
    budget = ByteBudget(100)
    await budget.acquire(500, time.monotonic() + 1)
    with pytest.raises(OverBudget):
        await budget.acquire(1, time.monotonic() + 0.01)
    await budget.release(500)
    await budget.acquire(1, time.monotonic() + 0.01)
