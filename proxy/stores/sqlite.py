"""The SQLite :class:`VerdictStore` (the embedded default): one row per decision (never the media bytes).

Writes go through a bounded queue to one writer thread, batched, so the event loop never waits on disk.
The store also warms the verdict cache at start (recent model verdicts), so a restart does not re-judge
everything at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .base import EVERY_POLICY, AuditRow, DeniedUrl, StoredVerdict, SweepMark, VerdictStore, WriteQueue
from .sqlite_banks import BANK_SCHEMA, SqliteBanks
import contextlib

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 60.0
"""How long a write waits for another process's lock on the file before it fails (sqlite3's default: 5 s)."""

DENIED_URLS_COLUMNS = """(
    url TEXT NOT NULL,
    ts REAL NOT NULL,
    sha256 TEXT,
    policy TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (url, policy)
)"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    instance TEXT NOT NULL,
    policy TEXT NOT NULL,
    action TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    labels TEXT NOT NULL,
    scores TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    detail TEXT,
    url TEXT
);
CREATE INDEX IF NOT EXISTS decisions_sha256 ON decisions (sha256);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE TABLE IF NOT EXISTS denied_urls DENIED_URLS_COLUMNS;
CREATE TABLE IF NOT EXISTS sweep_progress (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    policy TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    action TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (source, key)
);
""".replace("DENIED_URLS_COLUMNS", DENIED_URLS_COLUMNS)

SWEEP_COLUMNS = ("source", "key", "version", "size", "policy", "sha256", "outcome", "action", "ts")
SWEPT_LOOKUP_BATCH = 500
"""Keys per query when looking sweep marks up (below SQLite's limit on bound parameters)."""

COLUMNS = ("ts", "sha256", "source", "instance", "policy", "action", "decided_by", "labels", "scores", "latency_ms", "detail", "url",
           "worker")
ADDED_COLUMNS = {"decisions": (("worker", "TEXT"),)}
"""Columns added after a table first shipped: added to an existing database on open."""


def _key_denials_by_policy(conn: sqlite3.Connection) -> None:
    """Stores written before denials were per policy keyed them by URL alone (one policy's verdict denied
    a URL to every instance): rebuild the table keyed by (url, policy), keeping every row's policy. Once,
    under SQLite's write lock, so a second process opening the file at the same time finds it done."""

    def keyed() -> bool:
        return any(row[1] == "policy" and row[5] > 0 for row in conn.execute("PRAGMA table_info(denied_urls)"))

    if keyed():
        return
    level, conn.isolation_level = conn.isolation_level, None
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not keyed():
                conn.execute(f"CREATE TABLE denied_urls_by_policy {DENIED_URLS_COLUMNS}")
                # the rowids are kept: other processes' cursors over new denials stay valid
                # (a blocked address was denied to everyone, whichever policy recorded it)
                conn.execute("INSERT INTO denied_urls_by_policy (rowid, url, ts, sha256, policy, reason) "
                             "SELECT rowid, url, ts, sha256, CASE WHEN reason LIKE 'blocked:%' THEN ? ELSE policy END, "
                             "reason FROM denied_urls", (EVERY_POLICY,))
                conn.execute("DROP TABLE denied_urls")
                conn.execute("ALTER TABLE denied_urls_by_policy RENAME TO denied_urls")
                log.info("store: URL denials are now kept per policy (table rebuilt)")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.isolation_level = level


class SqliteStore(SqliteBanks, VerdictStore):
    def __init__(self, path: str, *, max_pending: int = 10_000, on_drop: Callable[[], None] | None = None) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self._queue: WriteQueue[AuditRow | DeniedUrl | SweepMark] = WriteQueue("audit", max_pending, on_drop)
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen_version: int | None = None

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # another process may hold the write lock for a while (rekeying a large old store at start)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.executescript(BANK_SCHEMA)
        _key_denials_by_policy(conn)
        for table, columns in ADDED_COLUMNS.items():
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        self._conn = conn

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        self._task = asyncio.get_running_loop().create_task(self._queue.run(self._write, (sqlite3.Error,)),
                                                                name="audit-writer")

    async def close(self) -> None:
        if self._task is not None:
            await self.flush()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def record(self, row: AuditRow) -> None:
        self._queue.put(row)

    def deny_url(self, denial: DeniedUrl) -> None:
        self._queue.put(denial)

    async def flush(self) -> None:
        await self._queue.flush()

    async def mark_swept(self, mark: SweepMark) -> None:
        await self._queue.put_wait(mark)

    async def swept(self, source: str, keys: Sequence[str]) -> dict[str, SweepMark]:
        found: dict[str, SweepMark] = {}
        for start in range(0, len(keys), SWEPT_LOOKUP_BATCH):
            chunk = list(keys[start : start + SWEPT_LOOKUP_BATCH])
            rows = await self.query(
                f"SELECT {','.join(SWEEP_COLUMNS)} FROM sweep_progress WHERE source = ? AND key IN ({','.join('?' * len(chunk))})",
                (source, *chunk),
            )
            found.update((r["key"], SweepMark(**r)) for r in rows)
        return found

    def _insert(self, rows: list[AuditRow | DeniedUrl | SweepMark]) -> None:
        assert self._conn is not None
        placeholders = ",".join("?" for _ in COLUMNS)
        decisions = [r.values() for r in rows if isinstance(r, AuditRow)]
        denied = [r.values() for r in rows if isinstance(r, DeniedUrl)]
        marks = [r.values() for r in rows if isinstance(r, SweepMark)]
        with self._conn:
            if decisions:
                self._conn.executemany(f"INSERT INTO decisions ({','.join(COLUMNS)}) VALUES ({placeholders})", decisions)
            if denied:
                self._conn.executemany("INSERT OR REPLACE INTO denied_urls VALUES (?, ?, ?, ?, ?)", denied)
            if marks:
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO sweep_progress ({','.join(SWEEP_COLUMNS)}) VALUES ({','.join('?' * len(SWEEP_COLUMNS))})",
                    marks,
                )

    async def url_denial(self, url: str, policy: str) -> str | None:
        rows = await self.query("SELECT reason FROM denied_urls WHERE url = ? AND policy IN (?, ?) LIMIT 1",
                                (url, policy, EVERY_POLICY))
        return str(rows[0]["reason"]) if rows else None

    async def denials_since(self, cursor: int) -> tuple[int, dict[tuple[str, str], str]] | None:
        # INSERT OR REPLACE gives a replaced row a new, higher rowid: the rowid is a cursor over writes
        rows = await self.query("SELECT rowid AS id, url, policy, reason FROM denied_urls WHERE rowid > ? "
                                "ORDER BY rowid", (cursor,))
        return (int(rows[-1]["id"]) if rows else cursor), {(r["url"], r["policy"]): str(r["reason"]) for r in rows}

    def _data_version(self) -> int:
        assert self._conn is not None
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    async def changed(self) -> bool:
        # SQLite's data_version changes when another connection (another process) commits; it costs no
        # disk read in WAL mode
        version = await asyncio.get_running_loop().run_in_executor(self._executor, self._data_version)
        seen, self._seen_version = self._seen_version, version
        return version != seen

    async def model_verdict(self, sha256: str, policy: str, ttl_s: float) -> StoredVerdict | None:
        rows = await self.query(
            "SELECT sha256, policy, action, labels, scores FROM decisions WHERE sha256 = ? AND policy = ? "
            "AND decided_by = 'model' AND ts > ? ORDER BY ts DESC LIMIT 1",
            (sha256, policy, time.time() - ttl_s),
        )
        return StoredVerdict(**rows[0]) if rows else None

    async def _write(self, rows: list[AuditRow | DeniedUrl | SweepMark]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._insert, rows)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        assert self._conn is not None
        cur = self._conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            for key in ("labels", "scores"):
                if key in item:
                    item[key] = json.loads(item[key])
            out.append(item)
        return out

    async def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._query, sql, args)

    async def recent_model_verdicts(self, ttl_s: float, limit: int) -> list[StoredVerdict]:
        rows = await self.query(
            "SELECT sha256, policy, action, labels, scores, MAX(ts) AS ts FROM decisions "
            "WHERE decided_by = 'model' AND ts > ? GROUP BY sha256, policy ORDER BY ts DESC LIMIT ?",
            (time.time() - ttl_s, limit),
        )
        return [StoredVerdict(r["sha256"], r["policy"], r["action"], r["labels"], r["scores"]) for r in rows]
