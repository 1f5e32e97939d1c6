"""The lean upstream client for bodiless GETs (proxy/upstream.py), end to end through `serve`.

The upstreams here are raw asyncio servers on loopback that write exact bytes, so every framing an
HTTP/1.1 answer can have (length, chunked, end of connection, 1xx first) and every way one can go wrong
(cut short, malformed, ambiguous, a kept-alive connection closed under the proxy) is played for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from tests.support.configs import make_config
from tests.support.servers import start

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""Given a request head, writes an answer; returns whether to keep the connection for another request."""


class RawUpstream:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                if not await self.answer(head, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def proxy(aiohttp_client, upstream: str):
    config = make_config(instances=[{"name": "social", "kind": "mastodon", "hosts": ["social.test"],
                                     "upstream": upstream, "policy": "main"}])
    return await start(aiohttp_client, config, ready=False)


async def get(client, path: str = "/api/v1/timelines/public") -> aiohttp.ClientResponse:
    return await client.get(path, headers={"Host": "social.test"})


def fixed(raw: bytes, keep: bool = True) -> Answer:
    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep
    return answer


async def test_kept_alive_connections_are_reused_and_the_request_arrives_as_sent(aiohttp_client) -> None:
    up = RawUpstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"))
    async with up as url:
        client = await proxy(aiohttp_client, url)
        for _ in range(5):
            resp = await client.get("/api/v1/timelines/public?limit=5", headers={"Host": "social.test", "Authorization": "Bearer t",
                                                                                  "Keep-Alive": "timeout=5"})
            assert resp.status == 200 and await resp.json() == {"ok": True}
        assert up.connections == 1
        head = up.heads[-1].decode()
        assert head.startswith("GET /api/v1/timelines/public?limit=5 HTTP/1.1\r\n")
        assert "Host: social.test\r\n" in head and "Authorization: Bearer t\r\n" in head
        assert "X-Forwarded-For: 127.0.0.1\r\n" in head and "Keep-Alive" not in head


@pytest.mark.parametrize("framing", ["chunked", "close-delimited", "length"])
async def test_every_framing_is_relayed_whole(aiohttp_client, framing: str) -> None:
    body = bytes(range(256)) * 4096 * 3  # 3 MiB: streamed, with back-pressure, not held
    if framing == "chunked":
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
            b"%x\r\n%s\r\n" % (len(body[i:i + 100_000]), body[i:i + 100_000]) for i in range(0, len(body), 100_000)) + b"0\r\n\r\n"
    elif framing == "close-delimited":
        raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    else:
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    up = RawUpstream(fixed(raw, keep=framing != "close-delimited"))
    async with up as url:
        client = await proxy(aiohttp_client, url)
        for _ in range(2):
            resp = await get(client)
            assert resp.status == 200
            assert hashlib.sha256(await resp.read()).hexdigest() == hashlib.sha256(body).hexdigest()
        assert up.connections == (2 if framing == "close-delimited" else 1)


async def test_informational_answers_are_skipped_and_the_reason_kept(aiohttp_client) -> None:
    up = RawUpstream(fixed(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                           b"HTTP/1.1 404 Nothing Here\r\nContent-Length: 4\r\n\r\nnope"))
    async with up as url:
        client = await proxy(aiohttp_client, url)
        resp = await get(client)
        assert (resp.status, resp.reason, await resp.read()) == (404, "Nothing Here", b"nope")
        assert "Link" not in resp.headers


async def test_a_kept_alive_connection_the_upstream_closed_is_retried_once_on_a_fresh_one(aiohttp_client) -> None:
    # each connection answers one request and closes at the next one unanswered (its idle timeout firing as
    # the request arrives): the proxy only learns it when it has already written the request there
    served: dict[int, int] = {}

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        key = id(writer)
        served[key] = served.get(key, 0) + 1
        if served[key] > 1:
            return False
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    up = RawUpstream(answer)
    async with up as url:
        client = await proxy(aiohttp_client, url)
        for _ in range(3):
            resp = await get(client)
            assert resp.status == 200 and await resp.read() == b"ok"
        assert up.connections == 3 and len(up.heads) == 5  # two requests written on a dead connection, both retried


