"""Real loopback servers the reverse-proxy and fetch tests talk to: a media host and a recording backend."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.support.photos import photo


class StaticResolver(AbstractResolver):
    """An /etc/hosts of our own: names -> addresses, as a resolver would answer them."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        ip = self.table[host]
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [ResolveResult(hostname=host, host=ip, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        pass


HITS = web.AppKey("hits", dict)


def media_app() -> web.Application:
    """Serves the benign photos at /<name>.jpg, redirects, large and slow bodies; counts hits."""
    app = web.Application()
    hits: dict[str, int] = {}
    app[HITS] = hits

    async def image(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hits[name] = hits.get(name, 0) + 1
        return web.Response(body=photo(name), content_type="image/jpeg")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(int(request.query.get("mb", "2"))):
            await resp.write(b"\xff\xd8\xff" + b"\0" * (1024 * 1024 - 3))
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(body=photo("coffee"), content_type="image/jpeg")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html><head><title>an article</title></head></html>", content_type="text/html")

    async def disguised(request: web.Request) -> web.Response:
        return web.Response(body=photo(request.match_info["name"]), content_type="text/html")

    async def note(request: web.Request) -> web.Response:
        return web.json_response({"type": "Note", "content": "x" * 100_000}, content_type="application/activity+json")

    async def note_of(request: web.Request) -> web.Response:
        """A remote post whose attachment is the named photo on this host (what a boost points at)."""
        name = request.match_info["name"]
        hits[f"note:{name}"] = hits.get(f"note:{name}", 0) + 1
        base = f"{request.scheme}://{request.host}"
        doc = {"@context": "https://www.w3.org/ns/activitystreams", "id": f"{base}/notes/{name}", "type": "Note",
               "content": "<p>a post</p>", "attachment": [{"type": "Document", "mediaType": "image/jpeg",
                                                          "url": f"{base}/img/{name}.jpg"}]}
        return web.json_response(doc, content_type="application/activity+json")

    async def private(request: web.Request) -> web.Response:
        return web.json_response({"error": "signature required"}, status=401)  # authorized fetch

    async def lying(request: web.Request) -> web.Response:
        """Media with the header our egress uses for its own refusals: a remote host can send any header."""
        return web.Response(body=photo(request.match_info["name"]), content_type="image/jpeg",
                            headers={"X-Fedi-Filter": "ok, already checked"})

    async def gzipped(request: web.Request) -> web.Response:
        import gzip

        return web.Response(body=gzip.compress(photo(request.match_info["name"])),
                            headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})

    app.router.add_get("/notes/{name}", note_of)
    app.router.add_get("/private/{name}", private)
    app.router.add_get("/lying/{name}", lying)
    app.router.add_get("/gzip/{name}", gzipped)
    app.router.add_get("/img/{name}.jpg", image)
    app.router.add_get("/disguised/{name}", disguised)
    app.router.add_get("/note", note)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/page", page)
    return app


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes
    chunked: bool


@dataclass
class Backend:
    """A recording backend: answers every request with 200 JSON (or what a test sets) and keeps what it got."""

    seen: list[Seen] = field(default_factory=list)
    status: int = 200
    verify: Any = None
    """Optional callable(Seen) -> str | None: an HTTP-signature check; its error answers 401."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2 * 1024**3, handler_args={"auto_decompress": False})
        app.router.add_route("*", "/ws", self.websocket)
        app.router.add_route("*", "/{tail:.*}", self.record)
        return app

    async def record(self, request: web.Request) -> web.StreamResponse:
        chunked = request.headers.get("Transfer-Encoding", "").lower() == "chunked"
        if request.path == "/stream-sink":  # large bodies: hash as they arrive, keep nothing
            import hashlib

            h, n = hashlib.sha256(), 0
            async for chunk in request.content.iter_chunked(1 << 20):
                h.update(chunk)
                n += len(chunk)
            self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), b"", chunked))
            return web.json_response({"sha256": h.hexdigest(), "bytes": n})
        body = await request.read()
        seen = Seen(request.method, request.path_qs, dict(request.headers), body, chunked)
        self.seen.append(seen)
        if self.verify is not None:
            problem = self.verify(seen)
            if problem:
                return web.json_response({"error": problem}, status=401)
        if request.path == "/big-download":
            return web.Response(body=b"x" * int(request.query["n"]), content_type="application/octet-stream")
        return web.json_response({"ok": True, "path": request.path_qs, "bytes": len(body)}, status=self.status,
                                 headers={"X-Backend": "yes", "Connection": "keep-alive, X-Secret", "X-Secret": "hop"})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("access-token-abc",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"echo:{msg.data}:{request.headers.get('X-Forwarded-For', '')}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws
