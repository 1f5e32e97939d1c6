"""Verdict stores: SQLite shared by two processes' caches, the in-memory cache in front."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from proxy.stores import EVERY_POLICY, AuditRow, DeniedUrl, SqliteStore, SweepMark, VerdictCache
from proxy.stores.memory import DENIALS_FRESH_S
from proxy.stores.sqlite import SCHEMA, _key_denials_by_policy
from proxy.stores.sqlite_banks import BANK_SCHEMA
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
                    [("https://x.example/a.jpg", 1.0, "strict", "reject: flagged"),
                     ("http://10.0.0.1/", 2.0, "strict", "blocked: 10.0.0.1 is not a public address")])
    before = old.execute("SELECT rowid, url, policy, reason FROM denied_urls ORDER BY rowid").fetchall()
    old.commit()
    old.close()
    first, second = VerdictCache(SqliteStore(path), size=10, ttl_s=60), VerdictCache(SqliteStore(path), size=10, ttl_s=60)
    await asyncio.gather(first.open(), second.open())
    try:
        assert await first.url_denial("https://x.example/a.jpg", "strict") == "reject: flagged"
        assert await second.url_denial("https://x.example/a.jpg", "lenient") is None
        # a blocked address was denied to everyone, whichever policy recorded it: it still is
        assert (await second.url_denial("http://10.0.0.1/", "lenient") or "").startswith("blocked")
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
    assert [row[:2] + row[3:] for row in after[:2]] == [row[:2] + row[3:] for row in before] and len(after) == 3
    assert [row[2] for row in after] == ["strict", EVERY_POLICY, "lenient"] and sorted(keyed) == ["policy", "url"]


OLD_DENIALS_TABLE = ("CREATE TABLE denied_urls (url TEXT PRIMARY KEY, ts REAL NOT NULL, sha256 TEXT, "
                     "policy TEXT NOT NULL, reason TEXT NOT NULL)")


def _old_sqlite_store(path: str, rows: list[tuple[str, float, str | None, str, str]]) -> None:
    """A SQLite store as the release before ea4fa2f left it (denials keyed by URL alone)."""
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(SCHEMA)  # every other table as it is (a second opener has nothing else to create)
    old.executescript(BANK_SCHEMA)
    old.execute("DROP TABLE denied_urls")
    old.execute(OLD_DENIALS_TABLE)
    old.executemany("INSERT INTO denied_urls VALUES (?, ?, ?, ?, ?)", rows)
    old.commit()
    old.close()


async def test_a_second_process_opens_an_old_store_while_the_first_still_rekeys_it(tmp_path: Path) -> None:
    """Found by an attacker's review. serve and egress start together on one
    audit_db (the compose examples). The first rebuilds the denials table inside BEGIN IMMEDIATE; with a
    large table (its length is unbounded and anyone can grow it through nsfw_score) that took longer than
    the 5 s sqlite3 waited for a lock by default, and the second process's open (its first write: BANK_SCHEMA's INSERT
    OR IGNORE, then the rekeying's own BEGIN IMMEDIATE) failed with 'database is locked' instead of 'finding
    it done' (now it waits up to BUSY_TIMEOUT_S). The real rekeying runs here, slowed by a progress handler to the time a
    table of about 500,000 denials takes (300,000 took 3.3 s on this machine)."""
    path = str(tmp_path / "old.sqlite3")
    _old_sqlite_store(path, [("https://x.example/a.jpg", 1.0, None, "strict", "reject: flagged")])
    in_rebuild = threading.Event()
    errors: list[BaseException] = []

    def first_process() -> None:
        conn = sqlite3.connect(path, check_same_thread=False)
        slept: list[bool] = []

        def slow_copy() -> int:
            if conn.in_transaction and not slept:  # inside the rekeying's BEGIN IMMEDIATE
                slept.append(True)
                in_rebuild.set()
                time.sleep(5.5)
            return 0

        conn.set_progress_handler(slow_copy, 100)
        try:
            _key_denials_by_policy(conn)
        except BaseException as exc:
            errors.append(exc)
        finally:
            in_rebuild.set()
            conn.close()

    thread = threading.Thread(target=first_process, daemon=True)
    thread.start()
    await asyncio.to_thread(in_rebuild.wait, 10)
    second = SqliteStore(path)
    failure = None
    try:
        await second.open()
    except sqlite3.OperationalError as exc:
        failure = exc
    finally:
        await asyncio.to_thread(thread.join, 15)
        await second.close()
    assert not errors, errors
    assert failure is None, f"the second process could not open the store while the first rekeyed it: {failure!r}"
