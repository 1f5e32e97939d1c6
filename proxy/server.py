"""`fedi-filter serve`: one aiohttp app on one port. Hosts that an instance claims are reverse-proxied to
it (uploads, URL ingestion and inboxes intercepted, everything else streamed); any other host reaches
the API: validation (pict-rs external_validation), scan, health, metrics."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from classifier import Classifier

from .audit import AuditStore
from .config import Config, Instance
from .fetch import Fetcher
from .intercept import RETRY_AFTER_S, ROUTE_LABEL, BodyTooLarge, Context, handle, is_retryable, read_body
from .metrics import Metrics
from .passthrough import Forwarder
from .pipeline import Pipeline, Verdict

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
CLASSIFIER = web.AppKey("classifier", Classifier)
PIPELINE = web.AppKey("pipeline", Pipeline)
CONTEXT = web.AppKey("context", Context)


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "msg": message, **extra}, status=status)


def pick_instance(request: web.Request) -> Instance:
    """``?instance=NAME``, else the first instance (pict-rs can add the parameter to its validation URL)."""
    config = request.app[CONFIG]
    name = request.query.get("instance")
    if name is None:
        return config.instances[0]
    inst = config.instance_named(name)
    if inst is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"unknown instance {name!r}"}), content_type="application/json")
    return inst


def validation_response(verdict: Verdict, instance: Instance) -> web.Response:
    """pict-rs external_validation semantics: 2xx keeps the media, anything else refuses it."""
    body = verdict.to_json()
    if verdict.accepted:
        return web.json_response(body, status=200)
    body["msg"] = f"media refused: {verdict.reason}"
    if is_retryable(verdict):
        return web.json_response(body, status=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    return web.json_response(body, status=instance.policy.reject_status)


async def judge_body(request: web.Request, source: str) -> tuple[Verdict, Instance]:
    instance = pick_instance(request)
    config = request.app[CONFIG]
    data = await read_body(request, config.server.max_body_bytes)
    verdict = await request.app[PIPELINE].judge(data, instance, source)
    return verdict, instance


async def validate(request: web.Request) -> web.Response:
    """POST /api/v1/validate: pict-rs ``external_validation`` (body = media)."""
    verdict, instance = await judge_body(request, "validate")
    return validation_response(verdict, instance)


async def pictrs_safety_scan(request: web.Request) -> web.Response:
    """POST /api/v1/scan/{pictrs_id}: pictrs-safety's URL, so its users switch by changing only the host."""
    known = request.app[CONFIG].server.known_pictrs_ids
    if known and request.match_info["pictrs_id"] not in known:
        return json_error(401, "You are not authorized to use this service")
    verdict, instance = await judge_body(request, "validate")
    return validation_response(verdict, instance)


def check_admin(request: web.Request) -> web.Response | None:
    token = request.app[CONFIG].server.admin_token
    if not token:
        return json_error(403, "admin API disabled: set server.admin_token")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return json_error(401, "missing or wrong admin token (Authorization: Bearer ...)")
    return None


async def scan(request: web.Request) -> web.Response:
    """POST /api/v1/scan: judge a body and return the verdict with scores (admin token)."""
    denied = check_admin(request)
    if denied is not None:
        return denied
    verdict, _ = await judge_body(request, "scan")
    return web.json_response(verdict.to_json())


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 when the classifier is ready, 503 (with the reason) while it is not."""
    classifier = request.app[CLASSIFIER]
    config = request.app[CONFIG]
    body = {
        "status": "ok" if classifier.ready else "not_ready",
        "classifier": classifier.status(),
        "config": config.source,
        "instances": [{"name": i.name, "kind": i.kind, "policy": i.policy.name} for i in config.instances],
    }
    return web.json_response(body, status=200 if classifier.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def reverse_proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests for a Host an instance claims go to that instance (intercepted or streamed through); any
    other Host reaches this server's own API (validation, scan, health, metrics)."""
    instance = request.app[CONFIG].instance_claiming(request.host)
    if instance is None:
        return await handler(request)
    return await handle(request.app[CONTEXT], request, instance)


@web.middleware
async def errors_and_counts(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except BodyTooLarge as exc:
        log.warning("%s %s from %s: %s", request.method, request.path, request.remote, exc)
        request.app[METRICS].invalid.labels("too_large").inc()
        response = json_error(413, str(exc))
    except web.HTTPException as exc:
        response = exc
    resource = request.match_info.route.resource
    route = request.get(ROUTE_LABEL) or (resource.canonical if resource else "other")
    request.app[METRICS].requests.labels(route, str(response.status)).inc()
    if isinstance(response, web.HTTPException):
        raise response
    return response


def classifier_for(config: Config, metrics: Metrics | None = None) -> Classifier:
    signals = set().union(*(p.rules.signals() for p in config.policies.values()))
    return Classifier(config.classifier, signals, on_batch=metrics.on_batch if metrics else None)


async def services(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: classifier (loads in the background), audit store and pipeline for the app's life."""
    config, m = app[CONFIG], app[METRICS]
    classifier = classifier_for(config, m)
    app[CLASSIFIER] = classifier
    m.classifier_ready.set_function(lambda: 1.0 if classifier.ready else 0.0)
    def depth(name: str) -> Callable[[], float]:
        return lambda: float(classifier.batchers[name].queue_depth) if name in classifier.batchers else 0.0

    for name in classifier.source_names:
        m.queue_depth.labels(name).set_function(depth(name))
    audit = AuditStore(config.server.audit_db, on_drop=m.audit_dropped.inc) if config.server.audit_db else None
    if audit is not None:
        await audit.open()
    fetcher = Fetcher(config.fetch)
    await fetcher.start()
    forwarder = Forwarder()
    await forwarder.start()
    pipeline = Pipeline(config, classifier, audit, m, fetcher)
    app[PIPELINE] = pipeline
    app[CONTEXT] = Context(config, pipeline, forwarder, m)
    warmed = await pipeline.warm_cache()
    if warmed:
        log.info("verdict cache warmed with %d recent verdicts from %s", warmed, config.server.audit_db)
    await classifier.start()
    try:
        yield
    finally:
        await app[CONTEXT].close()
        await forwarder.close()
        await fetcher.close()
        await classifier.close()
        pipeline.close()
        if audit is not None:
            await audit.close()


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[errors_and_counts, reverse_proxy], client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(services)
    app.router.add_post("/api/v1/validate", validate)
    app.router.add_post("/api/v1/scan", scan)
    app.router.add_post("/api/v1/scan/{pictrs_id}", pictrs_safety_scan)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
