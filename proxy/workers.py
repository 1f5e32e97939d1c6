"""Remote model workers over HTTP(S) websockets: the proxy's endpoint and the ``fedi-filter worker`` client.

The proxy side (:class:`WorkerHub`) answers ``GET /api/v1/workers`` (a websocket upgrade) on every
serve/egress process whose config has a ``workers:`` section. A worker proves itself with
``Authorization: Bearer TOKEN`` (compared in constant time against every configured token, never logged),
then says hello with its models (:mod:`classifier.remote` draws the protocol); one whose models disagree
with the policy is refused with a log line that says why. Tokens are revoked by editing the config and
sending SIGHUP (:func:`reload_workers`): connections whose token is gone are closed.

The worker side (:func:`run_worker`) loads the models, dials OUT to each ``--connect`` URL (no inbound
port), reconnects with backoff, answers score messages, and refuses work past its capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import signal
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from classifier import Classifier, ClassifierNotReady, Overloaded
from classifier.remote import (
    PROTOCOL,
    ProtocolError,
    RemotePeer,
    WorkerPool,
    classifier_identity,
    decode_frames,
    loads,
    nest,
    parse_hello,
    unpack,
)

from .config import Config, WorkersConfig
from .metrics import LATENCY_BUCKETS, Metrics

log = logging.getLogger(__name__)

PATH = "/api/v1/workers"
HELLO_TIMEOUT_S = 30.0
REFUSED = 4003
REVOKED = 4001


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class WorkerHub:
    """The worker pool of one serve/egress process, the tokens that may join it, and its metrics."""

    def __init__(self, pool: WorkerPool, settings: WorkersConfig, metrics: Metrics) -> None:
        self.pool = pool
        self.settings = settings
        self._digests = tuple(_digest(t) for t in settings.tokens)
        self._tokens_of: dict[RemotePeer, bytes] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        self.rtt = Histogram("ffp_worker_rtt_seconds", "Round trip of a batch to a remote worker", ["worker"],
                             buckets=LATENCY_BUCKETS, registry=metrics.registry)
        metrics.registry.register(_WorkerGauges(pool))

    def token_matches(self, header: str) -> bytes | None:
        """The digest of the configured token ``Authorization: Bearer ...`` carries, or None. Every token
        is compared, in constant time, whatever matched."""
        scheme, _, given = header.partition(" ")
        digest = _digest(given.strip()) if scheme.lower() == "bearer" else b""
        found = None
        for candidate in self._digests:
            if hmac.compare_digest(candidate, digest):
                found = candidate
        return found

    def apply(self, settings: WorkersConfig) -> int:
        """Take a new workers section (tokens; the rest needs a restart); closes workers whose token is
        gone and returns how many."""
        self._digests = tuple(_digest(t) for t in settings.tokens)
        self.settings = settings
        revoked = [p for p, d in self._tokens_of.items() if d not in self._digests]
        for peer in revoked:
            log.warning("worker %s: its token was revoked; disconnecting", peer.name)
            peer.lost("token revoked")
            task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(peer.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return len(revoked)

    def _unique(self, name: str) -> str:
        taken = {p.name for p in self.pool.peers}
        if name not in taken:
            return name
        return next(f"{name}-{i}" for i in range(2, 10_000) if f"{name}-{i}" not in taken)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/workers: a worker's websocket. 401 without a known token; closed with 4003 and the
        reason when its models disagree with the policy."""
        digest = self.token_matches(request.headers.get("Authorization", ""))
        if digest is None:
            log.warning("worker connection from %s refused: missing or unknown token", request.remote)
            return web.json_response({"error": "unknown worker token"}, status=401)
        ws = web.WebSocketResponse(heartbeat=self.settings.heartbeat_s, max_msg_size=self.settings.max_message_bytes)
        await ws.prepare(request)
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ProtocolError("expected a hello")
            name, capacity, sources = parse_hello(loads(msg.data))
        except (ProtocolError, ValueError, TimeoutError) as exc:
            log.warning("worker from %s refused: %s", request.remote, exc)
            await ws.close(code=REFUSED, message=b"bad hello")
            return ws
        reason = self.pool.requirements.check(sources)
        if digest not in self._digests:  # revoked (SIGHUP) while this connection waited for its hello
            reason = "its token was revoked"
        if reason is not None:
            log.error("worker %s from %s refused: %s", name, request.remote, reason)
            await ws.send_json({"type": "refused", "reason": reason, "retry_s": 2 if self.pool.requirements.waiting_for_local else 30})
            await ws.close(code=REFUSED, message=b"refused")
            return ws
        peer = RemotePeer(self._unique(name), capacity, ws.send_bytes, ws.close, identity=sources,
                          on_rtt=lambda n, s: self.rtt.labels(n).observe(s))
        self._tokens_of[peer] = digest
        await ws.send_json({"type": "welcome", "protocol": PROTOCOL, "name": peer.name})
        await self.pool.add(peer)
        log.info("worker %s connected from %s (capacity %d frames)", peer.name, request.remote, capacity)
        reason = "connection closed"
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    reason = f"unexpected {msg.type.name} message"
                    break
                try:
                    peer.on_message(msg.data)
                except ProtocolError as exc:
                    reason = f"protocol error: {exc}"
                    break
            else:
                if ws.exception() is not None:
                    reason = f"{ws.exception()}"
        finally:
            peer.lost(reason)
            self._tokens_of.pop(peer, None)
            await self.pool.remove(peer)
            if not ws.closed:
                await ws.close()
            log.warning("worker %s disconnected: %s", peer.name, peer.lost_reason or reason)
        return ws

    async def close(self) -> None:
        for task in list(self._closing):
            await task


