"""The egress proxy on loopback for tests: the real mitmproxy with our addon, and clients fetching through it."""

from __future__ import annotations

import asyncio
import copy
import gc
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import trustme

from proxy.config import parse_config
from proxy.egress import Egress
from tests.support.configs import FACES, config_dict


def egress_config(tmp_path: Path, ca_file: str, **egress: Any) -> dict:
    pol = copy.deepcopy(FACES)
    pol["inbox"] = "strip"
    raw = config_dict(pol, fetch={"allow_networks": ["127.0.0.1/32"]})
    raw["server"]["audit_db"] = str(tmp_path / "audit.sqlite3")
    raw["egress"] = {"listen": "127.0.0.1:0", "confdir": str(tmp_path / "mitm"), "admin_listen": "", "upstream_ca": ca_file, **egress}
    return raw


def make_ca(tmp_path: Path) -> tuple[trustme.CA, str]:
    authority = trustme.CA()
    path = tmp_path / "test-ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, str(path)


async def running(raw: dict) -> AsyncIterator[tuple[Egress, str]]:
    egress = Egress(parse_config(raw))
    await egress.start()
    await egress.services.scorer.wait_ready()
    task = asyncio.ensure_future(egress.run())
    for _ in range(100):
        if egress.listen_addrs():
            break
        await asyncio.sleep(0.05)
    host, port = egress.listen_addrs()[0]
    try:
        yield egress, f"http://127.0.0.1:{port}"
    finally:
        egress.shutdown()
        await task
        await egress.close()
        # mitmproxy's shutdown drops its open upstream connections without closing them; collect them now,
        # quietly, so their ResourceWarnings do not land on whichever test runs next
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def client_ssl(tmp_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tmp_path / "mitm" / "mitmproxy-ca-cert.pem"))


async def get(proxy: str, url: str, **kw: Any) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, proxy=proxy, **kw) as resp:
        return resp.status, await resp.read(), resp.headers
