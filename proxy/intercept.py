"""The reverse proxy's interception points, gated by content rather than by route.

Every request to a host an instance claims goes through :func:`handle`:

1. **inbox**: a body with an ActivityStreams / JSON-LD type (or JSON with an ActivityStreams
   ``@context``), or a POST to an inbox path: its media URLs are fetched and judged; reject (403),
   drop (202), strip (forward, deny downstream) or pass. Never a 5xx of ours: Lemmy retries those forever.
2. **ingest**: a route whose parameter is a URL the backend will fetch (pict-rs ``/image/download?url=``,
   Misskey ``upload-from-url``): the URL is fetched SSRF-safe and judged first.
3. **the content gate**: any other request whose body may carry media (multipart, JSON, forms, raw media,
   any ``Content-Encoding``) is read whole (bounded, admitted against ``server.max_inflight_bytes``) and
   every would-be file in it is judged (:func:`proxy.content.find_media`), whatever the path or method.
   A body we cannot read exactly as the backend would is refused, never forwarded.
4. everything else streams through untouched.

Routes (matched on every spelling the backends' routers accept, :mod:`proxy.paths`) only tell the
refusal shape, which parameters are URLs, which paths are inboxes, and which uploads take several files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import paths
from .activity import extract, is_activity
from .admission import ByteBudget, OverBudget
from .backends import Interception, Route
from .config import Config, Instance
from .content import (
    MAX_PIECES,
    Piece,
    Unreadable,
    data_uris,
    decode_content,
    find_media,
    is_json_type,
    load_json,
    media_type_of,
    query_may_carry_media,
    streamable,
)
from .fetch import FetchError
from .media import sniff
from .metrics import Metrics
from .multipart import parse
from .passthrough import Forwarder
from .pipeline import Pipeline
from .verdict import Action, ErrorKind, Fallback, InboxAction, Verdict

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
ROUTE_LABEL = web.RequestKey("ffp_route", str)
"""The metrics label of a reverse-proxied request: passthrough | upload | ingest | inbox."""
ACTIVITY_TYPES = ("application/activity+json", "application/ld+json")
MAX_OBJECTS = 4
"""Objects named only by URL (boosts) fetched per delivery; more than this: the delivery fails closed."""
SNIFF_BYTES = 64


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body is over the limit of {limit} bytes")
        self.limit = limit


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read a request body, refusing (without reading it all) one over ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Context:
    config: Config
    pipeline: Pipeline
    forwarder: Forwarder
    metrics: Metrics
    budget: ByteBudget = field(init=False)
    """Bytes of request bodies held at once (``server.max_inflight_bytes``)."""
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.budget = ByteBudget(self.config.server.max_inflight_bytes)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a judgement past the request that started it; the reference is kept until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        self.metrics.background.inc()

        def done(t: asyncio.Task[Any]) -> None:
            self.background.discard(t)
            self.metrics.background.dec()
            if not t.cancelled() and t.exception() is not None:
                log.error("background judgement failed: %r", t.exception())

        task.add_done_callback(done)

    async def close(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)


class BodyTimeout(Exception):
    """The body did not arrive within ``server.body_timeout_ms``."""


CONTEXT = web.AppKey("context", Context)
"""The reverse proxy's context on the serve app."""