class _WorkerGauges(Collector):
    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        peers = self._pool.peers
        connected = GaugeMetricFamily("ffp_workers_connected", "Remote workers connected (and ready)")
        connected.add_metric([], float(sum(1 for p in peers if p.remote and p.ready)))
        yield connected
        inflight = GaugeMetricFamily("ffp_worker_frames_in_flight", "Frames sent to a worker, not yet scored", labels=["worker"])
        for peer in peers:
            inflight.add_metric([peer.name], float(peer.inflight))
        yield inflight


def add_worker_route(app: web.Application, hub_of: Any) -> None:
    """``GET /api/v1/workers`` on ``app``; ``hub_of(request)`` finds the hub (None: 404)."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        hub = hub_of(request)
        if hub is None:
            return web.json_response({"error": "this process takes no workers (no workers: section)"}, status=404)
        return await hub.handle(request)

    app.router.add_get(PATH, endpoint)


def reload_workers(hub: WorkerHub | None, current: Config, path: str | None) -> Config:
    """SIGHUP: read and validate the whole config again; apply its ``workers`` section (tokens). On any
    error keep the old config and log why. Returns the config now in force."""
    from .config import ConfigError, load_config

    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("config reload failed, keeping the old config: %s", exc)
        return current
    if hub is not None:
        revoked = hub.apply(new.workers)
        log.info("config reloaded from %s: %d worker token(s), %d worker(s) disconnected", new.source,
                 len(new.workers.tokens), revoked)
    from dataclasses import replace

    others = replace(new, workers=current.workers) != current
    if others:
        log.warning("config reload: only workers.tokens take effect without a restart; restart for the other changes")
    return replace(current, workers=new.workers)


def reload_on_sighup(services: Any) -> None:
    """SIGHUP re-reads ``services.config.source``: worker tokens change (revoked ones disconnect) at once."""

    def reload() -> None:
        services.config = reload_workers(services.hub, services.config, services.config.source)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError) as exc:  # not the main thread (an embedding test harness)
        log.info("no config reload on SIGHUP here: %s", exc)


# --- the worker process -------------------------------------------------------------------------------


def socket_url(url: str) -> str:
    """``http(s)://host:port[/path]`` or ``ws(s)://...`` -> the websocket URL of the workers endpoint."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class Worker:
    """``fedi-filter worker``: one Classifier, a websocket to each proxy, reconnecting with backoff."""

    def __init__(self, classifier: Classifier, urls: list[str], token: str, *, name: str, ca: str | None = None,
                 heartbeat_s: float = 10.0, max_message_bytes: int = 64 << 20) -> None:
        self.classifier = classifier
        self.urls = [socket_url(u) for u in urls]
        self._token = token
        self.name = name
        self.ssl = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        self.heartbeat_s = heartbeat_s
        self.max_message_bytes = max_message_bytes
        self.capacity = classifier.settings.max_queue
        self.inflight = 0
        self.hello: dict[str, Any] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._decode_limit = classifier.settings.max_queue

    async def prepare(self) -> None:
        await self.classifier.start()
        await self.classifier.wait_ready()
        sources = await asyncio.get_running_loop().run_in_executor(None, classifier_identity, self.classifier)
        self.hello = {"type": "hello", "protocol": PROTOCOL, "name": self.name, "capacity": self.capacity,
                      "sources": sources}
        log.info("worker %s ready: %s", self.name, {k: v["fingerprint"][:19] for k, v in sources.items()})

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._dial(session, url) for url in self.urls))

    async def _dial(self, session: aiohttp.ClientSession, url: str) -> None:
        backoff = 0.5
        while True:
            try:
                async with session.ws_connect(url, headers={"Authorization": f"Bearer {self._token}"},
                                              heartbeat=self.heartbeat_s, max_msg_size=self.max_message_bytes,
                                              ssl=self.ssl if url.startswith("wss:") else True) as ws:
                    await ws.send_json(self.hello)
                    msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
                    answer = json.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else {}
                    if answer.get("type") != "welcome":
                        log.error("%s refused this worker: %s", url, answer.get("reason") or f"closed ({ws.close_code})")
                        retry = answer.get("retry_s")
                        backoff = float(retry) if isinstance(retry, int | float) and 1 <= retry <= 300 else 30.0
                    else:
                        log.info("connected to %s as %s", url, answer.get("name"))
                        backoff = 0.5
                        reason = await self._serve(ws)
                        log.warning("connection to %s ended: %s", url, reason)
            except aiohttp.WSServerHandshakeError as exc:
                log.error("%s refused the connection: HTTP %s%s", url, exc.status,
                          " (wrong token?)" if exc.status == 401 else "")
                backoff = max(backoff, 5.0)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("cannot reach %s: %s", url, exc)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 30.0)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        jobs: set[asyncio.Task[None]] = set()
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    return f"unexpected {msg.type.name} message"
                try:
                    header, blob = unpack(msg.data)
                    job, sources = header.get("id"), header.get("sources")
                    if header.get("type") != "score" or type(job) is not int:
                        raise ProtocolError("expected a score message")
                    if not isinstance(sources, list) or not sources or not set(sources) <= set(self.classifier.sources):
                        raise ProtocolError("unknown sources")
                except ProtocolError as exc:
                    return f"protocol error: {exc}"
                count = len(header.get("frames") or ())
                if self.inflight + count > self.capacity:
                    await ws.send_json({"type": "error", "id": job, "error": "overloaded", "detail": "worker full"})
                    continue
                task = asyncio.get_running_loop().create_task(self._score(ws, job, header.get("frames"), blob, sources, count))
                jobs.add(task)
                task.add_done_callback(jobs.discard)
            return f"closed ({ws.close_code})"
        finally:
            for task in jobs:
                task.cancel()

    async def _score(self, ws: aiohttp.ClientWebSocketResponse, job: int, meta: Any, blob: bytes, sources: list[str],
                     count: int) -> None:
        self.inflight += count
        try:
            try:
                if isinstance(meta, list) and all(isinstance(m, list) and m[2:3] == ["raw"] for m in meta):
                    frames = decode_frames(meta, blob, self.capacity)  # raw pixels: no decoding to move off the loop
                else:
                    frames = await asyncio.get_running_loop().run_in_executor(None, decode_frames, meta, blob,
                                                                              self.capacity)
                scores = await self.classifier.score(frames, sources)
                reply: dict[str, Any] = {"type": "result", "id": job, "scores": nest(scores)}
            except ProtocolError as exc:
                reply = {"type": "error", "id": job, "error": "failed", "detail": str(exc)}
            except Overloaded:
                reply = {"type": "error", "id": job, "error": "overloaded"}
            except ClassifierNotReady:
                reply = {"type": "error", "id": job, "error": "not_ready"}
            except Exception as exc:  # a model crash fails this batch, never the worker
                log.exception("scoring failed")
                reply = {"type": "error", "id": job, "error": "failed", "detail": type(exc).__name__}
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json(reply)
        finally:
            self.inflight -= count


async def run_worker(config: Config, urls: list[str], token: str, *, ca: str | None, name: str | None) -> int:
    from .app import build_classifier

    classifier = build_classifier(config, None)
    worker = Worker(classifier, urls, token, name=name or socket.gethostname()[:64] or "worker", ca=ca,
                    heartbeat_s=config.workers.heartbeat_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await worker.prepare()
        except ClassifierNotReady as exc:
            log.error("worker cannot start: %s", exc)
            return 1
        runner = loop.create_task(worker.run())
        stopper = loop.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (runner, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return 0
    finally:
        await classifier.close()
