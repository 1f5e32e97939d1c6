"""The PostgreSQL store on a real Postgres the suite starts itself: migrations, and two serve replicas that
share verdicts and URL denials (the face stand-in flags, NudeNet's real weights)."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from proxy.stores.postgres import MIGRATIONS, PostgresStore, migrate
from tests.support.configs import FACES, make_config
from tests.support.hosts import HITS, media_app
from tests.support.photos import photo
from tests.support.postgres import postgres_server, postgres_url
from tests.support.servers import Client, post_media, services, start

__all__ = ["postgres_server", "postgres_url"]  # fixtures


async def test_migrations_apply_once_in_order(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await migrate(conn) == [v for v, _ in MIGRATIONS]
        assert await migrate(conn) == []
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [v for v, _ in MIGRATIONS]
        columns = {r["column_name"] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'decisions'")}
        assert {"sha256", "policy", "action", "worker", "url"} <= columns
    finally:
        await conn.close()


async def _replica(aiohttp_client: Client, url: str) -> TestClient:
    pol: dict[str, Any] = copy.deepcopy(FACES)
    cfg = make_config(pol, store=url, fetch={"allow_networks": ["127.0.0.1/32"], "timeout_ms": 5000})
    return await start(aiohttp_client, cfg)


async def test_two_replicas_share_verdicts_and_url_denials(aiohttp_client: Client, aiohttp_server: Any,
                                                           postgres_url: str) -> None:
    a = await _replica(aiohttp_client, postgres_url)
    b = await _replica(aiohttp_client, postgres_url)
    media = await aiohttp_server(media_app())

    # a verdict made on one replica answers the same bytes on the other, with no model run
    status, body = await post_media(a, photo("astronaut"))
    assert status == 406 and body["decided_by"] == "model"
    await services(a).store.flush()
    status, body = await post_media(b, photo("astronaut"))
    assert status == 406 and body["decided_by"] == "cache" and body["labels"] == ["portrait"]

    # a URL denied on one replica is pushed to the other's cache (LISTEN/NOTIFY), which then refuses it
    # without fetching it
    url = f"http://127.0.0.1:{media.port}/img/grace_hopper.jpg"
    resp = await a.get("/api/v1/nsfw_score", params={"url": url})
    assert (await resp.json())["action"] == "reject"
    assert media.app[HITS]["grace_hopper"] == 1
    await services(a).store.flush()
    store_b = services(b).store
    deadline = time.monotonic() + 30
    while url not in store_b._denials and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert url in store_b._denials, "the denial was not pushed to the other replica"
    resp = await b.get("/api/v1/nsfw_score", params={"url": url})
    assert (await resp.json())["action"] == "reject"
    assert media.app[HITS]["grace_hopper"] == 1

    backing = store_b.store
    assert isinstance(backing, PostgresStore)
    await store_b.flush()
    rows = await backing.fetch("SELECT decided_by, worker FROM decisions WHERE url = $1 ORDER BY id", url)
    assert [r["decided_by"] for r in rows] == ["model", "denied_url"]
    assert rows[0]["worker"] is None  # the in-process classifier alone: no pool, no worker name


async def test_sweep_progress_is_kept(postgres_url: str) -> None:
    from proxy.stores import SweepMark

    store = PostgresStore(postgres_url)
    await store.open()
    try:
        mark = SweepMark("s3://b/p", "a.jpg", "etag1", 10, "main", "a" * 64, "flagged", "report", time.time())
        await store.mark_swept(mark)
        await store.mark_swept(SweepMark("s3://b/p", "a.jpg", "etag2", 11, "main", "a" * 64, "flagged", "quarantine", 1.0))
        found = await store.swept("s3://b/p", ["a.jpg", "b.jpg"])
        assert list(found) == ["a.jpg"] and found["a.jpg"].version == "etag2" and found["a.jpg"].action == "quarantine"
        assert await store.swept("s3://other", ["a.jpg"]) == {}
    finally:
        await store.close()
