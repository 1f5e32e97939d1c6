"""Bypass class: egress. Nothing a remote host sends switches judging off: not a header that looks like
our own refusal mark, not a Content-Encoding, not a text Content-Type on media."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.egress import Egress
from tests.support.egress import egress_config, get, make_ca, running
from tests.support.hosts import media_app
from tests.support.photos import photo


@pytest.fixture
async def egress(tmp_path: Path) -> AsyncIterator[tuple[Egress, str]]:
    async for e in running(egress_config(tmp_path, make_ca(tmp_path)[1])):
        yield e


async def test_a_header_from_upstream_does_not_skip_judging(egress, aiohttp_server) -> None:
    _, proxy = egress
    media = await aiohttp_server(media_app())
    status, _, headers = await get(proxy, f"http://127.0.0.1:{media.port}/lying/astronaut")
    assert status == 403 and headers["X-Fedi-Filter"].startswith("reject: portrait")
    status, body, _ = await get(proxy, f"http://127.0.0.1:{media.port}/lying/coffee")
    assert status == 200 and body == photo("coffee")


async def test_content_encoded_media_is_judged_decoded(egress, aiohttp_server) -> None:
    _, proxy = egress
    media = await aiohttp_server(media_app())
    status, _, headers = await get(proxy, f"http://127.0.0.1:{media.port}/gzip/grace_hopper", auto_decompress=False)
    assert status == 403 and "portrait" in headers["X-Fedi-Filter"]
    status, body, headers = await get(proxy, f"http://127.0.0.1:{media.port}/gzip/rocket")
    assert status == 200 and body == photo("rocket")


async def test_media_disguised_as_text_never_arrives(egress, aiohttp_server) -> None:
    _, proxy = egress
    media = await aiohttp_server(media_app())
    status, body, _ = await get(proxy, f"http://127.0.0.1:{media.port}/disguised/grace_hopper")
    assert body == b""