@asynccontextmanager
async def held_body(ctx: Context, request: web.Request, deadline: float, head: bytes = b"") -> AsyncIterator[bytes]:
    """The whole body (``head`` already read), its bytes taken from the byte budget: an announced
    ``Content-Length`` is taken whole before reading (so bodies admitted together can all finish: taking
    bytes as they arrive would let every body hold a part and wait forever for the rest), a chunked body
    as its bytes arrive. A sender that stalls for ``server.body_idle_ms`` or takes longer than
    ``server.body_timeout_ms`` is cut (408), so idle connections cannot hold the budget. Raises
    BodyTooLarge past ``server.max_body_bytes``, OverBudget when no room comes before ``deadline`` (with
    ``exc.read``: the bytes read so far), BodyTimeout."""
    server = ctx.config.server
    limit = server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    buf = bytearray()
    taken = 0
    try:
        if request.content_length is not None:
            await ctx.budget.acquire(request.content_length, deadline)
            taken = request.content_length
            try:
                async with asyncio.timeout(server.body_timeout_ms / 1000):
                    announced = await _read_announced(request, head, taken, server.body_idle_ms / 1000)
            except TimeoutError:
                raise BodyTimeout(f"the body did not arrive within {server.body_timeout_ms} ms") from None
            yield announced  # outside the timeout: judging and forwarding have budgets of their own
            return
        try:
            async with asyncio.timeout(server.body_timeout_ms / 1000):
                chunk = head
                while True:
                    if chunk:
                        if len(buf) + len(chunk) > limit:
                            raise BodyTooLarge(limit)
                        if len(buf) + len(chunk) > taken:
                            try:
                                await ctx.budget.acquire(len(buf) + len(chunk) - taken, deadline)
                            except OverBudget as exc:
                                exc.read = bytes(buf) + chunk
                                raise
                            taken = len(buf) + len(chunk)
                        buf += chunk  # grows in place (large buffers are remapped, not copied)
                    try:
                        chunk = await asyncio.wait_for(request.content.readany(), server.body_idle_ms / 1000)
                    except TimeoutError:
                        raise BodyTimeout(f"no bytes of the body for {server.body_idle_ms} ms") from None
                    if not chunk:
                        break
        except TimeoutError:
            raise BodyTimeout(f"the body did not arrive within {ctx.config.server.body_timeout_ms} ms") from None
        yield buf  # type: ignore[misc]  # a bytearray serves every reader of the body as bytes
    finally:
        if taken:
            await ctx.budget.release(taken)


@asynccontextmanager
async def judgeable_body(ctx: Context, request: web.Request, instance: Instance) -> AsyncIterator[bytes]:
    """A body the API judges as it is (validation, the detector API): held against the byte budget like
    the proxy's, its Content-Encoding undone in a worker thread with the worst-case decoded size budgeted.
    Raises BodyTooLarge, BodyTimeout, OverBudget, Unreadable."""
    limit = ctx.config.server.max_body_bytes
    deadline = _deadline(instance)
    async with held_body(ctx, request, deadline) as body, decoding_room(ctx, request, deadline) as encoding:
        if encoding or len(body) > INLINE_BYTES:
            yield await asyncio.to_thread(decode_content, body, encoding, limit)
        else:
            yield body


DEFLATE_MAX_RATIO = 1032
"""DEFLATE's largest expansion (258-byte matches in about 2 bits each); gzip and zlib framing only add."""


def decoded_worst_case(encoding: str, wire_bytes: int | None, limit: int) -> int:
    """Bytes the decoded forms of a body with this Content-Encoding may hold at once (0 for none)."""
    codings = [c.strip() for c in encoding.split(",") if c.strip() and c.strip() != "identity"]
    if not codings:
        return 0
    if len(codings) > 1:
        return 2 * limit
    if codings[0] in ("gzip", "x-gzip", "deflate") and wire_bytes is not None:
        return min(limit, DEFLATE_MAX_RATIO * wire_bytes + 1)
    return limit


@asynccontextmanager
async def decoding_room(ctx: Context, request: web.Request, deadline: float) -> AsyncIterator[str]:
    """Room in the byte budget for decoding the body, taken while the decoded body may be held: its worst
    case. One gzip/deflate layer with a Content-Length inflates at most ``DEFLATE_MAX_RATIO`` times its
    wire size; otherwise up to ``server.max_body_bytes``, and with stacked encodings two layers' outputs
    are alive at once (``content.decode_content``). Yields the encoding ("" for none); raises OverBudget."""
    encoding = content_encoding(request).strip().lower()
    encoding = "" if encoding == "identity" else encoding
    extra = decoded_worst_case(encoding, request.content_length, ctx.config.server.max_body_bytes)
    if extra:
        await ctx.budget.acquire(extra, deadline)
    try:
        yield encoding
    finally:
        if extra:
            await ctx.budget.release(extra)


