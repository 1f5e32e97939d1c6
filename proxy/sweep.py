"""``fedi-filter sweep``: judge media stored before the filter existed (directories, S3 buckets).

Every object goes through the one :class:`~proxy.pipeline.Pipeline` (source ``sweep``) with the instance's
policy and lists, as live traffic does; repeats of the same bytes are answered from its sha256 cache.
Memory stays bounded whatever the size of the source: listings are streamed in batches, at most
``concurrency`` objects are read and judged at once (so at most that many bodies are held), and objects
over the policy's ``limits.max_bytes`` are never read.

Outcomes: ``flagged`` (the policy refuses the media itself: :attr:`Verdict.flags_media`), ``unjudged``
(invalid, unsupported or unreadable bytes, or no verdict through our own failure: reported apart, never
quarantined or deleted) and ``clean``. Only flagged objects are acted on (``report``, ``quarantine``,
``delete``).

Progress lives in the store (:class:`~proxy.stores.SweepMark`, one per object, written only after the
object's action is done): a rerun skips objects whose mark matches their version (mtime and size, or
ETag), so an interrupted sweep resumes where it stopped and a cron job with ``--since`` judges only what
is new. SIGINT stops taking new objects, lets the ones in flight finish and keeps the progress; a second
SIGINT abandons those in flight (they are judged again next time).

``FEDI_FILTER_SWEEP_PAUSE_AFTER=N`` (a test hook) pauses once N objects are done, until SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, TypeVar

from .app import Services, build_services
from .config import ConfigError, Instance, load_config
from .stores import SweepMark
from .verdict import DecidedBy, InvalidKind, Verdict

log = logging.getLogger(__name__)

PAUSE_ENV = "FEDI_FILTER_SWEEP_PAUSE_AFTER"
LIST_BATCH = 256
"""Entries taken from a listing at a time (and looked up in the store in one query)."""

T = TypeVar("T")


class SweepAction(StrEnum):
    REPORT = "report"
    QUARANTINE = "quarantine"
    DELETE = "delete"


class SweepOutcome(StrEnum):
    CLEAN = "clean"
    FLAGGED = "flagged"
    UNJUDGED = "unjudged"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 30m, 24h, 7d, 2w)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket (s3://bucket/prefix)")
    return bucket, prefix


# --- where objects live -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One stored object as a listing shows it."""

    key: str
    size: int
    version: str
    mtime: float


class Source(ABC):
    """A place holding stored objects: listed in batches, read, removed. Calls block: run them in threads."""

    id: str
    """Names the source in the progress store (and in the report)."""

    @abstractmethod
    def batches(self, since: float | None) -> Iterator[list[Entry]]:
        """Entries modified at or after ``since`` (epoch seconds; None: all), a bounded batch at a time."""

    @abstractmethod
    def read(self, entry: Entry) -> bytes: ...

    @abstractmethod
    def remove(self, entry: Entry) -> None:
        """Delete the object; refuses (``ChangedError``) when it is no longer the version that was judged."""

    def location(self, entry: Entry) -> str:
        return f"{self.id.rstrip('/')}/{entry.key}"


class ChangedError(Exception):
    """The object changed after it was judged: not removed."""


