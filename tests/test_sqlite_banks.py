"""The SQLite side of hash banks, the review page's decision queries and the moderation log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from proxy.stores import AuditRow, BankEntry, DecisionQuery, ModerationRow, SqliteStore


def row(sha256: str, action: str, labels: list[str], source: str = "validate", ts: float | None = None) -> AuditRow:
    return AuditRow(ts=ts or time.time(), sha256=sha256, source=source, instance="pictrs", policy="main", action=action,
                    decided_by="model", labels=labels, scores={}, latency_ms=1.0)


async def test_bank_entries_are_unique_and_every_change_bumps_the_version(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "a.sqlite3"))
    await store.open()
    try:
        v0 = await store.banks_version()
        assert await store.create_bank("own", "known") and not await store.create_bank("own", "deny")
        entries = [BankEntry("own", "sha256", "a" * 64, sha256="a" * 64, labels=("x",)),
                   BankEntry("own", "pdq", "f" * 64, quality=90, sha256="a" * 64)]
        assert await store.add_bank_entries(entries) == 2
        v1 = await store.banks_version()
        assert v1 > v0
        assert await store.add_bank_entries(entries) == 0
        assert await store.banks_version() == v1  # nothing new: no reload anywhere
        (info,) = await store.banks()
        assert (info.name, info.role, info.entries) == ("own", "known", 2)
        got = await store.bank_entries("own")
        assert [(e.kind, e.labels, e.quality) for e in got] == [("sha256", ("x",), None), ("pdq", (), 90)]
        assert await store.remove_bank_entries("own", kind="pdq") == 1
        assert await store.banks_version() > v1
        assert await store.drop_bank("own") == 1 and await store.banks() == []
    finally:
        await store.close()


async def test_decisions_by_filter_and_the_moderation_log(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "a.sqlite3"))
    await store.open()
    try:
        store.record(row("1" * 64, "reject", ["nsfw", "csam"], ts=1000.0))
        store.record(row("2" * 64, "accept", [], source="inbox", ts=2000.0))
        store.record(row("3" * 64, "quarantine", ["nsfw"], ts=3000.0))
        await store.flush()

        async def shas(**kw: Any) -> list[str]:
            return [r["sha256"][0] for r in await store.decisions(DecisionQuery(**kw))]

        assert await shas() == ["3", "2", "1"]
        assert await shas(label="nsfw") == ["3", "1"] and await shas(label="csam") == ["1"]
        assert await shas(action="accept") == ["2"] and await shas(source="inbox") == ["2"]
        assert await shas(since=1500.0, until=2500.0) == ["2"]
        assert await shas(label="ns") == []  # a label is matched whole
        await store.record_moderation(ModerationRow(5.0, "admin@127.0.0.1", "allow", "1" * 64, "main", "d"))
        assert await store.moderation_log() == [ModerationRow(5.0, "admin@127.0.0.1", "allow", "1" * 64, "main", "d")]
    finally:
        await store.close()
