"""SSRF-safe fetching against a real media host on loopback. Private addresses are refused before any
connection is made; the test never sends a packet anywhere but 127.0.0.1."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.config import FetchConfig
from proxy.fetch import Fetcher, FetchError, address_allowed
from tests.support.hosts import HITS, StaticResolver, media_app
from tests.support.photos import photo

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.mark.parametrize(
    ("ip", "ok"),
    [
        ("93.184.216.34", True), ("2606:4700::1111", True),
        ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
        ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
        ("255.255.255.255", False), ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::", False),
        ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("::ffff:93.184.216.34", True),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
        ("ff02::1", False),
    ],
)
def test_address_rules(ip: str, ok: bool) -> None:
    assert address_allowed(ipaddress.ip_address(ip)) is ok


def test_allow_networks_exempt() -> None:
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), LOOPBACK)
    assert not address_allowed(ipaddress.ip_address("127.0.0.2"), LOOPBACK)
    assert address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), LOOPBACK)


async def fetcher(allow=LOOPBACK, resolver=None, **kw) -> Fetcher:
    f = Fetcher(FetchConfig(allow_networks=allow, **kw), resolver=resolver)
    await f.start()
    return f


async def test_fetch_from_an_allowed_host(aiohttp_server) -> None:
    server = await aiohttp_server(media_app())
    f = await fetcher()
    got = await f.fetch(f"http://127.0.0.1:{server.port}/img/coffee.jpg")
    await f.close()
    assert got.body == photo("coffee") and got.status == 200


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:{port}/img/coffee.jpg", "http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data/",
     "http://[::1]:{port}/img/coffee.jpg", "http://[::ffff:10.0.0.1]/x.jpg", "http://0x7f.1/x.jpg"],
)
async def test_private_literal_addresses_are_never_fetched(aiohttp_server, url: str) -> None:
    server = await aiohttp_server(media_app())
    f = await fetcher(allow=())
    with pytest.raises(FetchError) as info:
        await f.fetch(url.format(port=server.port))
    await f.close()
    assert info.value.kind in ("blocked", "bad_url", "network")
    assert server.app[HITS] == {}


async def test_names_resolving_to_private_addresses_are_refused(aiohttp_server) -> None:
    server = await aiohttp_server(media_app())
    resolver = StaticResolver({"evil.test": "10.0.0.5", "meta.test": "169.254.169.254", "loop.test": "127.0.0.1"})
    f = await fetcher(allow=(), resolver=resolver)
    for host in ("evil.test", "meta.test", "loop.test"):
        with pytest.raises(FetchError) as info:
            await f.fetch(f"http://{host}:{server.port}/img/coffee.jpg")
        assert info.value.kind == "blocked", host
    await f.close()
    f = await fetcher(allow=())  # the system resolver: localhost is loopback
    with pytest.raises(FetchError) as info:
        await f.fetch(f"http://localhost:{server.port}/img/coffee.jpg")
    await f.close()
    assert info.value.kind == "blocked"
    assert server.app[HITS] == {}


async def test_redirects_are_checked_again(aiohttp_server) -> None:
    server = await aiohttp_server(media_app())
    base = f"http://127.0.0.1:{server.port}"
    f = await fetcher()
    got = await f.fetch(f"{base}/redirect?to=/img/rocket.jpg")
    assert got.body == photo("rocket")
    for target in (f"http://127.0.0.2:{server.port}/img/coffee.jpg", "http://10.9.8.7/x.jpg", "http://169.254.169.254/"):
        with pytest.raises(FetchError) as info:
            await f.fetch(f"{base}/redirect?to={target}")
        assert info.value.kind == "blocked", target
    await f.close()
    f = await fetcher(max_redirects=1)
    with pytest.raises(FetchError) as info:
        await f.fetch(f"{base}/redirect?to=/redirect%3Fto%3D/img/coffee.jpg")
    await f.close()
    assert info.value.kind == "redirects"
    assert server.app[HITS] == {"rocket": 1}


async def test_bytes_and_time_are_capped(aiohttp_server) -> None:
    server = await aiohttp_server(media_app())
    base = f"http://127.0.0.1:{server.port}"
    f = await fetcher(max_bytes=1024 * 1024, timeout_ms=500)
    with pytest.raises(FetchError) as info:
        await f.fetch(f"{base}/big?mb=3")
    assert info.value.kind == "too_large"
    with pytest.raises(FetchError) as info:
        await f.fetch(f"{base}/slow?s=3")
    assert info.value.kind == "timeout"
    for bad in ("file:///etc/passwd", "gopher://127.0.0.1/", "http://user:pw@127.0.0.1/", "not a url"):
        with pytest.raises(FetchError) as info:
            await f.fetch(bad)
        assert info.value.kind == "bad_url"
    await f.close()
