"""Verdict stores: SQLite shared by two processes' caches, the in-memory cache in front."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from proxy.stores import EVERY_POLICY, AuditRow, DeniedUrl, SqliteStore, SweepMark, VerdictCache
from proxy.stores.memory import DENIALS_FRESH_S
from proxy.verdict import Action, DecidedBy


def row(sha256: str, action: str = "reject", decided_by: str = "model", policy: str = "p") -> AuditRow:
    return AuditRow(ts=time.time(), sha256=sha256, source="validate", instance="i", policy=policy, action=action,
                    decided_by=decided_by, labels=["flagged"], scores={"clip": {"x": 0.3}}, latency_ms=1.0)


async def test_two_caches_on_one_store_share_verdicts_and_denials(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    serve = VerdictCache(SqliteStore(path), size=100, ttl_s=3600)
    egress = VerdictCache(SqliteStore(path), size=100, ttl_s=3600)
    await serve.open()
    await egress.open()
    try:
        serve.record(row("a" * 64))
        serve.record(row("b" * 64, decided_by="cache"))  # only model verdicts are reused
        serve.deny_url(DeniedUrl("https://x.example/a.jpg", time.time(), "a" * 64, "p", "reject: flagged"))
        await serve.flush()
        found = await egress.verdict("a" * 64, "p")
        assert found is not None and found.action is Action.REJECT and found.decided_by is DecidedBy.MODEL
        assert found.labels == ("flagged",) and found.scores == {"clip": {"x": 0.3}}
        assert await egress.verdict("a" * 64, "other-policy") is None
        assert await egress.verdict("b" * 64, "p") is None
        # denials are answered from memory; another process's show within DENIALS_FRESH_S
        await asyncio.sleep(DENIALS_FRESH_S)
        assert await egress.url_denial("https://x.example/a.jpg", "p") == "reject: flagged"
        assert await egress.url_denial("https://x.example/b.jpg", "p") is None
        # a verdict is its policy's: another policy's instances judge the URL themselves
        assert await egress.url_denial("https://x.example/a.jpg", "other-policy") is None
        # an address no one may fetch is denied to every policy
        serve.deny_url(DeniedUrl("http://10.0.0.1/a.jpg", time.time(), None, EVERY_POLICY, "blocked: private"))
        await serve.flush()
        await asyncio.sleep(DENIALS_FRESH_S)
        for policy in ("p", "other-policy"):
            assert await egress.url_denial("http://10.0.0.1/a.jpg", policy) == "blocked: private"
    finally:
        await serve.close()
        await egress.close()


async def test_a_restart_warms_the_cache_from_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    first = VerdictCache(SqliteStore(path), size=100, ttl_s=3600)
    await first.open()
    first.record(row("c" * 64, action="accept"))
    await first.close()
    second = VerdictCache(SqliteStore(path), size=100, ttl_s=3600)
    assert await second.open() == 1
    await second.close()
    expired = VerdictCache(SqliteStore(path), size=100, ttl_s=0.001)
    time.sleep(0.01)
    assert await expired.open() == 0  # past the TTL: judged again
    await expired.close()


async def test_memory_only_cache_keeps_what_it_is_told() -> None:
    cache = VerdictCache(None, size=10, ttl_s=60)
    assert await cache.open() == 0
    assert await cache.verdict("d" * 64, "p") is None
    from proxy.verdict import Outcome

    cache.remember("d" * 64, "p", Outcome(Action.ACCEPT, DecidedBy.MODEL))
    assert (await cache.verdict("d" * 64, "p")) == Outcome(Action.ACCEPT, DecidedBy.MODEL)
    cache.forget("d" * 64, "p")
    assert await cache.verdict("d" * 64, "p") is None
    cache.deny_url(DeniedUrl("u", time.time(), None, "p", "why"))
    assert await cache.url_denial("u", "p") == "why" and await cache.url_denial("u", "q") is None
    cache.deny_url(DeniedUrl("v", time.time(), None, EVERY_POLICY, "blocked"))
    assert await cache.url_denial("v", "q") == "blocked"
    cache.record(row("e" * 64))  # no store: nothing to write, nothing raised
    await cache.close()


async def test_a_full_writer_queue_drops_and_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    store = SqliteStore(str(tmp_path / "a.sqlite3"), max_pending=2, on_drop=lambda: dropped.append(1))
    await store.open()
    try:
        for i in range(10):  # no await in between: the writer cannot drain
            store.record(row(f"{i:064x}"))
        assert len(dropped) >= 7
        await store.flush()
        rows = await store.query("SELECT COUNT(*) AS n FROM decisions")
        assert rows[0]["n"] == 10 - len(dropped)
    finally:
        await store.close()


async def test_sweep_marks_are_kept_per_source_and_key(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    store = VerdictCache(SqliteStore(path), size=100, ttl_s=3600)
    await store.open()
    try:
        keys = [f"k{i}" for i in range(1200)]  # more than one lookup query's worth
        for key in keys:
            await store.mark_swept(SweepMark("/srv/a", key, "1:10", 10, "p", "a" * 64, "clean", "none", time.time()))
        await store.mark_swept(SweepMark("/srv/a", "k0", "2:11", 11, "p", "b" * 64, "flagged", "report", time.time()))
        await store.flush()
        found = await store.swept("/srv/a", [*keys, "missing"])
        assert set(found) == set(keys)
        assert (found["k0"].version, found["k0"].outcome, found["k0"].action) == ("2:11", "flagged", "report")
        assert await store.swept("/srv/b", keys) == {}
    finally:
        await store.close()
    reopened = VerdictCache(SqliteStore(path), size=100, ttl_s=3600)
    await reopened.open()
    try:
        assert (await reopened.swept("/srv/a", ["k1"]))["k1"].sha256 == "a" * 64
    finally:
        await reopened.close()
    assert await VerdictCache(None, size=1, ttl_s=1).swept("/srv/a", ["k1"]) == {}


async def test_a_store_from_before_per_policy_denials_is_rebuilt_keeping_every_row(tmp_path: Path) -> None:
    """Denials used to be keyed by URL alone. Opening such a store rekeys them by (url, policy), once, even
    with two processes opening it at the same time; rows, their policies and rowids (cursors) are kept."""
    import sqlite3

    path = str(tmp_path / "old.sqlite3")
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE denied_urls (url TEXT PRIMARY KEY, ts REAL NOT NULL, sha256 TEXT, "
                "policy TEXT NOT NULL, reason TEXT NOT NULL)")
    old.executemany("INSERT INTO denied_urls VALUES (?, ?, NULL, ?, ?)",
                    [("https://x.example/a.jpg", 1.0, "strict", "reject: flagged"), ("http://10.0.0.1/", 2.0, "strict", "blocked")])
    before = old.execute("SELECT rowid, url, policy, reason FROM denied_urls ORDER BY rowid").fetchall()
    old.commit()
    old.close()
    first, second = VerdictCache(SqliteStore(path), size=10, ttl_s=60), VerdictCache(SqliteStore(path), size=10, ttl_s=60)
    await asyncio.gather(first.open(), second.open())
    try:
        assert await first.url_denial("https://x.example/a.jpg", "strict") == "reject: flagged"
        assert await second.url_denial("https://x.example/a.jpg", "lenient") is None
        # the same URL can now be denied under a second policy without replacing the first's denial
        second.deny_url(DeniedUrl("https://x.example/a.jpg", time.time(), None, "lenient", "reject: other"))
        await second.flush()
        await asyncio.sleep(DENIALS_FRESH_S)
        assert await first.url_denial("https://x.example/a.jpg", "lenient") == "reject: other"
        assert await first.url_denial("https://x.example/a.jpg", "strict") == "reject: flagged"
    finally:
        await first.close()
        await second.close()
    conn = sqlite3.connect(path)
    after = conn.execute("SELECT rowid, url, policy, reason FROM denied_urls ORDER BY rowid").fetchall()
    keyed = [row[1] for row in conn.execute("PRAGMA table_info(denied_urls)") if row[5] > 0]
    conn.close()
    assert after[:2] == before and len(after) == 3 and sorted(keyed) == ["policy", "url"]
