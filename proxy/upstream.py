"""A lean HTTP/1.1 client for the hot path of pass-through: bodiless ``GET`` requests to a plain-HTTP upstream.

aiohttp's client costs ~130 us of CPU per small request on the reference machine, about half of what
``serve`` spends on a proxied GET; this one writes the request head in one call and parses the answer
with llhttp (through ``httptools``, the same parser family aiohttp and Node use), ~45 us
(``bench/bench_upstream_client.py``). Everything else (requests with a body, ``HEAD``, websocket
upgrades, ``https`` upstreams, upstream URLs with credentials) keeps aiohttp's client.

Framing is llhttp's, strict: a malformed answer closes the connection and is a 502 (or a cut response when
the head already went out); trailer fields are dropped. A connection goes back to the pool only after a
complete message the upstream did not ask to close, read to its end by its asker; an answer nobody asked
for closes the connection. A request written on a kept-alive connection the upstream had already closed,
before any byte of an answer came back, is sent once more, on a fresh connection, and never more than
that (GET is idempotent; aiohttp's client does the same).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024
"""Body bytes buffered from the upstream before reading pauses (the client reads slower than the upstream
writes: back-pressure, not memory)."""
MAX_IDLE = 64
"""Kept-alive connections per upstream."""
MAX_OPEN = 256
"""Connections per upstream at once (aiohttp's client had the same per-host limit): more requests wait."""


class UpstreamError(Exception):
    """The upstream answered something llhttp refuses, or closed before its answer was whole."""


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream (refused, timed out, name unknown)."""


class _Connection(asyncio.Protocol):
    """One connection; one request at a time. ``headers`` resolves when the answer's head is parsed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.in_head = False
        self.closed = False
        self.error: Exception | None = None
        self.got_bytes = False
        self.paused = False
        self._wake: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamError(f"malformed answer: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            if self.head is not None and self.head.done() and self._close_delimited():
                self.on_message_complete()  # an answer framed by the end of the connection
            else:
                self._fail(UpstreamError("connection closed before the answer was complete"))
        self._notify()

    # -- llhttp callbacks --
    def on_message_begin(self) -> None:
        if self.head is None or self.complete:
            # an answer nobody asked for (pipelined after the one awaited, or on an idle connection):
            # never handed to anyone; the parser error closes the connection
            raise UpstreamError("an answer that was not asked for")
        self.in_head = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("utf-8", "surrogateescape")  # llhttp may hand the reason in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # trailer fields (after a chunked body) are dropped, as aiohttp's client drops them
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.status = self.parser.get_status_code()
        if self.status < 200:  # 1xx (103 Early Hints): informational, the answer follows
            self.headers, self.reason = [], ""
            return
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._notify()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.keep_alive = self.parser.should_keep_alive()  # read now: llhttp resets after the message
        self.complete = True
        self._notify()

    # -- helpers --
    def _close_delimited(self) -> bool:
        """No length and no final ``chunked`` coding: the answer ends with the connection (RFC 9112 6.3)."""
        if any(n.lower() == b"content-length" for n, _ in self.headers):
            return False
        codings = [c.strip().lower() for n, v in self.headers if n.lower() == b"transfer-encoding"
                   for c in v.split(b",") if c.strip()]
        return not codings or codings[-1] != b"chunked"

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    @property
    def reusable(self) -> bool:
        """A whole answer the upstream let us keep, read to its end by its asker (a client that went away
        mid-answer leaves chunks behind: that connection is closed, never handed to the next asker)."""
        return (self.complete and self.keep_alive and not self.closed and self.error is None
                and not self.chunks and not self.paused)

    async def send(self, head: bytes) -> None:
        assert self.transport is not None
        self.head = asyncio.get_running_loop().create_future()
        # an asker cancelled while it waited (its client went away) leaves the failure to nobody: not an error
        self.head.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.status, self.reason, self.headers = 0, "", []
        self.complete = self.keep_alive = self.got_bytes = self.in_head = False
        self.chunks.clear()
        self.buffered = 0
        if self.closed or self.transport.is_closing():  # uvloop raises on a closed transport; asyncio drops the write
            raise UpstreamError("connection closed before the request was written")
        self.transport.write(head)
        await self.head

    async def body(self) -> AsyncIterator[bytes]:
        """The answer's body as it arrives; raises UpstreamError when it is cut short."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= HIGH_WATER // 4 and self.transport is not None:
                    self.transport.resume_reading()
                    self.paused = False
                yield chunk
                continue
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
            self._wake = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Answer:
    """An upstream's answer: status, headers (decoded as aiohttp's client decodes them), body stream."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: _Connection) -> None:
        self._pool: UpstreamPool | None = pool
        self._key, self._conn = key, conn
        self.status, self.reason = conn.status, conn.reason or None
        self.headers: CIMultiDict[str] = CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape").strip(" \t"))
            for n, v in conn.headers)
        length = self.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    def iter_body(self) -> AsyncIterator[bytes]:
        return self._conn.body()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self._conn.body()])

    def release(self) -> None:
        """Back to the pool when the answer was read whole and may be kept; closed otherwise. Once."""
        if self._pool is not None:
            self._pool._give_back(self._key, self._conn)
            self._pool = None


@functools.lru_cache(maxsize=256)
def _target(upstream: str) -> tuple[tuple[str, int], str]:
    parts = urlsplit(upstream)
    return (parts.hostname or "", parts.port or 80), parts.path


class UpstreamPool:
    def __init__(self, *, connect_timeout_s: float = 10.0, max_idle: int = MAX_IDLE, max_open: int = MAX_OPEN) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._connect_timeout = connect_timeout_s
        self._max_idle = max_idle
        self._max_open = max_open

    @staticmethod
    def handles(upstream: str) -> bool:
        """Plain HTTP without credentials in the URL (aiohttp's client turns those into Basic auth)."""
        return upstream.startswith("http://") and "@" not in upstream

    async def get(self, upstream: str, raw_path: str, headers: CIMultiDict[str]) -> Answer:
        """Send ``GET raw_path`` with ``headers`` (written as given: the caller dropped hop-by-hop ones)."""
        key, prefix = _target(upstream)
        lines = [f"GET {prefix}{raw_path} HTTP/1.1\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        slots = self._open.get(key)
        if slots is None:
            slots = self._open[key] = asyncio.Semaphore(self._max_open)
        await slots.acquire()
        try:
            retried = False
            while True:
                conn, reused = await self._connection(key, fresh=retried)
                try:
                    await conn.send(head)
                except UpstreamError:
                    conn.close()
                    if reused and not conn.got_bytes and not retried:
                        retried = True
                        continue  # the upstream had closed this kept-alive connection: once more, on a fresh one
                    raise
                except BaseException:
                    conn.close()
                    raise
                return Answer(self, key, conn)
        except BaseException:
            slots.release()
            raise

    async def _connection(self, key: tuple[str, int], fresh: bool = False) -> tuple[_Connection, bool]:
        idle = None if fresh else self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Connection, key[0], key[1]), self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnreachable(f"{exc.__class__.__name__}: {exc}") from exc
        return conn, False

    def _give_back(self, key: tuple[str, int], conn: _Connection) -> None:
        self._open[key].release()
        idle = self._idle.setdefault(key, [])
        if conn.reusable and len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
