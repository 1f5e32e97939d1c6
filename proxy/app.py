"""One builder for the services every command runs on: metrics, scorer, store, fetcher, pipeline.

``serve``, ``egress`` and ``scan`` (and every later command) call :func:`build_services` and then
:meth:`Services.start` / :meth:`Services.close`; none builds these parts itself. The health and metrics
handlers that every server process exposes live here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from classifier import Classifier, Scorer
from classifier.remote import Requirements, WorkerPool

from .banks import Banks
from .config import Config
from .fetch import Fetcher
from .metrics import Metrics
from .pipeline import Pipeline
from .stores import SqliteStore, VerdictCache, VerdictStore
from .workers import WorkerHub, add_worker_route

log = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    metrics: Metrics
    scorer: Scorer
    store: VerdictCache
    pipeline: Pipeline
    fetcher: Fetcher | None
    banks: Banks
    hub: WorkerHub | None = None

    async def start(self) -> None:
        """Open the store (warming the verdict cache) and the hash banks, start the fetcher, begin loading the models."""
        warmed = await self.store.open()
        await self.banks.open()
        if warmed:
            log.info("verdict cache warmed with %d recent verdicts from %s", warmed,
                     "postgres" if self.config.store else self.config.server.audit_db)
        if self.fetcher is not None:
            await self.fetcher.start()
        await self.scorer.start()

    async def close(self) -> None:
        if self.hub is not None:
            await self.hub.close()
        if self.fetcher is not None:
            await self.fetcher.close()
        await self.scorer.close()
        self.pipeline.close()
        await self.store.close()


def build_classifier(config: Config, metrics: Metrics | None) -> Classifier:
    """The in-process classifier for every signal the config's policies read."""
    signals = set().union(*(p.rules.signals() for p in config.policies.values()))
    return Classifier(config.classifier, signals, on_batch=metrics.on_batch if metrics is not None else None)


def build_scorer(config: Config, metrics: Metrics) -> Scorer:
    """The classifier alone, or (with a ``workers:`` section) a pool of remote workers and, when
    ``workers.local``, the classifier as one of them."""
    if not config.workers.enabled:
        return build_classifier(config, metrics)
    signals = set().union(*(p.rules.signals() for p in config.policies.values()))
    local = build_classifier(config, metrics) if config.workers.local else None
    requirements = Requirements(signals, config.classifier.model, config.workers.fingerprints)
    return WorkerPool(local, requirements, encoding=str(config.workers.encoding), max_batch=config.classifier.max_batch,
                      max_queue=config.classifier.max_queue)


def build_services(config: Config, *, persistent: bool = True, fetch: bool = True) -> Services:
    """``persistent``: use the configured store (audit_db), else memory only (one-shot commands).
    ``fetch``: a fetcher for URL judgements (inbox media, URL ingestion)."""
    metrics = Metrics()
    scorer = build_scorer(config, metrics)
    metrics.classifier_ready.set_function(lambda: 1.0 if scorer.ready else 0.0)
    metrics.watch_queues(scorer.queue_depths)
    backing: VerdictStore | None = None
    if persistent and config.store:
        from .stores.postgres import PostgresStore

        backing = PostgresStore(config.store, on_drop=metrics.audit_dropped.inc)
    elif persistent and config.server.audit_db:
        backing = SqliteStore(config.server.audit_db, on_drop=metrics.audit_dropped.inc)
    store = VerdictCache(backing, size=config.server.cache_size, ttl_s=config.server.cache_ttl_s)
    fetcher = Fetcher(config.fetch) if fetch else None
    banks = Banks(backing, on_allow_change=store.invalidate)
    pipeline = Pipeline(config, scorer, store, metrics, fetcher, banks=banks)
    hub = WorkerHub(scorer, config.workers, metrics) if isinstance(scorer, WorkerPool) else None
    return Services(config, metrics, scorer, store, pipeline, fetcher, banks, hub)


SERVICES = web.AppKey("services", Services)


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 when the scorer is ready, 503 (with the reason) while it is not."""
    services = request.app[SERVICES]
    scorer, config = services.scorer, services.config
    body: dict[str, Any] = {
        "status": "ok" if scorer.ready else "not_ready",
        "classifier": scorer.status(),
        "config": config.source,
        "instances": [{"name": i.name, "kind": i.kind, "policy": i.policy.name} for i in config.instances],
    }
    return web.json_response(body, status=200 if scorer.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    m = request.app[SERVICES].metrics
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


def add_health_routes(app: web.Application) -> None:
    """/healthz, /metrics and the remote workers' websocket (``/api/v1/workers``)."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    add_worker_route(app, lambda request: request.app[SERVICES].hub)
