"""Real servers on loopback for tests: `fedi-filter serve` apps, a recording backend behind them, a
media host, and the clients that talk to them (pict-rs style raw bodies, multipart, signed deliveries)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from proxy.app import SERVICES, Services
from proxy.config import Config
from proxy.server import CONTEXT, build_app
from proxy.stores import SqliteStore
from tests.support import httpsig
from tests.support.configs import FACES, make_config
from tests.support.hosts import Backend, media_app

Client = Callable[..., Awaitable[TestClient]]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "activitypub"
HOSTS = {"mastodon": "masto.test", "lemmy": "lemmy.test", "pictrs": "pictrs.test", "misskey": "misskey.test",
         "akkoma": "akkoma.test", "gotosocial": "gts.test", "pixelfed": "pixelfed.test"}


async def start(aiohttp_client: Client, config: Config, *, ready: bool = True) -> TestClient:
    app = build_app(config)
    client = await aiohttp_client(app)
    if ready:
        await app[SERVICES].scorer.wait_ready()
    return client


def services(client: TestClient) -> Services:
    return client.app[SERVICES]


async def post_media(client: TestClient, data: Any, path: str = "/api/v1/validate", **kw: Any) -> tuple[int, dict]:
    resp = await client.post(path, data=data, headers={"Content-Type": "image/jpeg", **kw.pop("headers", {})}, **kw)
    return resp.status, await resp.json()


async def metric(client: TestClient, name: str, **labels: str) -> float:
    """The sum of a metric's samples matching ``labels``, read through GET /metrics like Prometheus does."""
    text = await (await client.get("/metrics")).text()
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def sample(svc: Services, name: str, **labels: str) -> float:
    """A metric sample through prometheus_client's public registry API."""
    return svc.metrics.registry.get_sample_value(name, labels) or 0.0


async def audit_rows(svc: Services, sql: str) -> list[dict[str, Any]]:
    """Rows of the SQLite store, after every pending write."""
    await svc.store.flush()
    assert isinstance(svc.store.store, SqliteStore)
    return await svc.store.store.query(sql)


class Env:
    """serve in front of a recording backend, every backend kind on its own Host, a media host beside."""

    def __init__(self, client: TestClient, backend: Backend, media: Any) -> None:
        self.client = client
        self.backend = backend
        self.media = media

    @property
    def services(self) -> Services:
        return services(self.client)

    def media_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.media.port}/img/{name}.jpg"

    async def request(self, kind: str, method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
        headers = {"Host": HOSTS[kind], **kw.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kw)


async def make_env(aiohttp_client: Client, aiohttp_server: Any, *, inbox: str = "reject", strip_uploads: bool = False,
                   prefetch: bool = True, mastodon_host: str = "masto.test", server: dict[str, Any] | None = None,
                   **policy_overrides: Any) -> Env:
    backend = Backend()
    backend_server = await aiohttp_server(backend.app())
    media = await aiohttp_server(media_app())
    upstream = f"http://127.0.0.1:{backend_server.port}"
    pol = copy.deepcopy(FACES)
    pol["inbox"] = inbox
    pol["prefetch"] = prefetch
    pol.update(policy_overrides)
    if strip_uploads:
        pol["actions"]["portrait"] = "strip"
    instances = [{"name": kind, "kind": kind, "hosts": [host if kind != "mastodon" else mastodon_host], "upstream": upstream,
                  "policy": "main"} for kind, host in HOSTS.items()]
    cfg = make_config(pol, fetch={"allow_networks": ["127.0.0.1/32"], "timeout_ms": 3000}, instances=instances,
                      **({"server": server} if server else {}))
    client = await start(aiohttp_client, cfg)
    return Env(client, backend, media)


def multipart(*files: tuple[str, str, bytes], extra: dict[str, str] | None = None) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    for k, v in (extra or {}).items():
        fd.add_field(k, v)
    for field, filename, data in files:
        fd.add_field(field, data, filename=filename, content_type="image/jpeg")
    return fd


KEY = httpsig.new_key()
PEM = httpsig.public_pem(KEY)


def delivery(env: Env, attachments: list[str]) -> bytes:
    """A Mastodon Create(Note) delivery with these attachment URLs."""
    doc = json.loads((FIXTURES / "mastodon_create_note.json").read_text())
    doc.pop("expected")
    doc["object"]["attachment"] = [{"type": "Document", "mediaType": "image/jpeg", "url": u} for u in attachments]
    doc["object"]["tag"] = []
    return json.dumps(doc).encode()


async def deliver(env: Env, body: bytes, path: str = "/users/alice/inbox") -> aiohttp.ClientResponse:
    """POST a delivery signed as a remote server signs it; the backend verifies the signature."""
    headers = httpsig.sign(KEY, "https://remote.example/users/bob#main-key", "POST", path, "masto.test", body)
    env.backend.verify = lambda seen: httpsig.verify(PEM, seen.method, seen.path_qs, seen.headers, seen.body)
    return await env.client.post(path, data=body, headers=headers)


async def drain(env: Env) -> None:
    """Wait for every background judgement and every pending store write."""
    ctx = env.client.app[CONTEXT]
    while ctx.background:
        await asyncio.gather(*list(ctx.background), return_exceptions=True)
    await env.services.store.flush()


async def raw_request(port: int, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request with the request target exactly as given (clients normalise ``//``, ``.``
    and ``..``; an attacker's client does not). Returns the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


def form_bytes(field: str, filename: str, data: bytes, boundary: str = "ffpboundary") -> tuple[bytes, str]:
    """A plain multipart/form-data body with one file part, and its Content-Type."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
