"""The reverse proxy's interception points: uploads, URL ingestion, inboxes.

Each is a peer with one shape: take the request, find its media, call the one verdict pipeline, apply the
instance's action. Everything a backend kind's route table does not name streams through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .activity import media_urls
from .backends import Interception, Route
from .config import Config, Instance
from .metrics import Metrics
from .multipart import MultipartError, parse
from .passthrough import Forwarder
from .pipeline import Pipeline
from .verdict import Action, InboxAction, Verdict

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
JSON_INLINE_BYTES = 256 * 1024
MAX_INGEST_JSON = 64 * 1024
ROUTE_LABEL = web.RequestKey("ffp_route", str)
"""The metrics label of a reverse-proxied request: passthrough | upload | ingest | inbox."""


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


def unavailable(instance: Instance, verdict: Verdict) -> web.Response:
    """No verdict in time and the policy fails closed: a 503 the client may retry."""
    return instance.backend.refusal(f"media could not be checked, try again later ({verdict.reason})", status=503,
                                    code="media-unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})


@dataclass
class Context:
    config: Config
    pipeline: Pipeline
    forwarder: Forwarder
    metrics: Metrics
    background: set[asyncio.Task[Any]] = field(default_factory=set)

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


Interceptor = Callable[[Context, web.Request, Instance, Route], Awaitable[web.StreamResponse]]


async def upload(ctx: Context, request: web.Request, instance: Instance, route: Route) -> web.StreamResponse:
    """Multipart uploads: judge every media part; forward the original bytes, refuse, or strip parts."""
    backend = instance.backend
    if not request.content_type.startswith("multipart/"):
        # JSON or urlencoded (a profile edit, an alt-text change) carries no file: nothing to judge
        return await ctx.forwarder.forward(request, instance)
    try:
        body = await read_body(request, ctx.config.server.max_body_bytes)
    except BodyTooLarge as exc:
        ctx.metrics.uploads.labels(instance.name, "too_large").inc()
        return backend.refusal(str(exc), status=413, code="too-large")
    try:
        form = parse(body, request.headers.get("Content-Type"))
    except MultipartError as exc:
        # a body we cannot parse is never forwarded: the backend's parser might read media out of it
        log.warning("upload to %s %s refused: malformed multipart (%s)", instance.name, request.path, exc)
        ctx.metrics.uploads.labels(instance.name, "malformed").inc()
        return backend.refusal(f"malformed upload: {exc}", status=400, code="malformed-upload")
    media = [i for i, p in enumerate(form.parts) if p.name in route.fields or p.filename is not None]
    verdicts = await asyncio.gather(
        *(ctx.pipeline.judge(form.parts[i].content(body), instance, "upload") for i in media)
    )
    refused = {i: v for i, v in zip(media, verdicts, strict=True) if not v.accepted}
    if not refused:
        ctx.metrics.uploads.labels(instance.name, "forwarded").inc()
        return await ctx.forwarder.forward(request, instance, body=body)
    retryable = [v for v in refused.values() if v.retryable]
    if retryable:
        ctx.metrics.uploads.labels(instance.name, "unavailable").inc()
        return unavailable(instance, retryable[0])
    kept = len(media) - len(refused)
    if route.multi and kept and all(v.action is Action.STRIP for v in refused.values()):
        ctx.metrics.uploads.labels(instance.name, "stripped").inc()
        log.info("upload to %s: stripped %d of %d files", instance.name, len(refused), len(media))
        return await ctx.forwarder.forward(request, instance, body=form.without(set(refused)))
    ctx.metrics.uploads.labels(instance.name, "refused").inc()
    reasons = sorted({v.reason for v in refused.values()})
    return backend.refusal(f"media refused: {'; '.join(reasons)}")


async def ingest(ctx: Context, request: web.Request, instance: Instance, route: Route) -> web.StreamResponse:
    """URL ingestion: fetch and judge the URL before the backend is asked to fetch it."""
    body: bytes | None = None
    url: str | None = None
    if route.url_param is not None:
        url = request.query.get(route.url_param)
    elif route.url_json_key is not None:
        try:
            body = await read_body(request, MAX_INGEST_JSON)
            value = json.loads(body).get(route.url_json_key)
            url = value if isinstance(value, str) else None
        except BodyTooLarge as exc:
            return instance.backend.refusal(str(exc), status=413, code="too-large")
        except (ValueError, AttributeError):
            url = None  # not our business: the backend answers malformed requests itself
    if not url:
        return await ctx.forwarder.forward(request, instance, body=body)
    verdict = await ctx.pipeline.judge_url(url, instance, "ingest")
    if verdict.accepted:
        return await ctx.forwarder.forward(request, instance, body=body)
    if verdict.retryable:
        return unavailable(instance, verdict)
    return instance.backend.refusal(f"media refused: {verdict.reason}")


async def _judge_all(ctx: Context, urls: list[str], instance: Instance) -> list[Verdict]:
    return list(await asyncio.gather(*(ctx.pipeline.judge_url(u, instance, "inbox") for u in urls)))


async def inbox(ctx: Context, request: web.Request, instance: Instance, route: Route) -> web.StreamResponse:
    """ActivityPub inbox: judge the delivery's media; reject (403), drop (202), or forward it byte for byte
    (strip: the flagged URLs are denied downstream). Never a 5xx of ours: Lemmy retries those forever."""
    policy = instance.policy
    m = ctx.metrics
    try:
        body = await read_body(request, ctx.config.server.max_body_bytes)
    except BodyTooLarge as exc:
        m.inbox.labels(instance.name, "too_large").inc()
        return web.json_response({"error": str(exc)}, status=413)
    try:
        if len(body) > JSON_INLINE_BYTES:
            activity = await asyncio.get_running_loop().run_in_executor(None, json.loads, body)
        else:
            activity = json.loads(body)
    except ValueError as exc:
        log.warning("inbox delivery to %s is not JSON (%s): forwarded for the backend to refuse", instance.name, exc)
        m.inbox.labels(instance.name, "malformed").inc()
        return await ctx.forwarder.forward(request, instance, body=body)
    urls = media_urls(activity, limit=ctx.config.fetch.max_urls)
    if not urls:
        m.inbox.labels(instance.name, "no_media").inc()
        return await ctx.forwarder.forward(request, instance, body=body)
    if not policy.prefetch or policy.inbox is InboxAction.PASS:
        ctx.spawn(_judge_all(ctx, urls, instance))
        m.inbox.labels(instance.name, "forwarded_unjudged").inc()
        return await ctx.forwarder.forward(request, instance, body=body)

    tasks = [asyncio.ensure_future(ctx.pipeline.judge_url(u, instance, "inbox")) for u in urls]
    done, pending = await asyncio.wait(tasks, timeout=policy.inbox_timeout_ms / 1000)
    for task in pending:  # judged in the background; refused URLs are denied downstream when done
        ctx.spawn(_await(task))
    flagged = [t.result() for t in done if t.result().flags_media]
    if pending:
        log.info("inbox delivery to %s: %d of %d media still being judged after %d ms; forwarded",
                 instance.name, len(pending), len(urls), policy.inbox_timeout_ms)
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


async def _await(task: asyncio.Future[Any]) -> Any:
    return await task


INTERCEPTORS: dict[Interception, Interceptor] = {Interception.UPLOAD: upload, Interception.INGEST: ingest,
                                                Interception.INBOX: inbox}


async def handle(ctx: Context, request: web.Request, instance: Instance) -> web.StreamResponse:
    """Everything a reverse-proxied instance receives: intercepted per its route table, else streamed."""
    route = instance.backend.match(request.method, request.path)
    if route is None:
        request[ROUTE_LABEL] = "passthrough"
        return await ctx.forwarder.forward(request, instance)
    request[ROUTE_LABEL] = route.interception
    return await INTERCEPTORS[route.interception](ctx, request, instance, route)