def content_encoding(request: web.Request) -> str:
    """Every Content-Encoding header line, joined (it is a list header, and a backend may combine the
    lines): with only the first read, ``identity`` then ``gzip`` streamed a gzip'd photo unjudged."""
    return ", ".join(request.headers.getall("Content-Encoding", ()))


def content_type_header(request: web.Request) -> str:
    """Every Content-Type header as sent, joined (parsers disagree on duplicates: the multipart parser
    refuses them)."""
    return ", ".join(request.headers.getall("Content-Type", ()))


def media_type(request: web.Request) -> str:
    """The Content-Type's media type as the strictest backend reads it; "" when there is none (aiohttp's
    ``content_type`` would say application/octet-stream, but Rack reads a body without one as a form)."""
    return media_type_of(content_type_header(request))


async def _read_announced(request: web.Request, head: bytes, size: int, idle_s: float) -> bytes:
    """A body of announced ``size`` in one buffer filled in place (no growing, no chunk list joined into a
    second copy): it costs its size once, which is what the byte budget took."""
    buf = bytearray(size)
    buf[: len(head)] = head
    pos = len(head)
    while pos < size:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), idle_s)
        except TimeoutError:
            raise BodyTimeout(f"no bytes of the body for {idle_s * 1000:.0f} ms") from None
        if not chunk:
            raise web.HTTPBadRequest(text="body shorter than its Content-Length")
        if pos + len(chunk) > size:
            raise web.HTTPBadRequest(text="body longer than its Content-Length")
        buf[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    return buf  # type: ignore[return-value]  # a bytearray serves every reader of the body as bytes


def unavailable(instance: Instance, verdict: Verdict, route: Route | None = None) -> web.Response:
    """No verdict in time and the policy fails closed: a 503 the client may retry."""
    return instance.backend.refusal(f"media could not be checked, try again later ({verdict.reason})", status=503,
                                    code="media-unavailable", headers={"Retry-After": str(RETRY_AFTER_S)}, route=route)


def _deadline(instance: Instance) -> float:
    return time.monotonic() + instance.policy.timeout_ms / 1000


def _overloaded(ctx: Context, instance: Instance, source: str, exc: Exception, route: Route | None) -> web.Response:
    ctx.metrics.overload.labels("inflight_bytes").inc()
    verdict = ctx.pipeline.no_verdict(instance, source, ErrorKind.OVERLOADED, f"too many bodies in flight ({exc})")
    if verdict.accepted:  # on_error: accept, but the body was never read: it cannot be judged, so refuse
        log.warning("%s for %s: over the in-flight byte budget; refused although on_error=accept", source, instance.name)
    return unavailable(instance, verdict, route)


# --- the content gate --------------------------------------------------------------------------------


INLINE_BYTES = 256 * 1024
"""Bodies larger than this (or encoded) are decoded and parsed in a worker thread, not on the event loop."""


def _read_sync(body: bytes, encoding: str | None, ctype: str, ctype_header: str, query: str,
               limit: int) -> tuple[Any | None, list[Piece]]:
    """(an ActivityStreams document when the body is one, else None; the would-be files)."""
    decoded = decode_content(body, encoding, limit)
    if is_json_type(ctype) or ctype in ACTIVITY_TYPES:
        doc = load_json(decoded)
        if is_activity(doc):
            return doc, []
    return None, find_media(decoded, ctype, ctype_header, query)


async def _read(request: web.Request, body: bytes, limit: int) -> tuple[Any | None, list[Piece]]:
    args = (body, content_encoding(request), media_type(request), content_type_header(request),
            request.query_string, limit)
    if len(body) > INLINE_BYTES or args[1]:
        return await asyncio.to_thread(_read_sync, *args)
    return _read_sync(*args)


async def _judge_pieces(ctx: Context, instance: Instance, pieces: list[Piece], source: str) -> list[Verdict]:
    return list(await asyncio.gather(*(ctx.pipeline.judge(p.data, instance, source) for p in pieces)))


async def gate(ctx: Context, request: web.Request, instance: Instance, route: Route | None,
               body: bytes, source: str = "upload") -> web.StreamResponse:
    """Judge every would-be file in ``body``; forward the original bytes, strip flagged parts, or refuse."""
    backend, m = instance.backend, ctx.metrics
    try:
        async with decoding_room(ctx, request, _deadline(instance)):
            doc, pieces = await _read(request, body, ctx.config.server.max_body_bytes)
    except OverBudget as exc:
        return _overloaded(ctx, instance, source, exc, route)
    except Unreadable as exc:
        # never forwarded: the backend's parser might read media out of what we could not read
        log.warning("%s %s to %s refused: %s", request.method, request.path, instance.name, exc)
        m.uploads.labels(instance.name, "malformed").inc()
        return backend.refusal(f"malformed upload: {exc}", status=exc.status, code=exc.code, route=route)
    if doc is not None:
        return await inbox_body(ctx, request, instance, body, doc)
    if not pieces:
        return await ctx.forwarder.forward(request, instance, body=body)
    verdicts = await _judge_pieces(ctx, instance, pieces, source)
    refused = [(p, v) for p, v in zip(pieces, verdicts, strict=True) if not v.accepted]
    if not refused:
        m.uploads.labels(instance.name, "forwarded").inc()
        return await ctx.forwarder.forward(request, instance, body=body)
    retryable = [v for _, v in refused if v.retryable]
    if retryable:
        m.uploads.labels(instance.name, "unavailable").inc()
        return unavailable(instance, retryable[0], route)
    strip = _strippable(route, request, body, pieces, refused)
    if strip is not None:
        m.uploads.labels(instance.name, "stripped").inc()
        log.info("upload to %s: stripped %d of %d files", instance.name, len(refused), len(pieces))
        return await ctx.forwarder.forward(request, instance, body=strip)
    m.uploads.labels(instance.name, "refused").inc()
    reasons = sorted({v.reason for _, v in refused})
    log.info("%s %s to %s refused: %s in %s", request.method, request.path, instance.name, "; ".join(reasons),
             ", ".join(p.where for p, _ in refused))
    return backend.refusal(f"media refused: {'; '.join(reasons)}", route=route)


def _strippable(route: Route | None, request: web.Request, body: bytes, pieces: list[Piece],
                refused: list[tuple[Piece, Verdict]]) -> bytes | None:
    """The body without the flagged parts, when the route takes several files, every refusal is a
    ``strip`` of a whole multipart part, no Content-Encoding hides the body, and a file is left to
    forward; else None (the request is refused)."""
    if route is None or not route.multi or content_encoding(request):
        return None
    if not all(v.action is Action.STRIP and p.part is not None and p.whole for p, v in refused):
        return None
    drop = {p.part for p, _ in refused if p.part is not None}
    if not {p.part for p in pieces} - drop:
        return None
    return parse(body, content_type_header(request)).without(drop)


# --- URL ingestion -----------------------------------------------------------------------------------


async def ingest(ctx: Context, request: web.Request, instance: Instance, route: Route,
                 body: bytes | None) -> web.StreamResponse:
    """URL ingestion: fetch and judge the URL before the backend is asked to fetch it; then the body (if
    any) goes through the content gate like any other."""
    url: str | None = None
    if route.url_param is not None:
        url = request.query.get(route.url_param)
    elif route.url_json_key is not None and body is not None:
        try:
            doc = load_json(decode_content(body, content_encoding(request),
                                           ctx.config.server.max_body_bytes))
        except Unreadable as exc:
            return instance.backend.refusal(f"malformed upload: {exc}", status=exc.status, code=exc.code, route=route)
        value = doc.get(route.url_json_key) if isinstance(doc, dict) else None
        url = value if isinstance(value, str) else None
    if url:
        verdict = await ctx.pipeline.judge_url(url, instance, "ingest")
        if not verdict.accepted:
            if verdict.retryable:
                return unavailable(instance, verdict, route)
            return instance.backend.refusal(f"media refused: {verdict.reason}", route=route)
    if body is None:
        return await ctx.forwarder.forward(request, instance)
    return await gate(ctx, request, instance, route, body, source="ingest")


# --- inboxes -----------------------------------------------------------------------------------------


async def _fail_closed(ctx: Context, request: web.Request, instance: Instance, body: bytes,
                       why: str) -> web.StreamResponse:
    """A delivery whose media cannot all be judged for a reason its sender controls: the policy's
    ``on_invalid`` (403 when it rejects), never a silent forward of unjudged media."""
    m = ctx.metrics
    m.inbox.labels(instance.name, "unjudgeable").inc()
    if instance.policy.on_invalid is Fallback.ACCEPT:
        m.fail_open.labels(instance.policy.name, "inbox:unjudgeable").inc()
        log.warning("inbox delivery to %s cannot be judged (%s): forwarded, on_invalid=accept", instance.name, why)
        return await ctx.forwarder.forward(request, instance, body=body)
    log.warning("inbox delivery to %s refused: %s", instance.name, why)
    return web.json_response({"error": f"delivery refused: {why}"}, status=403)


async def inbox(ctx: Context, request: web.Request, instance: Instance, route: Route | None) -> web.StreamResponse:
    """An ActivityPub delivery: read it (admitted against the byte budget) and judge its media. ``route``:
    the inbox route it was sent to, None when only its type says it is a delivery (then overload gets the
    retryable upload answer: an API upload dressed as an activity is never forwarded unread)."""
    try:
        async with held_body(ctx, request, _deadline(instance)) as body:
            try:
                async with decoding_room(ctx, request, _deadline(instance)):
                    doc = await _load_delivery(request, body, ctx.config.server.max_body_bytes)
            except OverBudget as exc:
                exc.read = body  # read whole already: forwarded as it came
                raise
            except Unreadable as exc:
                return await _fail_closed(ctx, request, instance, body, f"unreadable delivery: {exc}")
            return await inbox_body(ctx, request, instance, body, doc)
    except BodyTooLarge as exc:
        ctx.metrics.inbox.labels(instance.name, "too_large").inc()
        return web.json_response({"error": str(exc)}, status=413)
    except BodyTimeout as exc:
        return web.json_response({"error": str(exc)}, status=408)
    except OverBudget as exc:
        if route is None:
            return _overloaded(ctx, instance, "inbox", exc, None)
        # never a 5xx on an inbox: forward it unjudged, whole; the backend's own fetches are judged downstream
        ctx.metrics.overload.labels("inflight_bytes").inc()
        ctx.metrics.inbox.labels(instance.name, "forwarded_overloaded").inc()
        log.warning("inbox delivery to %s over the in-flight byte budget (%s): forwarded unjudged; its media is "
                    "judged where the backend fetches it (egress, pict-rs validation)", instance.name, exc)
        return await ctx.forwarder.forward(request, instance, stream=_stream_with_head(request, exc.read))


async def _load_delivery(request: web.Request, body: bytes, limit: int) -> Any:
    encoding = content_encoding(request)

    def load() -> Any:
        return load_json(decode_content(body, encoding, limit))

    return await asyncio.to_thread(load) if len(body) > INLINE_BYTES or encoding else load()


async def _object_media(ctx: Context, instance: Instance, objects: list[str],
                        timeout_s: float) -> tuple[list[str], list[str]]:
    """Fetch objects named by URL (as the backend will), side by side, within ``timeout_s``, and list their
    media; the objects that could not be fetched (authorized fetch, a host down, too slow) come back apart:
    they are left to the backend's guarded fetch (egress, pict-rs validation judge what it stores)."""
    fetcher = ctx.pipeline.fetcher
    if fetcher is None:
        return [], objects

    async def one(url: str) -> list[str] | None:
        try:
            fetched = await fetcher.fetch(url, accept="application/activity+json, application/ld+json")
        except FetchError as exc:
            log.info("inbox object %s could not be fetched (%s): left to the backend's guarded fetch", url, exc.kind)
            return None
        if sniff(fetched.body) is not None:
            return [url]  # the object is media itself: judge it as such
        try:
            return extract(await asyncio.to_thread(load_json, fetched.body)).urls
        except Unreadable:
            return None

    tasks = {url: asyncio.ensure_future(one(url)) for url in objects}
    await asyncio.wait(tasks.values(), timeout=timeout_s)
    urls: list[str] = []
    pending: list[str] = []
    for url, task in tasks.items():
        if task.done() and task.result() is not None:
            urls += task.result() or []
        else:
            task.cancel()
            pending.append(url)
    return urls, pending


async def inbox_body(ctx: Context, request: web.Request, instance: Instance, body: bytes, doc: Any) -> web.StreamResponse:
    policy = instance.policy
    m = ctx.metrics
    ext = extract(doc)
    if ext.problem:
        return await _fail_closed(ctx, request, instance, body, f"delivery {ext.problem}")
    inline = [Piece("activity data: URI", d) for text in _strings(doc)
              for d in data_uris(text.encode("utf-8", "replace"), whole=True)]
    if len(inline) > MAX_PIECES:
        return await _fail_closed(ctx, request, instance, body, f"more than {MAX_PIECES} data: URIs")
    if inline:
        # media inside the body itself: no URL to deny downstream, so it is judged now whatever the
        # policy's inbox action, and a refusal refuses the delivery (never stripped, never passed)
        verdicts = await _judge_pieces(ctx, instance, inline, "inbox")
        if any(v.flags_media for v in verdicts):
            m.inbox.labels(instance.name, "reject").inc()
            reasons = sorted({v.reason for v in verdicts if v.flags_media})
            return web.json_response({"error": f"delivery refused: media refused ({'; '.join(reasons)})"}, status=403)
        unjudged = [v for v in verdicts if not v.accepted]
        if unjudged:
            return await _fail_closed(ctx, request, instance, body, f"media in the delivery not judged: {unjudged[0].reason}")
    urls = list(ext.urls)
    if ext.objects and policy.prefetch and policy.inbox is not InboxAction.PASS:
        fetched, pending = await _object_media(ctx, instance, ext.objects[:MAX_OBJECTS],
                                               policy.inbox_timeout_ms / 2000)
        urls += [u for u in fetched if u not in urls]
        if pending or len(ext.objects) > MAX_OBJECTS:
            m.inbox.labels(instance.name, "object_pending").inc()
    if len(urls) > ctx.config.fetch.max_urls:
        return await _fail_closed(ctx, request, instance, body,
                                  f"{len(urls)} media URLs, over fetch.max_urls ({ctx.config.fetch.max_urls})")
    if not urls:
        m.inbox.labels(instance.name, "no_media" if not inline else "forwarded").inc()
        return await ctx.forwarder.forward(request, instance, body=body)
    if not policy.prefetch or policy.inbox is InboxAction.PASS:
        ctx.spawn(_judge_all(ctx, urls, instance))
        m.inbox.labels(instance.name, "forwarded_unjudged").inc()
        return await ctx.forwarder.forward(request, instance, body=body)

    tasks = [asyncio.ensure_future(ctx.pipeline.judge_url(u, instance, "inbox")) for u in urls]
    done, pending_tasks = await asyncio.wait(tasks, timeout=policy.inbox_timeout_ms / 1000)
    for task in pending_tasks:  # judged in the background; refused URLs are denied downstream when done
        ctx.spawn(_await(task))
    flagged = [t.result() for t in done if t.result().flags_media]
    if pending_tasks:
        m.inbox.labels(instance.name, "media_pending").inc()
        log.info("inbox delivery to %s: %d of %d media still being judged after %d ms; forwarded, pending media is "
                 "denied downstream if flagged", instance.name, len(pending_tasks), len(tasks), policy.inbox_timeout_ms)
    if not flagged:
        m.inbox.labels(instance.name, "forwarded").inc()
        return await ctx.forwarder.forward(request, instance, body=body)
    reasons = sorted({v.reason for v in flagged})
    log.warning("inbox delivery to %s carries refused media (%s): %s", instance.name, "; ".join(reasons), policy.inbox)
    m.inbox.labels(instance.name, policy.inbox).inc()
    if policy.inbox is InboxAction.REJECT:
        return web.json_response({"error": f"delivery refused: media refused ({'; '.join(reasons)})"}, status=403)
    if policy.inbox is InboxAction.DROP:
        return web.json_response({"status": "accepted"}, status=202)
    return await ctx.forwarder.forward(request, instance, body=body)  # strip: the URLs are denied downstream


def _strings(node: Any) -> list[str]:
    out: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return out


async def _judge_all(ctx: Context, urls: list[str], instance: Instance) -> list[Verdict]:
    return list(await asyncio.gather(*(ctx.pipeline.judge_url(u, instance, "inbox") for u in urls)))


async def _await(task: asyncio.Future[Any]) -> Any:
    return await task


# --- dispatch ----------------------------------------------------------------------------------------


def _must_read(request: web.Request, head: bytes) -> bool:
    enc = content_encoding(request).strip().lower()
    if enc and enc != "identity":
        return True
    if query_may_carry_media(request.query_string):
        return True
    return not streamable(content_type_header(request), head)


async def _peek(request: web.Request) -> bytes:
    head = b""
    while len(head) < SNIFF_BYTES:
        chunk = await request.content.read(SNIFF_BYTES - len(head))
        if not chunk:
            break
        head += chunk
    return head


async def _stream_with_head(request: web.Request, head: bytes) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in request.content.iter_chunked(65536):
        yield chunk


async def handle(ctx: Context, request: web.Request, instance: Instance) -> web.StreamResponse:
    """Everything a reverse-proxied instance receives: judged by content, routed for the rest."""
    route = instance.backend.match(paths.methods(request.method, request.headers), paths.spellings(request.raw_path))
    ctype = media_type(request)
    if (route is not None and route.interception is Interception.INBOX) or (request.body_exists and ctype in ACTIVITY_TYPES):
        request[ROUTE_LABEL] = "inbox"
        return await inbox(ctx, request, instance, route if route is not None and route.interception is Interception.INBOX
                           else None)
    if not request.body_exists and query_may_carry_media(request.query_string):
        request[ROUTE_LABEL] = "upload"
        return await gate(ctx, request, instance, route, b"")
    if not request.body_exists:
        if route is not None and route.interception is Interception.INGEST:
            request[ROUTE_LABEL] = "ingest"
            return await ingest(ctx, request, instance, route, None)
        request[ROUTE_LABEL] = "passthrough"
        return await ctx.forwarder.forward(request, instance)
    head = await _peek(request)
    if not _must_read(request, head) and not (route is not None and route.interception is Interception.INGEST):
        request[ROUTE_LABEL] = "passthrough"
        return await ctx.forwarder.forward(request, instance, stream=_stream_with_head(request, head))
    request[ROUTE_LABEL] = route.interception if route is not None else "upload"
    try:
        async with held_body(ctx, request, _deadline(instance), head) as body:
            if route is not None and route.interception is Interception.INGEST:
                return await ingest(ctx, request, instance, route, body)
            return await gate(ctx, request, instance, route, body)
    except BodyTooLarge as exc:
        ctx.metrics.uploads.labels(instance.name, "too_large").inc()
        return instance.backend.refusal(str(exc), status=413, code="too-large", route=route)
    except BodyTimeout as exc:
        ctx.metrics.uploads.labels(instance.name, "timeout").inc()
        return instance.backend.refusal(str(exc), status=408, code="timeout", route=route)
    except OverBudget as exc:
        return _overloaded(ctx, instance, "upload", exc, route)
