"""Streaming pass-through to an instance's upstream: every request the proxy does not intercept.

Bodies stream in both directions without buffering (chunked or with Content-Length, as they came);
hop-by-hop headers are dropped; ``X-Forwarded-For/Proto/Host`` are set; the original ``Host`` is kept
(backends check it, and HTTP signatures cover it); upstream errors are passed on as they are; websocket
upgrades (Mastodon's streaming API) are bridged frame by frame.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from .config import Instance
from .upstream import Answer, UpstreamError, UpstreamPool, UpstreamUnreachable

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
              "Transfer-Encoding", "Upgrade", "Proxy-Connection")
)
WS_HANDSHAKE = frozenset(h.lower() for h in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                                             "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept"))
CHUNK = 65536
SMALL_ANSWER = CHUNK
"""Upstream answers of at most this many bytes (with a Content-Length) are read whole and sent in one write."""


END_TO_END = frozenset(h.lower() for h in (
    "Content-Type", "Content-Length", "Content-Encoding", "Host", "Authorization", "Signature", "Digest", "Date",
    "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "Cookie", "Accept",
))
"""Headers a client's ``Connection`` header may not strip: the proxy judged the request by them, and the
backend must read it the same way."""


def _drop_hop_by_hop(headers: Any) -> CIMultiDict[str]:
    named = {v.strip().lower() for v in headers.get("Connection", "").split(",") if v.strip()} - END_TO_END
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named)


def upstream_headers(request: web.Request) -> CIMultiDict[str]:
    headers = _drop_hop_by_hop(request.headers)
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    headers.setdefault("X-Forwarded-Host", request.host)
    return headers


def is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in request.headers.get("Connection", "").lower()


def _went_away(request: web.Request) -> None:
    log.info("client %s went away during %s %s%s", request.remote, request.method, request.host, request.path)


async def _slices(body: bytes) -> AsyncIterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(view), CHUNK * 4):
        yield view[start:start + CHUNK * 4]  # type: ignore[misc]


class Forwarder:
    def __init__(self, *, connect_timeout_s: float = 10.0) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._connect_timeout = connect_timeout_s
        self._lean = UpstreamPool(connect_timeout_s=connect_timeout_s)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512, limit_per_host=256, enable_cleanup_closed=True),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        self._lean.close()
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request, instance: Instance, *, body: bytes | None = None,
                      stream: AsyncIterator[bytes] | None = None) -> web.StreamResponse:
        """Send the request upstream (streaming its body, or ``stream``, or ``body`` when given) and stream
        back the answer."""
        assert self._session is not None
        if is_websocket(request) and body is None:
            return await self._websocket(request, instance)
        headers = upstream_headers(request)
        if (request.method == "GET" and body is None and stream is None and not request.body_exists
                and UpstreamPool.handles(instance.upstream)):
            return await self._lean_get(request, instance, headers)
        url = instance.upstream + request.raw_path
        data: io.BytesIO | AsyncIterator[bytes] | None
        if body is not None:
            data = _slices(body)  # small writes: the transport never buffers a copy of a large body
            headers["Content-Length"] = str(len(body))
        elif stream is not None:
            data = stream
        elif request.body_exists:
            data = request.content.iter_chunked(CHUNK)
        else:
            data = None
        try:
            upstream = await self._session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False, compress=None,
            )
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("upstream %s unreachable for %s %s: %s", instance.upstream, request.method, request.path, exc)
            return web.json_response({"error": f"upstream unreachable: {exc.__class__.__name__}"}, status=502)
        return await self._relay(request, instance, upstream, upstream.content.iter_chunked(CHUNK), cut=())

    async def _lean_get(self, request: web.Request, instance: Instance, headers: CIMultiDict[str]) -> web.StreamResponse:
        """A bodiless GET (most of a server's traffic) through the lean client; the answer is relayed as
        :meth:`forward` relays aiohttp's."""
        headers.setdefault("Accept", "*/*")  # as aiohttp's client sends it
        try:
            upstream = await self._lean.get(instance.upstream, request.raw_path, headers)
        except UpstreamUnreachable as exc:
            log.warning("upstream %s unreachable for GET %s: %s", instance.upstream, request.path, exc)
            return web.json_response({"error": "upstream unreachable"}, status=502)
        except UpstreamError as exc:
            log.warning("upstream %s gave no answer we can relay to GET %s: %s", instance.upstream, request.path, exc)
            return web.json_response({"error": "bad answer from upstream"}, status=502)
        return await self._relay(request, instance, upstream, upstream.iter_body(), cut=(UpstreamError,))

    async def _relay(self, request: web.Request, instance: Instance, upstream: aiohttp.ClientResponse | Answer,
                     chunks: AsyncIterator[bytes], *, cut: tuple[type[Exception], ...]) -> web.StreamResponse:
        """Relay an upstream's answer (aiohttp's or the lean client's) and release it: a small one in one
        write (head and body together: most API answers are small), a larger one streamed. ``cut``: the
        errors that mean the upstream ended its answer short; before the head went out that is a 502, after
        it the client's connection is closed, so a cut answer never looks complete. (aiohttp's own errors
        are left to aiohttp, which closes the connection too.)"""
        response: web.StreamResponse | None = None
        try:
            headers = _drop_hop_by_hop(upstream.headers)
            length = upstream.content_length
            if (length is not None and length <= SMALL_ANSWER and request.method != "HEAD"
                    and upstream.status >= 200 and upstream.status not in (204, 304)):
                try:
                    body = await upstream.read()
                except cut as exc:
                    log.warning("upstream %s cut its answer to %s %s: %s", instance.upstream, request.method, request.path, exc)
                    return web.json_response({"error": "upstream answer cut short"}, status=502)
                return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            if "Content-Length" not in headers and request.version >= (1, 1):
                response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                async for chunk in chunks:
                    await response.write(chunk)
            except cut as exc:
                log.warning("upstream %s cut its answer to %s %s: %s", instance.upstream, request.method, request.path, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        except ConnectionResetError:
            if response is None:
                raise
            # the client went away mid-answer (a closed tab, a timeout): routine, one line, no traceback
            _went_away(request)
            return response
        except asyncio.CancelledError:
            if request.transport is None or request.transport.is_closing():  # aiohttp cancels a gone client's handler
                _went_away(request)
            raise
        finally:
            upstream.release()

    async def _websocket(self, request: web.Request, instance: Instance) -> web.StreamResponse:
        assert self._session is not None
        url = instance.upstream + request.raw_path
        headers = CIMultiDict((k, v) for k, v in upstream_headers(request).items() if k.lower() not in WS_HANDSHAKE)
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        try:
            upstream = await self._session.ws_connect(url, headers=headers, protocols=protocols, autoping=False)
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status, text=exc.message)
        except (aiohttp.ClientError, OSError) as exc:
            return web.json_response({"error": f"upstream unreachable: {exc.__class__.__name__}"}, status=502)
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), autoping=False)
        await client.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type == WSMsgType.PING:
                    await dst.ping(msg.data)
                elif msg.type == WSMsgType.PONG:
                    await dst.pong(msg.data)
                else:
                    break

        tasks = [asyncio.ensure_future(pump(client, upstream)), asyncio.ensure_future(pump(upstream, client))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
            await client.close()
        return client
