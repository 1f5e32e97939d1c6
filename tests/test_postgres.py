"""The PostgreSQL store on a real Postgres the suite starts itself: migrations, and two serve replicas that
share verdicts and URL denials (the face stand-in flags, NudeNet's real weights)."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from proxy.stores import AuditRow
from proxy.stores.postgres import INSERT_DECISION, MIGRATIONS, PostgresStore, migrate
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


async def test_denials_from_before_migration_3_are_kept_and_now_per_policy(postgres_url: str) -> None:
    """Migration 3 rekeys URL denials by (url, policy): old rows stay; a URL may then be denied under two
    policies at once, and a replica answers each policy only from its own denial or an every-policy one."""
    from proxy.stores import EVERY_POLICY, DeniedUrl

    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():  # a database as version 2 left it, holding one denial
            await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                               "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            for version, sql in MIGRATIONS[:2]:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            await conn.execute("INSERT INTO denied_urls VALUES ('https://x.example/a.jpg', 1.0, NULL, 'strict', 'old')")
            await conn.execute("INSERT INTO denied_urls VALUES ('http://10.0.0.1/a.jpg', 1.0, NULL, 'strict', "
                               "'blocked: 10.0.0.1 is not a public address')")
        assert await migrate(conn) == [3]
    finally:
        await conn.close()
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        store.deny_url(DeniedUrl("https://x.example/a.jpg", time.time(), None, "lenient", "reject: other"))
        store.deny_url(DeniedUrl("http://10.0.0.1/", time.time(), None, EVERY_POLICY, "blocked: private"))
        await store.flush()
        assert await store.url_denial("https://x.example/a.jpg", "strict") == "old"
        assert await store.url_denial("https://x.example/a.jpg", "lenient") == "reject: other"
        assert await store.url_denial("https://x.example/a.jpg", "third") is None
        assert await store.url_denial("http://10.0.0.1/", "third") == "blocked: private"
        # a blocked address was denied to everyone, whichever policy recorded it: it still is
        assert (await store.url_denial("http://10.0.0.1/a.jpg", "third") or "").startswith("blocked")
        # a notice from a replica of before (no policy in it) held for every policy, and still does
        heard: list[tuple[str, str, str]] = []
        store.watch_denials(lambda *args: heard.append(args))
        store._heard(None, 0, "", '{"url": "https://y.example/", "reason": "old replica"}')
        store._heard(None, 0, "", '["not", "a", "notice"]')
        assert heard == [("https://y.example/", EVERY_POLICY, "old replica")]
    finally:
        await store.close()


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
    while (url, "main") not in store_b._denials and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (url, "main") in store_b._denials, "the denial was not pushed to the other replica"
    assert await store_b.url_denial(url, "another-policy") is None  # the verdict is main's alone
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


# the denial upsert of the release before per-policy denials, as an older replica still sends it
OLD_UPSERT_DENIAL = (
    "INSERT INTO denied_urls (url, ts, sha256, policy, reason) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (url) DO UPDATE SET ts = EXCLUDED.ts, sha256 = EXCLUDED.sha256, policy = EXCLUDED.policy, "
    "reason = EXCLUDED.reason"
)


async def test_an_older_replica_still_writes_denials_after_migration_3(postgres_url: str) -> None:
    """Found by an attacker's review (upgrade window). A new replica opens the shared database and applies migration 3;
    a replica of the previous release, still running, then writes a batch as its ``_write`` did: one audit
    row and the denial of a URL its inbox stripped, in one transaction. The upsert's ``ON CONFLICT (url)``
    named no unique constraint once migration 3 rekeyed that table, so the whole batch was rolled back:
    the denial never reached the egress and the other replicas, and the audit row was lost. The old table
    now stays for such replicas, and what they write there is read as a denial for every policy."""
    store = PostgresStore(postgres_url)
    await store.open()  # the upgraded replica: migrations 1..3
    try:
        url = "https://media.example/files/flagged.jpg"
        row = AuditRow(ts=time.time(), sha256="a" * 64, source="inbox", instance="main", policy="main",
                       action="reject", decided_by="model", labels=["portrait"], scores={}, latency_ms=1.0,
                       url=url)
        old = await asyncpg.connect(postgres_url)  # the replica of the previous release
        failure = None
        try:
            async with old.transaction():
                await old.execute(INSERT_DECISION, *row.values())
                await old.execute(OLD_UPSERT_DENIAL, url, time.time(), "a" * 64, "main", "reject: portrait")
        except asyncpg.PostgresError as exc:  # what the old WriteQueue catches, logs, and gives the batch up for
            failure = exc
        finally:
            await old.close()
        assert failure is None, f"an older replica's write batch fails after migration 3: {failure!r}"
        assert await store.url_denial(url, "main") == "reject: portrait"
    finally:
        await store.close()


async def test_an_older_replica_with_a_slow_clock_still_denies(postgres_url: str) -> None:
    """Found by an attacker's review of a first fix that read the old table by a time window: what a
    replica of the release before writes to denied_urls after migration 3 counts, whatever its clock (here
    10 minutes behind the database's), for every policy, after the NOTIFY is gone too (a restart, a
    dropped LISTEN connection, the cache's TTL)."""
    store = PostgresStore(postgres_url)
    await store.open()  # the upgraded replica applies migration 3 now
    try:
        url = "https://media.example/files/flagged.jpg"
        old = await asyncpg.connect(postgres_url)
        try:
            await old.execute(OLD_UPSERT_DENIAL, url, time.time() - 600.0, "a" * 64, "main", "reject: portrait")
        finally:
            await old.close()
        assert await store.url_denial(url, "main") == "reject: portrait"
    finally:
        await store.close()


async def test_a_denial_from_just_before_migration_3_stays_its_policys_own(postgres_url: str) -> None:
    """Found by an attacker's review of the same time window: a denial written by the old release a minute
    before migration 3 was read from the old table as a denial for every policy, for good, and deleting its
    url_denials row (README's way to lift a denial) did not lift it. It is its policy's own."""
    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():  # version 2, holding a denial written a minute ago by the old release
            await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                               "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            for version, sql in MIGRATIONS[:2]:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            await conn.execute("INSERT INTO denied_urls VALUES ('https://x.example/a.jpg', $1, NULL, 'strict', "
                               "'reject: portrait')", time.time() - 60.0)
    finally:
        await conn.close()
    store = PostgresStore(postgres_url)
    await store.open()  # migration 3 now
    try:
        assert await store.url_denial("https://x.example/a.jpg", "strict") == "reject: portrait"
        assert await store.url_denial("https://x.example/a.jpg", "lenient") is None
        await store.fetch("DELETE FROM url_denials WHERE url = 'https://x.example/a.jpg'")
        assert await store.url_denial("https://x.example/a.jpg", "strict") is None  # lifted
    finally:
        await store.close()