@pytest.mark.parametrize("raw", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",  # two lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",  # both framings
    b"HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\nContent-Length: 2\r\n\r\nok",  # a bare CR in a header
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # cut before the length
    b"",  # closed without a word
], ids=["garbage", "two-lengths", "length-and-chunked", "bare-cr", "cut", "silent"])
async def test_an_answer_llhttp_refuses_or_that_is_cut_is_a_502(aiohttp_client, raw: bytes, caplog) -> None:
    up = RawUpstream(fixed(raw, keep=False))
    async with up as url:
        client = await proxy(aiohttp_client, url)
        resp = await get(client)
        assert resp.status == 502 and (await resp.json())["error"] in ("bad answer from upstream", "upstream answer cut short")
    assert any(url in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)  # one line says why


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_an_answer_cut_after_its_head_went_out_reaches_the_client_cut(aiohttp_client, framing: str) -> None:
    big = b"x" * 1_000_000
    if framing == "length":
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + big
    else:
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(big), big)
    up = RawUpstream(fixed(raw, keep=False))
    async with up as url:
        client = await proxy(aiohttp_client, url)
        resp = await get(client)
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # never a complete-looking answer
        resp = await get(client)  # and the proxy keeps serving
        assert resp.status == 200


async def test_an_unreachable_upstream_is_a_502(aiohttp_client) -> None:
    up = RawUpstream(fixed(b""))
    async with up as url:
        pass  # closed: nothing listens there any more
    client = await proxy(aiohttp_client, url)
    resp = await get(client)
    assert resp.status == 502 and "unreachable" in (await resp.json())["error"]