class DirSource(Source):
    """Regular files under a directory (symlinks are neither followed nor judged)."""

    def __init__(self, root: str, exclude: tuple[Path, ...] = ()) -> None:
        self.root = Path(root).resolve()
        self.id = str(self.root)
        self.exclude = tuple(p.resolve() for p in exclude)

    @staticmethod
    def _version(st: os.stat_result) -> str:
        return f"{st.st_mtime_ns}:{st.st_size}"

    def batches(self, since: float | None) -> Iterator[list[Entry]]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a directory")
        batch: list[Entry] = []
        if any(self.root == ex or ex in self.root.parents for ex in self.exclude):
            return  # the quarantine itself (or a folder inside it): never swept, never deleted from
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() not in self.exclude)
            for name in sorted(filenames):
                path = here / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink() or (since is not None and st.st_mtime < since):
                    continue
                batch.append(Entry(path.relative_to(self.root).as_posix(), st.st_size, self._version(st), st.st_mtime))
                if len(batch) >= LIST_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _path(self, entry: Entry) -> Path:
        return self.root / entry.key

    def read(self, entry: Entry) -> bytes:
        fd = os.open(self._path(entry), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()

    def remove(self, entry: Entry) -> None:
        path = self._path(entry)
        if self._version(path.lstat()) != entry.version:
            raise ChangedError(f"{path} changed after it was judged")
        path.unlink()


def s3_client(endpoint_url: str | None, pool: int) -> Any:
    """A boto3 S3 client: credentials and region from the standard AWS environment and config files."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, config=BotoConfig(max_pool_connections=pool, retries={"mode": "standard"})
    )


class S3Source(Source):
    """Objects under ``s3://bucket/prefix`` (AWS, MinIO, R2, ... through ``endpoint_url``)."""

    def __init__(self, url: str, client: Any, endpoint_url: str | None, exclude: str | None = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = client
        self.exclude: str | None = None
        """A key prefix in this bucket never listed: the quarantine, when it lies inside the swept prefix."""
        if exclude is not None:
            bucket, prefix = parse_s3_url(exclude)
            if bucket == self.bucket:
                self.exclude = prefix.rstrip("/") + "/" if prefix else ""
        self.id = (f"{endpoint_url.rstrip('/')} " if endpoint_url else "") + f"s3://{self.bucket}/{self.prefix}"

    def batches(self, since: float | None) -> Iterator[list[Entry]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": 1000}
        )
        for page in pages:
            batch = []
            for obj in page.get("Contents", ()):
                mtime = obj["LastModified"].timestamp()
                if obj["Key"].endswith("/") or (since is not None and mtime < since):
                    continue
                if self.exclude is not None and obj["Key"].startswith(self.exclude):
                    continue
                batch.append(Entry(obj["Key"], int(obj["Size"]), obj["ETag"].strip('"'), mtime))
            if batch:
                yield batch

    def read(self, entry: Entry) -> bytes:
        resp = self.client.get_object(Bucket=self.bucket, Key=entry.key, IfMatch=f'"{entry.version}"')
        with contextlib.closing(resp["Body"]) as body:
            return bytes(body.read())

    def remove(self, entry: Entry) -> None:
        etag = self.client.head_object(Bucket=self.bucket, Key=entry.key)["ETag"].strip('"')
        if etag != entry.version:
            raise ChangedError(f"{self.location(entry)} changed after it was judged")
        self.client.delete_object(Bucket=self.bucket, Key=entry.key)

    def location(self, entry: Entry) -> str:
        return f"s3://{self.bucket}/{entry.key}"


# --- where quarantined objects go -------------------------------------------------------------------


class Quarantine(ABC):
    """Keeps a copy of flagged media named by its sha256, and the original's location in a manifest."""

    @abstractmethod
    def keep(self, data: bytes, record: dict[str, Any]) -> str:
        """Store ``data`` (``record`` has sha256, source, key, size, labels); where it now lies."""


class DirQuarantine(Quarantine):
    """``DIR/<sha256>`` (mode 0600, in a 0700 folder) and ``DIR/manifest.jsonl`` (one line per original)."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)

    def keep(self, data: bytes, record: dict[str, Any]) -> str:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.dir / record["sha256"]
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{record['sha256']}.")  # mode 0600
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        fd = os.open(self.dir / "manifest.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(json.dumps({**record, "quarantined": target.name}) + "\n")
        return str(target)


class S3Quarantine(Quarantine):
    """``s3://bucket/prefix/<sha256>`` and one manifest object per original under ``prefix/manifest/``."""

    def __init__(self, url: str, client: Any) -> None:
        self.bucket, prefix = parse_s3_url(url)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.client = client

    def keep(self, data: bytes, record: dict[str, Any]) -> str:
        key = f"{self.prefix}{record['sha256']}"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        origin = hashlib.sha256(f"{record['source']}\0{record['key']}".encode()).hexdigest()
        manifest = json.dumps({**record, "quarantined": key}).encode()
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}manifest/{origin}.json", Body=manifest,
                               ContentType="application/json")
        return f"s3://{self.bucket}/{key}"


# --- progress display -------------------------------------------------------------------------------


