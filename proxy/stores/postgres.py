"""The PostgreSQL :class:`VerdictStore`: shared by replicas (several serve and egress processes).

Holds the audit log, the newest model verdict per (sha256, policy) and the URL denials. Each replica
keeps its in-memory :class:`VerdictCache` in front; a URL denial is pushed to every replica at once with
LISTEN/NOTIFY (channel ``ffp_denials``), so a denial made on one is honoured by all within milliseconds
(and a replica that missed the notice still finds the denial in the table on its next look-up).

The schema is versioned: :data:`MIGRATIONS` are applied in order on open, each once, under an advisory
lock so replicas starting together do not race. Writes go through a bounded queue, batched, off the
request path, like the SQLite store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from .base import EVERY_POLICY, AuditRow, DeniedUrl, StoredVerdict, SweepMark, VerdictStore, WriteQueue

log = logging.getLogger(__name__)

CHANNEL = "ffp_denials"
LOCK_KEY = 0x0FF1_7E12
POOL_SIZE = 4
NOTIFY_MAX_BYTES = 7900  # Postgres refuses NOTIFY payloads of 8000 bytes or more

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
    CREATE TABLE decisions (
        id BIGSERIAL PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        sha256 TEXT NOT NULL,
        source TEXT NOT NULL,
        instance TEXT NOT NULL,
        policy TEXT NOT NULL,
        action TEXT NOT NULL,
        decided_by TEXT NOT NULL,
        labels JSONB NOT NULL,
        scores JSONB NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        detail TEXT,
        url TEXT,
        worker TEXT
    );
    CREATE INDEX decisions_sha256 ON decisions (sha256);
    CREATE INDEX decisions_ts ON decisions (ts);
    CREATE TABLE verdicts (
        sha256 TEXT NOT NULL,
        policy TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        action TEXT NOT NULL,
        labels JSONB NOT NULL,
        scores JSONB NOT NULL,
        PRIMARY KEY (sha256, policy)
    );
    CREATE INDEX verdicts_ts ON verdicts (ts);
    CREATE TABLE denied_urls (
        url TEXT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        sha256 TEXT,
        policy TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    """),
    (2, """
    CREATE TABLE sweep_progress (
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        version TEXT NOT NULL,
        size BIGINT NOT NULL,
        policy TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        outcome TEXT NOT NULL,
        action TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (source, key)
    );
    """),
    (3, """
    CREATE TABLE url_denials (
        url TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        sha256 TEXT,
        policy TEXT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (url, policy)
    );
    CREATE FUNCTION ffp_old_denial_for_every_policy() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO url_denials (url, ts, sha256, policy, reason) VALUES (NEW.url, NEW.ts, NEW.sha256, '*', NEW.reason)
        ON CONFLICT (url, policy) DO UPDATE SET ts = EXCLUDED.ts, sha256 = EXCLUDED.sha256, reason = EXCLUDED.reason;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER old_denial_for_every_policy AFTER INSERT OR UPDATE ON denied_urls
        FOR EACH ROW EXECUTE FUNCTION ffp_old_denial_for_every_policy();
    INSERT INTO url_denials (url, ts, sha256, policy, reason)
        SELECT url, ts, sha256, CASE WHEN reason LIKE 'blocked:%' THEN '*' ELSE policy END, reason FROM denied_urls;
    """),
)
"""(version, SQL): append only; a shipped migration is never edited.

3: URL denials per policy, in ``url_denials`` keyed by (url, policy); the old rows are copied (a blocked
address's for every policy, ``*``). ``denied_urls`` stays for replicas of the release before, still running
during a rolling upgrade (their upsert names its (url) key): a trigger copies what they write there into
``url_denials`` for every policy, as they meant it. The trigger exists before the copy, under a lock that
holds their writes back until the migration commits, so no write falls between the two."""
UPSERT_SWEEP = (
    "INSERT INTO sweep_progress (source, key, version, size, policy, sha256, outcome, action, ts) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (source, key) DO UPDATE SET version = EXCLUDED.version, "
    "size = EXCLUDED.size, policy = EXCLUDED.policy, sha256 = EXCLUDED.sha256, outcome = EXCLUDED.outcome, "
    "action = EXCLUDED.action, ts = EXCLUDED.ts"
)

INSERT_DECISION = (
    "INSERT INTO decisions (ts, sha256, source, instance, policy, action, decided_by, labels, scores, latency_ms, "
    "detail, url, worker) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11, $12, $13)"
)
UPSERT_VERDICT = (
    "INSERT INTO verdicts (sha256, policy, ts, action, labels, scores) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb) "
    "ON CONFLICT (sha256, policy) DO UPDATE SET ts = EXCLUDED.ts, action = EXCLUDED.action, labels = EXCLUDED.labels, "
    "scores = EXCLUDED.scores WHERE verdicts.ts <= EXCLUDED.ts"
)
UPSERT_DENIAL = (
    "INSERT INTO url_denials (url, ts, sha256, policy, reason) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (url, policy) DO UPDATE SET ts = EXCLUDED.ts, sha256 = EXCLUDED.sha256, reason = EXCLUDED.reason"
)


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations this database lacks, in order; returns the versions applied now."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                           "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        have = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version not in have:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
    return applied


