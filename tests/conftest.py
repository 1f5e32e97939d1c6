"""Fixtures shared by every test; helpers live in tests/support/.

Photos come from scikit-image, scikit-learn and matplotlib at run time (shared/MODELS.md); none is
committed. Servers are real aiohttp servers on loopback, reached with real HTTP clients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.photos import photo


@pytest.fixture
def photos() -> Callable[..., bytes]:
    return photo


@pytest.fixture(autouse=True)
def _no_blocking_on_loop() -> Iterator[None]:
    """Fail any blocking call made on the event loop in our own code (aiohttp's own test habit)."""
    from blockbuster import BlockBuster

    bb = BlockBuster(scanned_modules=["proxy", "classifier"])
    for function in bb.functions.values():
        # mitmproxy configures itself (CA files, certificate store) with blocking calls: once, at start-up
        function.can_block_in("proxy/egress.py", {"start", "run"})
        # asyncpg looks for ~/.pgpass and client certificates when it connects: at open and on reconnects
        function.can_block_in("proxy/stores/postgres.py", {"open", "_listen"})
    bb.activate()
    try:
        yield
    finally:
        bb.deactivate()
