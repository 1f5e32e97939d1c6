"""`fedi-filter egress`: the backend's outbound HTTP(S) proxy (mitmproxy with our addon).

Mastodon, Misskey and Akkoma fetch remote media themselves: attachments of federated posts, avatars and
headers, custom emoji, link-preview images. Set their outbound proxy to this, and the media they fetch
is judged by the same verdict pipeline before they can store it:

- URLs already denied (an inbox ``strip``, a flagged fetch; shared through the audit store) are refused
  before any upstream connection; so are targets that are not public addresses (a backend behind a proxy
  skips its own private-address checks).
- Responses are sniffed: media (judged by its bytes, whatever the Content-Type says) is buffered up to
  ``egress.max_bytes`` and judged; a flagged one is replaced by a 403 with an ``X-Fedi-Filter`` reason.
  Text responses (ActivityPub JSON, HTML) stream through; if one turns out to start with media bytes,
  its body is cut (it cannot be judged once streamed).
- HTTPS is intercepted with mitmproxy's CA (``egress.confdir``); ``egress.ignore_hosts`` pass through
  as plain tunnels.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from mitmproxy import http
from mitmproxy.options import Options
from mitmproxy.tools.dump import DumpMaster

from .app import SERVICES, add_health_routes, build_services
from .workers import reload_on_sighup
from .config import Config, ConfigError, EgressConfig, Instance
from .fetch import BlockedAddress, GuardedResolver, address_allowed
from .media import sniff
from .metrics import Metrics
from .pipeline import Pipeline
from .verdict import Action, ErrorKind, InvalidKind, Verdict

log = logging.getLogger(__name__)

STREAMED_TYPES = re.compile(r"^\s*(text/html|application/([\w.+-]*\+)?json)\s*(;|$)", re.I)
"""Responses streamed through (ActivityPub JSON, web pages): a backend never stores them as media. Every
other response (text/plain, XML, SVG, archives, anything) is buffered and judged: an SVG or a zip of
images can be labelled anything."""
TEXT_TYPES = re.compile(r"^\s*(text/|application/([\w.+-]*\+)?(json|xml|javascript|ecmascript)\b)", re.I)
SNIFF_BYTES = 32
HEADER = "X-Fedi-Filter"
MARK = "fedi_filter_refused"
"""flow.metadata key of our own refusals (mitmproxy's addons keep their state on the flow)."""
TEXT = "fedi_filter_small_text"
"""flow.metadata key of a small text response buffered whole (sniffed in the response hook)."""
SMALL_TEXT = 65536


class _CutDisguisedMedia:
    """A mitmproxy stream callable for text responses: holds the first bytes back until they can be
    sniffed, then passes the body on; if it starts like media it is cut to nothing (a streamed body cannot
    be judged, and media disguised as text is hostile)."""

    def __init__(self, url: str, on_cut: Callable[[str, str], None]) -> None:
        self.url = url
        self.head = b""
        self.state = "sniffing"
        self.on_cut = on_cut

    def __call__(self, data: bytes) -> list[bytes]:
        # a list, never b"": an empty chunk would read as the end of a chunked body
        if self.state == "pass":
            return [data] if data else []
        if self.state == "cut":
            return []
        self.head += data
        if len(self.head) < SNIFF_BYTES and data:
            return []
        mime = sniff(self.head)
        if mime is not None:
            self.state = "cut"
            self.on_cut(self.url, mime)
            return []
        self.state = "pass"
        out, self.head = self.head, b""
        return [out] if out else []


class EgressAddon:
    """mitmproxy addon: refuse denied and private targets, judge media responses."""

    def __init__(self, pipeline: Pipeline, instance: Instance, settings: EgressConfig, metrics: Metrics,
                 allow: tuple[Any, ...]) -> None:
        self.pipeline = pipeline
        self.instance = instance
        self.settings = settings
        self.metrics = metrics
        self.allow = allow
        self.resolver = GuardedResolver(allow)
        self.slots = asyncio.Semaphore(settings.max_concurrent)

    def _refuse(self, flow: http.HTTPFlow, status: int, reason: str) -> None:
        """Answer with our refusal; the mark lives on the flow, never in a header a peer could send."""
        flow.metadata[MARK] = reason
        flow.response = http.Response.make(status, f"refused by fedi-filter-proxy: {reason}\n".encode(),
                                           {"Content-Type": "text/plain; charset=utf-8", HEADER: reason[:200]})

    async def _private_target(self, host: str, port: int) -> str | None:
        """Why ``host`` must not be reached (an address that is not public), or None."""
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass  # a name: resolved below
        else:  # an address is what it is: no resolver thread needed
            return None if address_allowed(ip, self.allow) else f"{ip} is not a public address"
        try:
            await self.resolver.resolve(host.strip("[]"), port, socket.AF_UNSPEC)
        except BlockedAddress as exc:
            return str(exc)
        except OSError:
            return None  # mitmproxy reports the DNS failure itself
        return None

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """CONNECT (HTTPS, and ignored hosts' tunnels): refuse private targets before the tunnel opens."""
        why = await self._private_target(flow.request.host, flow.request.port)
        if why:
            self.metrics.egress.labels("blocked").inc()
            log.warning("egress: refused CONNECT %s:%d: %s", flow.request.host, flow.request.port, why)
            self._refuse(flow, 403, f"blocked: {why}")

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Before any upstream connection: denied URLs and private targets are refused."""
        if flow.response or flow.error or not flow.live:
            return
        url = flow.request.pretty_url
        reason = await self.pipeline.url_denial(url, self.instance.policy.name)
        if reason is not None:
            self.metrics.egress.labels("denied_url").inc()
            log.info("egress: refused %s: denied (%s)", url, reason)
            self._refuse(flow, 403, f"denied: {reason}")
            return
        why = await self._private_target(flow.request.host, flow.request.port)
        if why:
            self.metrics.egress.labels("blocked").inc()
            log.warning("egress: refused %s: %s", url, why)
            self._refuse(flow, 403, f"blocked: {why}")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """ActivityPub JSON and HTML stream through (sniffed), unless small: that is buffered and sniffed
        whole (one write, its Content-Length kept); everything else is buffered for judgement."""
        assert flow.response is not None
        ctype = flow.response.headers.get("Content-Type", "")
        if STREAMED_TYPES.match(ctype) and not flow.response.headers.get("Content-Encoding"):
            length = flow.response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) <= SMALL_TEXT:
                flow.metadata[TEXT] = True
                return
            flow.response.stream = _CutDisguisedMedia(flow.request.pretty_url, self._on_cut)
            # the body may be cut short, so its length is not promised in advance
            flow.response.headers.pop("Content-Length", None)
            if flow.request.http_version == "HTTP/1.1":
                flow.response.headers["Transfer-Encoding"] = "chunked"

    def _on_cut(self, url: str, mime: str) -> None:
        self.metrics.egress.labels("disguised_media").inc()
        log.warning("egress: %s was labelled text but starts like %s: body cut", url, mime)

    async def response(self, flow: http.HTTPFlow) -> None:
        """Judge media bodies; replace a refused one with a 403 and deny its URL."""
        resp = flow.response
        if resp is None or flow.error or MARK in flow.metadata or resp.stream or flow.request.method == "HEAD":
            return
        try:
            body = resp.content or b""  # Content-Encoding undone: judge what the backend will decode
        except ValueError as exc:  # an encoding we cannot undo: we cannot judge it, so it does not pass
            self.metrics.egress.labels("undecodable").inc()
            log.warning("egress: %s has a Content-Encoding that cannot be decoded (%s): refused",
                        flow.request.pretty_url, exc)
            self._refuse(flow, 502, f"undecodable Content-Encoding {resp.headers.get('Content-Encoding', '')!r}")
            return
        url = flow.request.pretty_url
        mime = sniff(body)
        if mime is not None and flow.metadata.get(TEXT):  # labelled JSON/HTML, starts like media: cut, as a
            self._on_cut(url, mime)                         # streamed one is
            resp.content = b""
            return
        if mime is None:
            if TEXT_TYPES.match(resp.headers.get("Content-Type", "")) or not body:
                self.metrics.egress.labels("not_media").inc()
                return
            # binary, and no media we can decode: the policy's on_unsupported (a backend may still store it)
            action = self.instance.policy.fallback(InvalidKind.UNSUPPORTED)
            self.metrics.egress.labels("unsupported").inc()
            if action is Action.ACCEPT:
                return
            log.info("egress: %s is binary but no media we can judge (%s): on_unsupported refuses it", url,
                     resp.headers.get("Content-Type", "no type"))
            self._refuse(flow, 403, "reject: unsupported binary content")
            return
        try:
            verdict = await self._judge(body, url)
        except Exception:  # mitmproxy would log an addon's error and pass the response on, unjudged
            log.exception("egress: judging %s failed: refused", url)
            self.metrics.egress.labels("error").inc()
            self._refuse(flow, 502, "could not be judged")
            return
        if verdict.accepted:
            self.metrics.egress.labels("accepted").inc()
            return
        reason = f"{verdict.action}: {verdict.reason}"
        self.metrics.egress.labels("refused").inc()
        if verdict.denies_url:
            self.pipeline.deny_url(url, verdict, reason)
        self._refuse(flow, 403, reason)

    async def _judge(self, body: bytes, url: str) -> Verdict:
        policy = self.instance.policy
        started = time.perf_counter()
        try:
            async with asyncio.timeout(policy.timeout_ms / 1000):
                await self.slots.acquire()
        except TimeoutError:
            self.metrics.overload.labels("egress").inc()
            log.warning("egress: no judgement slot for %s within %d ms (all %d busy)", url, policy.timeout_ms,
                        self.settings.max_concurrent)
            return self.pipeline.no_verdict(self.instance, "egress", ErrorKind.OVERLOADED, "egress overloaded", url=url,
                                            started=started)
        try:
            return await self.pipeline.judge(body, self.instance, "egress", url=url)
        finally:
            self.slots.release()

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.error and "body_size_limit" in flow.error.msg:
            self.metrics.egress.labels("too_large").inc()
            log.warning("egress: %s refused: body over egress.max_bytes (%d)", flow.request.pretty_url, self.settings.max_bytes)


def write_ca_bundle(confdir: Path) -> Path | None:
    """Write ``confdir/ca-bundle.pem``: the system's CA bundle plus the interception CA, ready for a
    backend's SSL_CERT_FILE. Refreshed at every start (system CAs change)."""
    ca = confdir / "mitmproxy-ca-cert.pem"
    if not ca.exists():
        return None
    system = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    try:
        base = Path(system).read_text()
    except OSError:
        log.warning("egress: no system CA bundle at %s; ca-bundle.pem holds only the interception CA", system)
        base = ""
    bundle = confdir / "ca-bundle.pem"
    bundle.write_text(base.rstrip("\n") + "\n" + ca.read_text())
    return bundle


def mitm_options(settings: EgressConfig) -> dict[str, Any]:
    """mitmproxy options; set after its addons are loaded, since they declare most of them."""
    return {
        "listen_host": settings.host,
        "listen_port": settings.port,
        "confdir": settings.confdir,
        "ignore_hosts": list(settings.ignore_hosts),
        "body_size_limit": str(settings.max_bytes),
        "ssl_verify_upstream_trusted_ca": settings.upstream_ca,
        "connection_strategy": "lazy",
    }


class Egress:
    """The egress service: mitmproxy with the addon, the classifier, the shared audit store, and a small
    admin server (/healthz, /metrics) on ``egress.admin_listen``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.egress
        instance = config.instance_named(self.settings.instance) if self.settings.instance else config.instances[0]
        if instance is None:  # parse_config checks this; kept for configs built by hand
            raise ConfigError("egress.instance", f"no instance named {self.settings.instance!r}")
        self.instance: Instance = instance
        self.services = build_services(config, fetch=False)
        self.metrics = self.services.metrics
        self.pipeline = self.services.pipeline
        self.master: DumpMaster | None = None
        self.addon: EgressAddon | None = None
        self._admin: web.AppRunner | None = None

    async def start(self) -> None:
        await self.services.start()
        self.master = DumpMaster(Options(), with_termlog=False, with_dumper=False)
        self.master.options.update(**mitm_options(self.settings))  # creates the CA in confdir on first start
        write_ca_bundle(Path(self.settings.confdir))
        self.addon = EgressAddon(self.pipeline, self.instance, self.settings, self.metrics, self.config.fetch.allow_networks)
        self.master.addons.add(self.addon)
        if self.settings.admin_listen is not None:
            await self._start_admin(self.settings.admin_listen.host, self.settings.admin_listen.port)
        reload_on_sighup(self.services)

    async def _start_admin(self, host: str, port: int) -> None:
        app = web.Application()
        app[SERVICES] = self.services
        add_health_routes(app)
        self._admin = web.AppRunner(app, access_log=None)
        await self._admin.setup()
        await web.TCPSite(self._admin, host, port).start()

    def listen_addrs(self) -> list[tuple[str, int]]:
        assert self.master is not None
        server = self.master.addons.get("proxyserver")
        return [(str(a[0]), int(a[1])) for a in server.listen_addrs()]

    async def run(self) -> None:
        assert self.master is not None
        await self.master.run()

    def shutdown(self) -> None:
        if self.master is not None:
            self.master.shutdown()

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.cleanup()
        await self.services.close()


async def serve_egress(config: Config) -> None:
    egress = Egress(config)
    await egress.start()
    log.info("egress proxy for instance %s on %s:%d (CA in %s)", egress.instance.name, egress.settings.host,
             egress.settings.port, egress.settings.confdir)
    try:
        await egress.run()
    finally:
        await egress.close()
