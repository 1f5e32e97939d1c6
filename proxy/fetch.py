"""Every fetch the proxy makes itself (URL ingestion, inbox media), made SSRF-safe.

- Only http and https URLs, to ports a browser would use or an explicit one.
- Every address a name resolves to must be globally routable (no private, loopback, link-local,
  multicast, reserved, shared or metadata address, in IPv4, IPv6 or IPv4-mapped IPv6), unless it lies in
  ``fetch.allow_networks``. The check runs inside the connector's resolver, so the connection goes to the
  very address that was checked (no DNS rebinding between check and connect); IP literals are checked
  before any connection is made.
- Redirects are followed by hand, each target checked again, at most ``fetch.max_redirects``.
- Bytes and time are capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from .config import FetchConfig
from .verdict import FetchErrorKind

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """A fetch that did not give us the bytes; ``kind`` says why (:class:`FetchErrorKind`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = FetchErrorKind(kind)


class BlockedAddress(Exception):
    """Raised by the resolver for a non-public address; deliberately not an OSError, so aiohttp does not
    wrap it into a DNS error."""


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def address_allowed(ip: IPAddress, allow: tuple[Network, ...] = ()) -> bool:
    if any(ip in net for net in allow if net.version == ip.version):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is None and (ip in NAT64 or ip in NAT64_LOCAL or ip in IPV4_COMPATIBLE):
            mapped = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # NAT64 (RFC 6052) and IPv4-compatible forms
        if mapped is not None:
            return address_allowed(mapped, allow)
    return ip.is_global and not ip.is_multicast


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and refuses the whole name if any address it yields is not allowed."""

    def __init__(self, allow: tuple[Network, ...], inner: AbstractResolver | None = None) -> None:
        self._allow = allow
        self._inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if self._inner is None:  # made on first use: aiohttp's resolvers bind the running loop
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        for r in results:
            ip = ipaddress.ip_address(r["host"].split("%", 1)[0])
            if not address_allowed(ip, self._allow):
                raise BlockedAddress(f"{host} resolves to {ip}, which is not a public address")
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


@dataclass(frozen=True)
class Fetched:
    url: str
    status: int
    body: bytes
    content_type: str | None


def check_url(url: str, allow: tuple[Network, ...]) -> None:
    """Refuse non-http(s) URLs and IP-literal hosts that are not public (names are checked on resolve)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("bad_url", f"{url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("bad_url", f"{url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise FetchError("bad_url", f"{url!r} carries credentials")
    if port == 0:
        raise FetchError("bad_url", f"{url!r} has port 0")
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    if not address_allowed(ip, allow):
        raise FetchError("blocked", f"{url!r} points at {ip}, which is not a public address")


class Fetcher:
    def __init__(self, config: FetchConfig, *, resolver: AbstractResolver | None = None, user_agent: str = "fedi-filter-proxy") -> None:
        self.config = config
        self._resolver = GuardedResolver(config.allow_networks, resolver)
        self._session: aiohttp.ClientSession | None = None
        self._user_agent = user_agent

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=self._resolver, limit=64, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_ms / 1000),
            headers={"User-Agent": self._user_agent},
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str, *, accept: str | None = None) -> Fetched:
        """GET ``url`` within the limits. Raises :class:`FetchError`."""
        assert self._session is not None, "Fetcher.start() first"
        try:
            async with asyncio.timeout(self.config.timeout_ms / 1000):
                return await self._follow(url, accept)
        except TimeoutError:
            raise FetchError("timeout", f"{url}: no answer within {self.config.timeout_ms} ms") from None

    async def _follow(self, url: str, accept: str | None) -> Fetched:
        assert self._session is not None
        headers = {"Accept": accept} if accept else None
        for _ in range(self.config.max_redirects + 1):
            check_url(url, self.config.allow_networks)
            try:
                async with self._session.get(url, allow_redirects=False, headers=headers) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise FetchError("http", f"{url}: HTTP {resp.status}")
                    length = resp.content_length
                    if length is not None and length > self.config.max_bytes:
                        raise FetchError("too_large", f"{url}: {length} bytes is over the limit of {self.config.max_bytes}")
                    body = await self._read(resp, url)
                    return Fetched(str(resp.url), resp.status, body, resp.headers.get("Content-Type"))
            except BlockedAddress as exc:
                raise FetchError("blocked", str(exc)) from None
            except aiohttp.ClientError as exc:
                raise FetchError("network", f"{url}: {exc.__class__.__name__}: {exc}") from None
        raise FetchError("redirects", f"more than {self.config.max_redirects} redirects")

    async def _read(self, resp: Any, url: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > self.config.max_bytes:
                raise FetchError("too_large", f"{url}: over the limit of {self.config.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
