"""Hash banks, recent decisions and the moderators' log in SQLite (:class:`~proxy.stores.SqliteStore`).

Bank writes are rare (model refusals, moderator actions, imports) and go straight through the store's one
writer thread; each bumps ``bank_meta.version`` in the same transaction, which is how every process sharing
the file sees that its in-memory matcher must reload.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import Executor
from typing import Any

from .banks import BankEntry, BankInfo, BankStore, DecisionQuery, ModerationRow

BANK_SCHEMA = """
CREATE TABLE IF NOT EXISTS banks (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS bank_hashes (
    id INTEGER PRIMARY KEY,
    bank TEXT NOT NULL REFERENCES banks (name) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    quality INTEGER,
    sha256 TEXT,
    labels TEXT NOT NULL DEFAULT '[]',
    ts REAL NOT NULL,
    indicator_id TEXT,
    descriptor_id TEXT,
    UNIQUE (bank, kind, value)
);
CREATE INDEX IF NOT EXISTS bank_hashes_sha256 ON bank_hashes (sha256);
CREATE TABLE IF NOT EXISTS bank_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO bank_meta VALUES ('version', 0);
CREATE TABLE IF NOT EXISTS moderation (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    policy TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_action_ts ON decisions (action, ts);
"""

_ENTRY_COLUMNS = "id, bank, kind, value, quality, sha256, labels, ts, indicator_id, descriptor_id"


def _entry(row: tuple[Any, ...]) -> BankEntry:
    id_, bank, kind, value, quality, sha256, labels, ts, indicator_id, descriptor_id = row
    return BankEntry(bank=bank, kind=kind, value=value, quality=quality, sha256=sha256, labels=tuple(json.loads(labels)),
                     ts=ts, indicator_id=indicator_id, descriptor_id=descriptor_id, id=id_)


class SqliteBanks(BankStore):
    """Mixed into :class:`~proxy.stores.SqliteStore`, which provides the connection and its writer thread."""

    _conn: sqlite3.Connection | None
    _executor: Executor

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "store not open"
        return self._conn

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE bank_meta SET value = value + 1 WHERE key = 'version'")

    async def banks(self) -> list[BankInfo]:
        def run() -> list[BankInfo]:
            rows = self._db().execute(
                "SELECT b.name, b.role, b.created, COUNT(h.id) FROM banks b LEFT JOIN bank_hashes h ON h.bank = b.name "
                "GROUP BY b.name ORDER BY b.name").fetchall()
            return [BankInfo(*r) for r in rows]

        result: list[BankInfo] = await self._run(run)
        return result

    async def create_bank(self, name: str, role: str) -> bool:
        def run() -> bool:
            conn = self._db()
            with conn:
                cur = conn.execute("INSERT OR IGNORE INTO banks VALUES (?, ?, ?)", (name, role, time.time()))
                if cur.rowcount:
                    self._bump(conn)
            return bool(cur.rowcount)

        created: bool = await self._run(run)
        return created

    async def drop_bank(self, name: str) -> int:
        def run() -> int:
            conn = self._db()
            with conn:
                n = conn.execute("DELETE FROM bank_hashes WHERE bank = ?", (name,)).rowcount
                conn.execute("DELETE FROM banks WHERE name = ?", (name,))
                self._bump(conn)
            return int(n)

        dropped: int = await self._run(run)
        return dropped

    async def bank_entries(self, bank: str | None = None) -> list[BankEntry]:
        def run() -> list[BankEntry]:
            sql = f"SELECT {_ENTRY_COLUMNS} FROM bank_hashes"
            args: tuple[Any, ...] = ()
            if bank is not None:
                sql, args = sql + " WHERE bank = ?", (bank,)
            return [_entry(r) for r in self._db().execute(sql + " ORDER BY id", args).fetchall()]

        entries: list[BankEntry] = await self._run(run)
        return entries

    async def add_bank_entries(self, entries: list[BankEntry]) -> int:
        def run() -> int:
            conn = self._db()
            rows = [(e.bank, e.kind, e.value, e.quality, e.sha256, json.dumps(list(e.labels)), e.ts or time.time(),
                     e.indicator_id, e.descriptor_id) for e in entries]
            with conn:
                before = conn.total_changes
                conn.executemany(
                    "INSERT OR IGNORE INTO bank_hashes (bank, kind, value, quality, sha256, labels, ts, indicator_id, "
                    "descriptor_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                added = conn.total_changes - before
                if added:
                    self._bump(conn)
            return added

        added: int = await self._run(run)
        return added

    async def remove_bank_entries(self, bank: str, *, kind: str | None = None, value: str | None = None,
                                  sha256: str | None = None) -> int:
        def run() -> int:
            where, args = ["bank = ?"], [bank]
            for column, v in (("kind", kind), ("value", value), ("sha256", sha256)):
                if v is not None:
                    where.append(f"{column} = ?")
                    args.append(v)
            conn = self._db()
            with conn:
                n = conn.execute(f"DELETE FROM bank_hashes WHERE {' AND '.join(where)}", args).rowcount
                if n:
                    self._bump(conn)
            return int(n)

        removed: int = await self._run(run)
        return removed

    async def banks_version(self) -> int:
        def run() -> int:
            return int(self._db().execute("SELECT value FROM bank_meta WHERE key = 'version'").fetchone()[0])

        version: int = await self._run(run)
        return version

    async def record_moderation(self, row: ModerationRow) -> None:
        def run() -> None:
            conn = self._db()
            with conn:
                conn.execute("INSERT INTO moderation (ts, actor, action, sha256, policy, detail) VALUES (?, ?, ?, ?, ?, ?)",
                             (row.ts, row.actor, row.action, row.sha256, row.policy, row.detail))

        await self._run(run)

    async def moderation_log(self, limit: int = 100) -> list[ModerationRow]:
        def run() -> list[ModerationRow]:
            rows = self._db().execute("SELECT ts, actor, action, sha256, policy, detail FROM moderation "
                                      "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            return [ModerationRow(*r) for r in rows]

        log: list[ModerationRow] = await self._run(run)
        return log

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            where: list[str] = []
            args: list[Any] = []
            for column in ("action", "source", "instance", "sha256"):
                value = getattr(query, column)
                if value:
                    where.append(f"{column} = ?")
                    args.append(value)
            if query.label:
                where.append("EXISTS (SELECT 1 FROM json_each(decisions.labels) WHERE json_each.value = ?)")
                args.append(query.label)
            if query.since is not None:
                where.append("ts >= ?")
                args.append(query.since)
            if query.until is not None:
                where.append("ts <= ?")
                args.append(query.until)
            sql = ("SELECT id, ts, sha256, source, instance, policy, action, decided_by, labels, scores, latency_ms, "
                   "detail, url FROM decisions")
            if where:
                sql += " WHERE " + " AND ".join(where)
            cur = self._db().execute(sql + " ORDER BY ts DESC, id DESC LIMIT ?", (*args, query.limit))
            names = [d[0] for d in cur.description]
            out = []
            for r in cur.fetchall():
                item = dict(zip(names, r, strict=True))
                item["labels"] = json.loads(item["labels"])
                item["scores"] = json.loads(item["scores"])
                out.append(item)
            return out

        rows: list[dict[str, Any]] = await self._run(run)
        return rows
