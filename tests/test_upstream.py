"""The lean upstream client for bodiless GETs (proxy/upstream.py), end to end through `serve`.

The upstreams here are raw asyncio servers on loopback that write exact bytes, so every framing an
HTTP/1.1 answer can have (length, chunked, end of connection, 1xx first) and every way one can go wrong
(cut short, malformed, ambiguous, a kept-alive connection closed under the proxy) is played for real.
"""

from __future__ import annotations

import asyncio
import hashlib
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
async def test_an_answer_llhttp_refuses_or_that_is_cut_is_a_502(aiohttp_client, raw: bytes) -> None:
    up = RawUpstream(fixed(raw, keep=False))
    async with up as url:
        client = await proxy(aiohttp_client, url)
        resp = await get(client)
        assert resp.status == 502, await resp.read()


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
