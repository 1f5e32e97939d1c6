"""Pass-through end to end: real clients -> fedi-filter serve -> a recording backend, all on loopback.

Everything an instance receives that carries no media streams through untouched: bodies both ways,
hop-by-hop headers dropped, X-Forwarded-* set, websockets bridged, upstream errors passed on.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import socket
import struct

from aiohttp.test_utils import TestServer

from proxy.server import SERVICES, access_logger
from tests.support.configs import FACES, make_config
from tests.support.servers import make_env, start


async def test_passthrough_keeps_requests_and_answers(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    resp = await env.request("mastodon", "GET", "/api/v1/timelines/home?limit=5&max_id=9",
                             headers={"Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic x", "Authorization": "Bearer t"})
    assert resp.status == 200 and resp.headers["X-Backend"] == "yes"
    assert "X-Secret" not in resp.headers  # named in the backend's Connection header: hop-by-hop
    seen = env.backend.seen[-1]
    assert seen.path_qs == "/api/v1/timelines/home?limit=5&max_id=9"
    assert seen.headers["Host"] == "masto.test" and seen.headers["Authorization"] == "Bearer t"
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1" and seen.headers["X-Forwarded-Host"] == "masto.test"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert "Keep-Alive" not in seen.headers and "Proxy-Authorization" not in seen.headers
    env.backend.status = 503
    resp = await env.request("mastodon", "DELETE", "/api/v1/statuses/1")
    assert resp.status == 503 and (await resp.json())["path"] == "/api/v1/statuses/1"


async def test_bodies_stream_through_byte_for_byte(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    payload = bytes(range(256)) * 20_000  # 5 MB
    resp = await env.request("mastodon", "POST", "/api/v1/statuses", data=io.BytesIO(payload),
                             headers={"Content-Length": str(len(payload))})
    assert resp.status == 200
    seen = env.backend.seen[-1]
    assert seen.body == payload and not seen.chunked and seen.headers["Content-Length"] == str(len(payload))

    async def chunks():
        for i in range(10):
            yield bytes([i]) * 100_000

    resp = await env.request("mastodon", "PUT", "/api/v1/whatever", data=chunks())
    seen = env.backend.seen[-1]
    assert seen.chunked and seen.body == b"".join(bytes([i]) * 100_000 for i in range(10))
    resp = await env.request("mastodon", "GET", "/big-download?n=3000000")
    assert resp.status == 200 and await resp.read() == b"x" * 3_000_000


async def test_head_and_bodiless_answers_pass(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    resp = await env.request("mastodon", "HEAD", "/api/v1/instance")
    assert resp.status == 200 and await resp.read() == b"" and env.backend.seen[-1].method == "HEAD"
    env.backend.status = 304
    resp = await env.request("mastodon", "GET", "/packs/app.js", headers={"If-None-Match": '"abc"'})
    assert resp.status == 304 and env.backend.seen[-1].headers["If-None-Match"] == '"abc"'
    env.backend.status = 200
    resp = await env.request("mastodon", "POST", "/api/v1/statuses", data=b"x" * 70_000, headers={"Expect": "100-continue"})
    assert resp.status == 200 and env.backend.seen[-1].body == b"x" * 70_000


async def test_websocket_upgrade_is_bridged(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    async with env.client.ws_connect("/ws", headers={"Host": "masto.test"}, protocols=("access-token-abc",)) as ws:
        assert ws.protocol == "access-token-abc"
        await ws.send_str("hello")
        assert await ws.receive_str() == "echo:hello:127.0.0.1"
        await ws.send_bytes(b"\x01\x02\x03")
        assert await ws.receive_bytes() == b"\x03\x02\x01"


async def test_unreachable_upstream_is_a_502(aiohttp_client) -> None:
    cfg = make_config(FACES, instances=[{"name": "m", "kind": "mastodon", "hosts": ["masto.test"],
                                         "upstream": "http://127.0.0.1:9", "policy": "main"}])
    client = await start(aiohttp_client, cfg)
    resp = await client.get("/api/v1/instance", headers={"Host": "masto.test"})
    assert resp.status == 502


async def test_api_answers_only_on_unclaimed_hosts(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    assert (await env.client.get("/healthz")).status == 200
    resp = await env.request("mastodon", "GET", "/healthz")
    assert resp.status == 200 and (await resp.json())["path"] == "/healthz"  # the backend's, not ours




async def test_streaming_large_body_through_the_proxy(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    h = hashlib.sha256()

    async def gen():
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(64):
            h.update(block)
            yield block

    resp = await env.request("mastodon", "POST", "/stream-sink", data=gen())
    body = await resp.json()
    assert body == {"sha256": h.hexdigest(), "bytes": 64 * 1024 * 1024}



async def test_a_client_that_goes_away_mid_answer_is_one_log_line(aiohttp_client, aiohttp_server, caplog) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection("127.0.0.1", env.client.port)
    writer.write(b"GET /big-download?n=200000000 HTTP/1.1\r\nHost: masto.test\r\n\r\n")
    await writer.drain()
    assert (await reader.readexactly(1000)).startswith(b"HTTP/1.1 200")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not a clean close
    writer.close()
    for _ in range(600):
        if any("went away" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and "/big-download" in gone[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


async def test_proxied_requests_are_access_logged_only_when_asked(aiohttp_client, aiohttp_server, caplog) -> None:
    """The API's own requests are always access-logged; reverse-proxied ones with server.access_log (or
    serve --access-log). A claimed Host is proxied whatever the path, even one of the API's."""
    caplog.set_level(logging.INFO, logger="test.proxy.access")
    for proxied in (False, True):
        async def client(app, proxied=proxied):
            server = TestServer(app)
            await server.start_server(access_log_class=access_logger(app[SERVICES].config, proxied=proxied),
                                      access_log=logging.getLogger("test.proxy.access"))
            return await aiohttp_client(server)

        env = await make_env(client, aiohttp_server)
        caplog.clear()
        resp = await env.request("mastodon", "GET", "/api/v1/timelines/public")
        assert resp.status == 200 and (await resp.json())["path"] == "/api/v1/timelines/public"
        resp = await env.request("mastodon", "GET", "/healthz")
        assert (await resp.json())["path"] == "/healthz"  # the backend's, not ours
        resp = await env.client.get("/healthz")
        assert resp.status == 200
        lines: list[str] = []
        for _ in range(200):
            lines = [r.getMessage() for r in caplog.records if r.name == "test.proxy.access"]
            if len(lines) >= (3 if proxied else 1):
                break
            await asyncio.sleep(0.05)
        assert len([line for line in lines if "/timelines/public" in line]) == (1 if proxied else 0), lines
        assert len([line for line in lines if "/healthz" in line]) == (2 if proxied else 1), lines