async def test_connections_to_one_upstream_are_capped_and_the_rest_wait() -> None:
    from multidict import CIMultiDict

    from proxy.upstream import UpstreamPool

    open_now = peak = 0

    async def slow(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        await asyncio.sleep(0.2)
        open_now -= 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    up = RawUpstream(slow)
    async with up as url:
        pool = UpstreamPool(max_open=2)

        async def one() -> bytes:
            answer = await pool.get(url, "/", CIMultiDict(Host="social.test"))
            try:
                return await answer.read()
            finally:
                answer.release()

        assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
        pool.close()
    assert peak == 2 and up.connections == 2


# --- an attacker's review (2026-11-28): answers must never cross from one asker to another -------------


async def raw_exchange(port: int, head: bytes, timeout: float = 3.0) -> bytes:
    """Everything a raw client reads for ``head`` until the proxy goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout if not data else 0.3):
            data += chunk
    except TimeoutError:
        pass
    writer.close()
    return data


class Production:
    """serve as `fedi-filter serve` runs it (aiohttp's run_app: a client that goes away does not cancel its
    handler; the test client's server does, which hid the first finding)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    async def __aenter__(self) -> int:
        from aiohttp import web

        from proxy.server import build_app

        config = make_config(instances=[{"name": "social", "kind": "mastodon", "hosts": ["social.test"],
                                         "upstream": self.upstream, "policy": "main"}])
        self.runner = web.AppRunner(build_app(config), handler_cancellation=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_the_rest_of_a_gone_clients_answer_never_reaches_the_next_client() -> None:
    """Client A goes away mid-answer; the upstream then sends the rest (A's private data) in several
    chunks. None of it may be handed to client B on a reused connection."""
    rest = 6
    go = asyncio.Event()
    asked = 0

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonlocal asked
        asked += 1
        if asked == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
            await go.wait()
            writer.write(b"6\r\nFIRST!\r\n%x\r\n%s\r\n3\r\nEND\r\n0\r\n\r\n" % (rest, b"S" * rest))
            await writer.drain()
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async with RawUpstream(answer) as url, Production(url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /private HTTP/1.1\r\nHost: social.test\r\nAuthorization: Bearer alice\r\n\r\n")
        await reader.readuntil(b"abc")
        writer.transport.abort()  # client A goes away
        await asyncio.sleep(0.2)
        go.set()
        await asyncio.sleep(0.3)
        data = await raw_exchange(port, b"GET /public HTTP/1.1\r\nHost: social.test\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nok") and b"SSS" not in data and b"END" not in data


@pytest.mark.parametrize("when", ["same-packet", "while-idle"])
async def test_an_answer_nobody_asked_for_is_never_relayed(aiohttp_client, when: str) -> None:
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nSet-Cookie: x=evil\r\n\r\nPOISON"

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(first + extra if when == "same-packet" else first)
        await writer.drain()
        if when == "while-idle":
            await asyncio.sleep(0.1)
            writer.write(extra)
            await writer.drain()
        return True

    up = RawUpstream(answer)
    async with up as url:
        client = await proxy(aiohttp_client, url)
        for _ in range(3):
            resp = await get(client)
            assert resp.status == 200 and await resp.read() == b"ok" and "Set-Cookie" not in resp.headers
            await asyncio.sleep(0.2)
        assert up.connections == 3  # each connection that carried an extra answer was closed, not reused


async def test_trailer_fields_are_not_answer_headers(aiohttp_client) -> None:
    up = RawUpstream(fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
                           b"Set-Cookie: session=attacker\r\nLocation: http://evil/\r\n\r\n"))
    async with up as url:
        client = await proxy(aiohttp_client, url)
        resp = await get(client)
        assert await resp.read() == b"ok" and "Set-Cookie" not in resp.headers and "Location" not in resp.headers


async def test_the_lean_path_sends_what_aiohttps_client_sent(aiohttp_client) -> None:
    """Accept: */* when the client sent none; header values without their trailing blanks."""
    up = RawUpstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2 \r\nX-Padded: v \t\r\n\r\nok"))
    async with up as url:
        client = await proxy(aiohttp_client, url)
        resp = await client.get("/", headers={"Host": "social.test"}, skip_auto_headers=["Accept"])
        assert await resp.read() == b"ok" and resp.headers["X-Padded"] == "v"
        assert b"\r\nAccept: */*\r\n" in up.heads[-1]


async def test_an_answer_released_before_it_was_read_whole_closes_its_connection() -> None:
    """Complete but not read to its end (its asker went away), with reading paused past the high-water
    mark: never pooled, so the next asker neither reads its leftovers nor waits on a paused connection."""
    from multidict import CIMultiDict

    from proxy.upstream import HIGH_WATER, UpstreamPool

    big = b"a" * (HIGH_WATER + 100_000)
    up = RawUpstream(fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
                           b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)))
    async with up as url:
        pool = UpstreamPool()
        first = await pool.get(url, "/", CIMultiDict(Host="social.test"))
        assert await first.iter_body().__anext__() == b"abc"
        await asyncio.sleep(0.3)  # the rest arrives (or fills the buffer) while nobody reads
        first.release()
        second = await asyncio.wait_for(pool.get(url, "/", CIMultiDict(Host="social.test")), 5)
        body = await asyncio.wait_for(second.read(), 5)
        second.release()
        pool.close()
    assert body == b"abc" + big and up.connections == 2


# --- a second attacker's review (2026-11-28) ---------------------------------------------------------------


async def test_a_request_the_upstream_dies_on_is_sent_at_most_twice() -> None:
    """A path the upstream answers by closing the connection (a crashing worker) with 64 idle connections in
    the pool: one client GET is written once on a pooled connection and once on a fresh one, not on each."""
    from multidict import CIMultiDict

    from proxy.upstream import UpstreamError, UpstreamPool

    deaths = 0

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonlocal deaths
        if b"/death" in head:
            deaths += 1
            return False
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async with RawUpstream(answer) as url:
        pool = UpstreamPool()

        async def one(path: str) -> None:
            answer = await pool.get(url, path, CIMultiDict(Host="social.test"))
            await answer.read()
            answer.release()

        await asyncio.gather(*(one("/warm") for _ in range(64)))
        with pytest.raises(UpstreamError):
            await pool.get(url, "/death", CIMultiDict(Host="social.test"))
        pool.close()
    assert deaths == 2


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",  # written at accept, before the request
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nXXXX",
], ids=["answer-before-the-request", "upgrade"])
async def test_answers_the_proxy_cannot_relay_are_a_clean_502(raw: bytes, caplog) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not raw.startswith(b"HTTP/1.1 503"):
                await reader.readuntil(b"\r\n\r\n")
            writer.write(raw)
            await writer.drain()
            if not raw.startswith(b"HTTP/1.1 503"):
                await reader.read()  # until the proxy hangs up
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with Production(url) as port:
            await asyncio.sleep(0.1)
            data = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: social.test\r\n\r\n")
    finally:
        server.close()
    assert data.startswith(b"HTTP/1.1 502"), data[:200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


async def test_a_reason_phrase_split_across_packets_is_kept_whole(aiohttp_client) -> None:
    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 404 Not")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b" Found Here\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True

    async with RawUpstream(answer) as url:
        client = await proxy(aiohttp_client, url)
        resp = await get(client)
        assert (resp.status, resp.reason) == (404, "Not Found Here")


async def test_a_transfer_coding_without_chunked_ends_with_the_connection(aiohttp_client) -> None:
    async with RawUpstream(fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nBODYBODY", keep=False)) as url:
        client = await proxy(aiohttp_client, url)
        resp = await get(client)
        assert resp.status == 200 and await resp.read() == b"BODYBODY"