@dataclass
class Counts:
    listed: int = 0
    listed_bytes: int = 0
    listing_done: bool = False
    skipped: int = 0
    skipped_flagged: int = 0
    judged: int = 0
    judged_bytes: int = 0
    clean: int = 0
    flagged: int = 0
    unjudged: int = 0
    unreadable: int = 0
    quarantined: int = 0
    deleted: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.skipped + self.judged + self.unreadable

    def rate(self) -> float:
        return self.judged / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        eta = "listing..."
        if self.listing_done:
            left = self.listed - self.done
            eta = f"ETA {left / rate:.0f}s" if rate > 0 else "ETA ?"
        return (f"sweep: {self.done}/{self.listed} objects ({self.skipped} skipped), "
                f"{self.judged_bytes / 1e6:.1f} MB judged, {rate:.1f} obj/s, flagged {self.flagged}, "
                f"unjudged {self.unjudged}, {eta}")


class Display:
    """Shows progress; this base shows nothing."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def start(self) -> None: ...

    def update(self) -> None: ...

    def stop(self) -> None: ...


class LogLines(Display):
    """Plain progress lines every ``every_s`` seconds (logs, cron, pipes)."""

    def __init__(self, counts: Counts, every_s: float = 10.0) -> None:
        super().__init__(counts)
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    def update(self) -> None:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every_s
            log.info("%s", self.counts.line())


class Bar(Display):
    """A live bar on a terminal: objects, bytes, rate, ETA, flagged."""

    def __init__(self, counts: Counts) -> None:
        super().__init__(counts)
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[mb]:.1f} MB  {task.fields[mbps]:.1f} MB/s  {task.fields[rate]:.1f} obj/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("[red]flagged {task.fields[flagged]}[/]  unjudged {task.fields[unjudged]}"),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task("objects", total=None, mb=0.0, mbps=0.0, rate=0.0, flagged=0, unjudged=0)
        self._handlers: list[logging.Handler] = []

    def start(self) -> None:
        from rich.logging import RichHandler

        root = logging.getLogger()
        self._handlers = list(root.handlers)
        for handler in self._handlers:
            root.removeHandler(handler)
        root.addHandler(RichHandler(console=self.progress.console, show_path=False))
        self.progress.start()

    def update(self) -> None:
        c = self.counts
        elapsed = max(time.monotonic() - c.started, 1e-9)
        self.progress.update(self.task, total=c.listed if c.listing_done else None, completed=c.done,
                             mb=c.judged_bytes / 1e6, mbps=c.judged_bytes / 1e6 / elapsed, rate=c.rate(),
                             flagged=c.flagged, unjudged=c.unjudged)

    def stop(self) -> None:
        self.update()
        self.progress.stop()
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in self._handlers:
            root.addHandler(handler)


# --- the sweep --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepOptions:
    action: SweepAction = SweepAction.REPORT
    since: float | None = None
    """Only objects modified at or after this epoch time."""
    concurrency: int = 8
    rescan: bool = False
    """Judge objects again even when their mark matches (the sha256 cache still answers)."""
    pause_after: int | None = None


class Sweep:
    """One run of ``fedi-filter sweep`` over some sources with one instance's policy."""

    def __init__(self, services: Services, instance: Instance, sources: list[Source], options: SweepOptions, *,
                 report: IO[str], quarantine: Quarantine | None = None,
                 display: Callable[[Counts], Display] = Display) -> None:
        if options.action is SweepAction.QUARANTINE and quarantine is None:
            raise ValueError("quarantine needs a destination")
        self.services = services
        self.instance = instance
        self.sources = sources
        self.options = options
        self.report = report
        self.quarantine = quarantine
        self.counts = Counts()
        self.display = display(self.counts)
        self.interrupted = False
        self._stop = asyncio.Event()
        self._paused = False
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-report")
        self._tasks: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[tuple[Source, Entry] | None] = asyncio.Queue(maxsize=options.concurrency * 2)

    def interrupt(self) -> None:
        """First call: finish what is in flight, take nothing new. Second: abandon what is in flight."""
        if self.interrupted:
            for task in self._tasks:
                task.cancel()
            self._drain()
            return
        self.interrupted = True
        self._stop.set()

    def _drain(self) -> None:
        """Drop the entries not yet taken (a stopping sweep judges them next time)."""
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _io_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _write(self, record: dict[str, Any]) -> None:
        def write() -> None:
            self.report.write(json.dumps(record) + "\n")
            self.report.flush()

        await self._io_call(write)

    async def run(self) -> Counts:
        """Sweep every source; returns the counts (also written as the report's last line)."""
        self.display.start()
        queue = self._queue
        self._tasks = [asyncio.get_running_loop().create_task(self._worker(queue), name=f"sweep-worker-{i}")
                       for i in range(self.options.concurrency)]
        try:
            try:
                await self._list(queue)
            finally:
                if self._stop.is_set():
                    self._drain()
                for _ in self._tasks:
                    await queue.put(None)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()
            self.display.stop()
            await self.services.store.flush()
            await self._write({"type": "summary", **self.summary()})
            self._io.shutdown(wait=False)  # every write was awaited
        return self.counts

    def summary(self) -> dict[str, Any]:
        c = self.counts
        elapsed = time.monotonic() - c.started
        return {
            "sources": [s.id for s in self.sources], "instance": self.instance.name, "policy": self.instance.policy.name,
            "action": str(self.options.action), "listed": c.listed, "skipped": c.skipped,
            "skipped_flagged": c.skipped_flagged, "judged": c.judged, "bytes": c.judged_bytes, "clean": c.clean,
            "flagged": c.flagged, "unjudged": c.unjudged, "quarantined": c.quarantined, "deleted": c.deleted,
            "failed": c.failed, "elapsed_s": round(elapsed, 2), "objects_per_s": round(c.judged / max(elapsed, 1e-9), 2),
            "interrupted": self.interrupted,
        }

    async def _list(self, queue: asyncio.Queue[tuple[Source, Entry] | None]) -> None:
        store = self.services.store
        for source in self.sources:
            batches = source.batches(self.options.since)
            while not self._stop.is_set():
                batch = await asyncio.to_thread(next, batches, None)
                if batch is None:
                    break
                self.counts.listed += len(batch)
                self.counts.listed_bytes += sum(e.size for e in batch)
                marks = {} if self.options.rescan else await store.swept(source.id, [e.key for e in batch])
                for entry in batch:
                    if self._stop.is_set():
                        return
                    mark = marks.get(entry.key)
                    if mark is not None and self._done_with(mark, entry):
                        self.counts.skipped += 1
                        self.counts.skipped_flagged += mark.outcome == SweepOutcome.FLAGGED
                        continue
                    await queue.put((source, entry))
                self.display.update()
            if self._stop.is_set():
                return
        self.counts.listing_done = True

    def _done_with(self, mark: SweepMark, entry: Entry) -> bool:
        """A mark of this very version under this policy, acted on as this run would act."""
        if mark.version != entry.version or mark.policy != self.instance.policy.name:
            return False
        return mark.outcome != SweepOutcome.FLAGGED or mark.action == self.options.action or (
            self.options.action is SweepAction.REPORT)

    async def _worker(self, queue: asyncio.Queue[tuple[Source, Entry] | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            if self._paused:
                await self._stop.wait()
            if self._stop.is_set():
                continue
            try:
                await self._one(*item)
            except Exception:  # a worker must outlive any one object, or the listing would wait forever
                log.exception("sweep of %s failed", item[0].location(item[1]))
                self.counts.failed += 1
            self.display.update()
            if self.options.pause_after is not None and self.counts.judged == self.options.pause_after:
                self._paused = True
                await asyncio.to_thread(print, f"sweep: paused after {self.counts.judged} objects ({PAUSE_ENV})",
                                        file=sys.stderr, flush=True)
                await self._stop.wait()

    async def _judge(self, source: Source, entry: Entry) -> tuple[Verdict, bytes | None]:
        pipeline, policy = self.services.pipeline, self.instance.policy
        if entry.size > policy.limits.max_bytes:
            detail = f"{entry.size} bytes, over limits.max_bytes ({policy.limits.max_bytes}); not read"
            return pipeline.unread(self.instance, "sweep", InvalidKind.TOO_LARGE, detail, url=source.location(entry)), None
        data = await asyncio.to_thread(source.read, entry)
        return await pipeline.judge(data, self.instance, "sweep", url=source.location(entry)), data

    async def _one(self, source: Source, entry: Entry) -> None:
        base = {"source": source.id, "key": entry.key, "location": source.location(entry), "size": entry.size}
        try:
            verdict, data = await self._judge(source, entry)
        except Exception as exc:  # unreadable, vanished, changed under us: judged next time
            self.counts.unjudged += 1
            self.counts.unreadable += 1
            await self._write({"type": "unjudged", **base, "reason": f"read: {exc}", "action": "none"})
            return
        self.counts.judged += 1
        self.counts.judged_bytes += len(data) if data is not None else 0
        record = {**base, "sha256": verdict.sha256, "labels": list(verdict.labels), "scores": verdict.scores,
                  "verdict": str(verdict.action), "decided_by": str(verdict.decided_by)}
        if verdict.flags_media:
            self.counts.flagged += 1
            outcome, done = SweepOutcome.FLAGGED, await self._act(source, entry, data, record)
            await self._write({"type": "flagged", **record})
        elif verdict.decided_by in (DecidedBy.INVALID, DecidedBy.ERROR):
            self.counts.unjudged += 1
            outcome, done = SweepOutcome.UNJUDGED, verdict.decided_by is DecidedBy.INVALID  # errors: retried next time
            detail = verdict.detail or str(verdict.error_kind)
            await self._write({"type": "unjudged", **record, "error_kind": str(verdict.error_kind),
                               "reason": detail, "action": "none"})
        else:
            self.counts.clean += 1
            outcome, done = SweepOutcome.CLEAN, True
        if done:
            action = str(self.options.action) if outcome is SweepOutcome.FLAGGED else "none"
            await self.services.store.mark_swept(SweepMark(source.id, entry.key, entry.version, entry.size,
                                                           self.instance.policy.name, verdict.sha256, str(outcome),
                                                           action, time.time()))

    async def _act(self, source: Source, entry: Entry, data: bytes | None, record: dict[str, Any]) -> bool:
        """Apply the sweep's action to a flagged object; record what was done. False when it failed."""
        action = self.options.action
        try:
            if action is SweepAction.QUARANTINE:
                assert self.quarantine is not None and data is not None
                kept = {k: record[k] for k in ("sha256", "source", "key", "size", "labels")} | {"ts": time.time()}
                record["quarantined_to"] = await asyncio.to_thread(self.quarantine.keep, data, kept)
                await asyncio.to_thread(source.remove, entry)
                self.counts.quarantined += 1
            elif action is SweepAction.DELETE:
                await asyncio.to_thread(source.remove, entry)
                self.counts.deleted += 1
        except Exception as exc:
            log.error("%s of %s failed: %s", action, source.location(entry), exc)
            self.counts.failed += 1
            record["action"] = "failed"
            record["error"] = f"{action}: {exc}"
            return False
        record["action"] = str(action)
        return True


def install_sigint(sweep: Sweep) -> Callable[[], None]:
    """SIGINT (Ctrl-C) interrupts the sweep gracefully; returns the function that restores the old handler."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, sweep.interrupt)

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGINT)

    return restore


# --- the command ------------------------------------------------------------------------------------


def _human(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"sweep of {', '.join(s['sources'])} with policy {s['policy']} ({s['instance']}), action {s['action']}:",
        f"  {s['listed']} objects listed, {s['skipped']} skipped (judged before; {s['skipped_flagged']} of them flagged), "
        f"{s['judged']} judged ({s['bytes'] / 1e6:.1f} MB, {s['objects_per_s']} obj/s, {s['elapsed_s']} s)",
        f"  flagged {s['flagged']} (quarantined {s['quarantined']}, deleted {s['deleted']}, failed {s['failed']}), "
        f"unjudged {s['unjudged']} (invalid, unsupported, unreadable or errors: reported apart, never touched), "
        f"clean {s['clean']}",
    ]
    return "\n".join(lines)


async def command(args: Any) -> int:
    """``fedi-filter sweep``: 0 when nothing was flagged, 1 when something was, 2 on a usage or setup
    error, 130 when interrupted (progress kept: the same command resumes)."""
    def fail(message: str) -> int:
        print(f"sweep: {message}", file=sys.stderr)
        return 2

    config = await asyncio.to_thread(load_config, args.config)
    instance = config.instance_named(args.instance) if args.instance else config.instances[0]
    if instance is None:
        raise ConfigError("", f"no instance named {args.instance!r}")
    action = SweepAction(args.action)
    if action is SweepAction.DELETE and not args.yes:
        return fail("--action delete removes flagged media for good: add --yes to confirm")
    try:
        since = time.time() - parse_duration(args.since) if args.since else None
    except ValueError as exc:
        return fail(f"--since: {exc}")
    destination = args.quarantine or instance.policy.quarantine_dir
    if action is SweepAction.QUARANTINE and not destination:
        return fail(f"--action quarantine needs --quarantine DIR|s3://bucket/prefix or policies.{instance.policy.name}"
                    ".quarantine_dir")
    if args.concurrency < 1:
        return fail("--concurrency must be 1 or more")

    client: Any = None
    if any(src.startswith("s3://") for src in args.sources) or (destination or "").startswith("s3://"):
        client = await asyncio.to_thread(s3_client, args.endpoint_url, args.concurrency + 4)
    quarantine: Quarantine | None = None
    exclude: tuple[Path, ...] = ()
    if action is SweepAction.QUARANTINE and destination:
        if destination.startswith("s3://"):
            quarantine = S3Quarantine(destination, client)
        else:
            quarantine, exclude = DirQuarantine(destination), (Path(destination),)
    sources: list[Source] = []
    for src in args.sources:
        try:
            if src.startswith("s3://"):
                s3 = S3Source(src, client, args.endpoint_url,
                              destination if destination and destination.startswith("s3://") else None)
                await asyncio.to_thread(client.head_bucket, Bucket=s3.bucket)
                sources.append(s3)
            elif await asyncio.to_thread(os.path.isdir, src):
                sources.append(await asyncio.to_thread(DirSource, src, exclude))
            else:
                return fail(f"{src}: no such directory")
        except Exception as exc:
            return fail(f"{src}: {exc}")

    services = build_services(config, persistent=True, fetch=False)
    await services.start()
    try:
        try:
            await services.scorer.wait_ready()
        except Exception as exc:
            return fail(f"classifier not ready ({exc}); nothing swept")
        if not services.store.persistent:
            log.warning("server.audit_db is empty: no progress is kept, a rerun judges everything again")
        pause = os.environ.get(PAUSE_ENV)
        options = SweepOptions(action=action, since=since, concurrency=args.concurrency, rescan=args.rescan,
                               pause_after=int(pause) if pause else None)
        report: IO[str] = (await asyncio.to_thread(open, args.report, "a", encoding="utf-8") if args.report
                           else sys.stdout)
        display: Callable[[Counts], Display] = Bar if sys.stderr.isatty() else LogLines
        sweep = Sweep(services, instance, sources, options, report=report, quarantine=quarantine, display=display)
        restore = install_sigint(sweep)
        stopped: str | None = None
        try:
            counts = await sweep.run()
        except Exception as exc:  # a listing that fails half way (access denied, a vanished mount)
            stopped = f"{type(exc).__name__}: {exc}"
            counts = sweep.counts
        finally:
            restore()
            if report is not sys.stdout:
                await asyncio.to_thread(report.close)
    finally:
        await services.close()
    text = _human(sweep.summary())
    if sweep.interrupted or stopped:
        import shlex

        text += (f"\nsweep: {'stopped by ' + stopped if stopped else 'interrupted'}; progress is saved. "
                 f"Resume with the same command:\n  fedi-filter {shlex.join(sys.argv[1:])}")
    await asyncio.to_thread(print, text, file=sys.stderr, flush=True)
    if stopped:
        return 2
    if sweep.interrupted:
        return 130
    return 1 if counts.flagged else 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``sweep`` subcommand's arguments."""
    p = sub.add_parser("sweep", help="judge stored media (directories, s3://bucket/prefix); exit 1 when any is flagged")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="a directory or s3://bucket/prefix")
    p.add_argument("--config", help="config file (default: $FEDI_FILTER_CONFIG)")
    p.add_argument("--instance", help="instance whose policy applies (default: the first)")
    p.add_argument("--action", choices=[a.value for a in SweepAction], default="report",
                   help="what to do with flagged media (default: report, which changes nothing)")
    p.add_argument("--report", metavar="FILE.jsonl", help="append the JSONL report here (default: stdout)")
    p.add_argument("--endpoint-url", help="S3 endpoint of MinIO, R2, ... (default: AWS)")
    p.add_argument("--quarantine", metavar="DIR|s3://bucket/prefix", help="where --action quarantine moves flagged "
                   "media (default: the policy's quarantine_dir)")
    p.add_argument("--since", metavar="DURATION", help="only objects modified within this long (30m, 24h, 7d, 2w)")
    p.add_argument("--yes", action="store_true", help="confirm --action delete")
    p.add_argument("--concurrency", type=int, default=8, help="objects read and judged at once (default: 8)")
    p.add_argument("--rescan", action="store_true", help="judge objects again even when done before")
    return p
