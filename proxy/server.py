"""`fedi-filter serve`: one aiohttp app on one port. Hosts that an instance claims are reverse-proxied to
it (uploads, URL ingestion and inboxes intercepted, everything else streamed); any other host reaches
the API: validation (pict-rs external_validation), scan, the backends' own moderation APIs (Misskey's
detector, NsfwApiPolicy: :mod:`proxy.native`), health, metrics, the review page (:mod:`proxy.review`)."""

from __future__ import annotations

import hmac
import json
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from .app import SERVICES, Services, add_health_routes, build_services
from .config import Config, Instance
from .content import Unreadable
from .admission import OverBudget
from .intercept import (
    CONTEXT,
    RETRY_AFTER_S,
    ROUTE_LABEL,
    BodyTimeout,
    BodyTooLarge,
    Context,
    handle,
    judgeable_body,
)
from .native import add_native_routes
from .passthrough import Forwarder
from .review import add_review_routes
from .verdict import Verdict

log = logging.getLogger(__name__)

INSTANCE = web.RequestKey("ffp_instance", Instance)
"""The instance whose Host a reverse-proxied request named (set by :class:`HostFirstRouter`)."""


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "msg": message, **extra}, status=status)


def pick_instance(request: web.Request) -> Instance:
    """``?instance=NAME``, else the first instance (pict-rs can add the parameter to its validation URL)."""
    config = request.app[SERVICES].config
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
    if verdict.retryable:
        return web.json_response(body, status=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    return web.json_response(body, status=instance.policy.reject_status)


async def judge_body(request: web.Request, source: str) -> tuple[Verdict, Instance]:
    """Judge the request body as it is (held against the byte budget while judged)."""
    instance = pick_instance(request)
    async with judgeable_body(request.app[CONTEXT], request, instance) as data:
        verdict = await request.app[SERVICES].pipeline.judge(data, instance, source)
    return verdict, instance


async def validate(request: web.Request) -> web.Response:
    """POST /api/v1/validate: pict-rs ``external_validation`` (body = media)."""
    verdict, instance = await judge_body(request, "validate")
    return validation_response(verdict, instance)


async def pictrs_safety_scan(request: web.Request) -> web.Response:
    """POST /api/v1/scan/{pictrs_id}: pictrs-safety's URL, so its users switch by changing only the host."""
    known = request.app[SERVICES].config.server.known_pictrs_ids
    if known and request.match_info["pictrs_id"] not in known:
        return json_error(401, "You are not authorized to use this service")
    verdict, instance = await judge_body(request, "validate")
    return validation_response(verdict, instance)


def check_admin(request: web.Request) -> web.Response | None:
    token = request.app[SERVICES].config.server.admin_token
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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def reverse_proxy(request: web.Request) -> web.StreamResponse:
    """A request for a Host an instance claims: intercepted or streamed through to that instance."""
    return await handle(request.app[CONTEXT], request, request[INSTANCE])


async def misdirected(request: web.Request) -> web.StreamResponse:
    """A Host neither claimed by an instance nor one of ``server.api_hosts``: never the API or /admin/
    (a default nginx server block would otherwise hand any public Host to them)."""
    log.info("%s %s for host %r: not an instance's host nor in server.api_hosts: 421", request.method,
             request.path, request.host)
    return json_error(421, f"host {request.host!r} is neither an instance's nor in server.api_hosts")


class HostFirstRouter(web.UrlDispatcher):
    """Looks at the Host before the path: requests for a Host an instance claims all go to
    :func:`reverse_proxy` (no path lookup, no 404 built and thrown away per proxied request); any other
    Host reaches this server's own API (validation, scan, health, metrics) through the routes."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self._config = config
        self._proxied = web.ResourceRoute("*", reverse_proxy, web.PlainResource("/", name=None))
        self._misdirected = web.ResourceRoute("*", misdirected, web.PlainResource("/", name=None))

    async def resolve(self, request: web.Request) -> web.UrlMappingMatchInfo:
        instance = self._config.instance_claiming(request.host)
        if instance is None:
            if not self._config.serves_api(request.host):
                return UrlMappingMatchInfo({}, self._misdirected)
            return await super().resolve(request)
        request[INSTANCE] = instance
        return UrlMappingMatchInfo({}, self._proxied)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log for this server's own API; reverse-proxied requests only with
    ``server.access_log: true`` (or ``serve --access-log``): at hundreds of requests a second the log would
    cost more than the proxying."""

    proxied = False

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._inner = web.AccessLogger(logger, log_format)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if self.proxied or INSTANCE not in request:
            self._inner.log(request, response, time)

    @property
    def enabled(self) -> bool:
        return self._inner.enabled


class ProxiedAccessLogger(AccessLogger):
    proxied = True


@web.middleware
async def errors_and_counts(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[SERVICES].metrics
    try:
        response = await handler(request)
    except BodyTooLarge as exc:
        log.warning("%s %s from %s: %s", request.method, request.path, request.remote, exc)
        metrics.invalid.labels("too_large").inc()
        response = json_error(413, str(exc))
    except BodyTimeout as exc:
        response = json_error(408, str(exc))
    except OverBudget as exc:
        metrics.overload.labels("inflight_bytes").inc()
        log.warning("%s %s: over the in-flight byte budget (%s)", request.method, request.path, exc)
        response = json_error(503, f"too many bodies in flight, try again later ({exc})")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    except Unreadable as exc:
        response = json_error(exc.status, str(exc))
    except web.HTTPException as exc:
        response = exc
    resource = request.match_info.route.resource
    route = request.get(ROUTE_LABEL) or (resource.canonical if resource else "other")
    metrics.requests.labels(route, str(response.status)).inc()
    if isinstance(response, web.HTTPException):
        raise response
    return response


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the services (models load in the background) and the forwarder for the app's life."""
    services, context = app[SERVICES], app[CONTEXT]
    await context.forwarder.start()
    await services.start()
    try:
        yield
    finally:
        await context.close()
        await context.forwarder.close()
        await services.close()


def build_app(config: Config, services: Services | None = None) -> web.Application:
    services = services or build_services(config)
    # bodies as sent: a Content-Encoding is undone by us for judging, and the original bytes are forwarded
    with warnings.catch_warnings():
        # aiohttp deprecates a router of one's own; it is the one place the Host can be read before the path
        warnings.simplefilter("ignore", DeprecationWarning)
        app = web.Application(router=HostFirstRouter(config), middlewares=[errors_and_counts],
                              client_max_size=config.server.max_body_bytes, handler_args={"auto_decompress": False})
    app[SERVICES] = services
    app[CONTEXT] = Context(config, services.pipeline, Forwarder(), services.metrics)
    app.cleanup_ctx.append(_lifetime)
    app.router.add_post("/api/v1/validate", validate)
    app.router.add_post("/api/v1/scan", scan)
    app.router.add_post("/api/v1/scan/{pictrs_id}", pictrs_safety_scan)
    add_native_routes(app)
    add_health_routes(app)
    add_review_routes(app)
    return app


def access_logger(config: Config, *, proxied: bool = False) -> type[AbstractAccessLogger]:
    """The access logger class for ``serve``: proxied requests logged only when asked."""
    return ProxiedAccessLogger if proxied or config.server.access_log else AccessLogger