def _verdict(row: asyncpg.Record) -> StoredVerdict:
    return StoredVerdict(row["sha256"], row["policy"], row["action"], json.loads(row["labels"]), json.loads(row["scores"]))


class PostgresStore(VerdictStore):
    def __init__(self, url: str, *, max_pending: int = 10_000, on_drop: Callable[[], None] | None = None) -> None:
        self.url = url
        self._queue: WriteQueue[AuditRow | DeniedUrl] = WriteQueue("store", max_pending, on_drop)
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._watchers: list[Callable[[str, str, str], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        # every connection opens here (asyncpg reads ~/.pgpass when it connects: a file look-up, once)
        self._pool = await asyncpg.create_pool(self.url, min_size=POOL_SIZE, max_size=POOL_SIZE,
                                             max_inactive_connection_lifetime=0)
        async with self._pool.acquire() as conn:
            applied = await migrate(conn)
        if applied:
            log.info("store: applied migrations %s", applied)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._queue.run(self._write, (OSError, asyncpg.PostgresError)), name="pg-writer"),
                       loop.create_task(self._listen(), name="pg-listen")]

    async def close(self) -> None:
        if self._tasks:
            await self.flush()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        if self._pool is not None:
            await self._pool.close()

    def watch_denials(self, callback: Callable[[str, str, str], None]) -> None:
        self._watchers.append(callback)

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            notice = json.loads(payload)
            url, reason = str(notice["url"]), str(notice["reason"])
            # a replica from before denials were per policy sends none: its denial held for every policy
            policy = str(notice.get("policy", EVERY_POLICY))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("store: ignoring a malformed %s notice", CHANNEL)
            return
        for watcher in self._watchers:
            watcher(url, policy, reason)

    async def _listen(self) -> None:
        """Hold a connection that LISTENs for denials; reconnect when it drops."""
        while True:
            try:
                self._listener = await asyncpg.connect(self.url)
                await self._listener.add_listener(CHANNEL, self._heard)
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._listener.add_termination_listener(lambda _c, f=lost: f.done() or f.set_result(None))
                await lost
                log.warning("store: the LISTEN connection dropped; reconnecting")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("store: cannot LISTEN for denials: %s", exc)
            await asyncio.sleep(1.0)

    def record(self, row: AuditRow) -> None:
        self._queue.put(row)

    def deny_url(self, denial: DeniedUrl) -> None:
        self._queue.put(denial)

    async def flush(self) -> None:
        await self._queue.flush()

    async def _write(self, rows: list[AuditRow | DeniedUrl]) -> None:
        assert self._pool is not None
        decisions = [r for r in rows if isinstance(r, AuditRow)]
        denials = [r for r in rows if isinstance(r, DeniedUrl)]
        async with self._pool.acquire() as conn, conn.transaction():
            if decisions:
                await conn.executemany(INSERT_DECISION, [r.values() for r in decisions])
                verdicts = [(r.sha256, r.policy, r.ts, r.action, json.dumps(r.labels), json.dumps(r.scores))
                            for r in decisions if r.decided_by == "model" and r.sha256]
                if verdicts:
                    await conn.executemany(UPSERT_VERDICT, verdicts)
            for denial in denials:
                await conn.execute(UPSERT_DENIAL, *denial.values())
                notice = json.dumps({"url": denial.url, "policy": denial.policy, "reason": denial.reason[:500]})
                if len(notice.encode()) < NOTIFY_MAX_BYTES:
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, notice)

    async def url_denial(self, url: str, policy: str) -> str | None:
        assert self._pool is not None
        reason = await self._pool.fetchval("SELECT reason FROM url_denials WHERE url = $1 AND policy IN ($2, $3) "
                                           "LIMIT 1", url, policy, EVERY_POLICY)
        return str(reason) if reason is not None else None

    async def model_verdict(self, sha256: str, policy: str, ttl_s: float) -> StoredVerdict | None:
        assert self._pool is not None
        row = await self._pool.fetchrow("SELECT sha256, policy, action, labels, scores FROM verdicts WHERE sha256 = $1 "
                                        "AND policy = $2 AND ts > $3", sha256, policy, time.time() - ttl_s)
        return _verdict(row) if row is not None else None

    async def recent_model_verdicts(self, ttl_s: float, limit: int) -> list[StoredVerdict]:
        assert self._pool is not None
        rows = await self._pool.fetch("SELECT sha256, policy, action, labels, scores FROM verdicts WHERE ts > $1 "
                                      "ORDER BY ts DESC LIMIT $2", time.time() - ttl_s, limit)
        return [_verdict(r) for r in rows]

    async def mark_swept(self, mark: SweepMark) -> None:
        assert self._pool is not None
        await self._pool.execute(UPSERT_SWEEP, *mark.values())

    async def swept(self, source: str, keys: Sequence[str]) -> dict[str, SweepMark]:
        assert self._pool is not None
        rows = await self._pool.fetch("SELECT source, key, version, size, policy, sha256, outcome, action, ts "
                                      "FROM sweep_progress WHERE source = $1 AND key = ANY($2::text[])", source, list(keys))
        return {r["key"]: SweepMark(**dict(r)) for r in rows}

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of a query, as dicts (admin tools, tests)."""
        assert self._pool is not None
        return [dict(r) for r in await self._pool.fetch(sql, *args)]
