"""How long hostile bodies stall `fedi-filter serve`'s event loop (every request to every instance waits
while it is blocked): pathological HTML in an inbox delivery, a multipart body made of delimiters, a large
JSON body, a gzip bomb. Prints the worst late wake-up of a 50 ms timer while each request is handled.

    .venv/bin/python bench/bench_hostile.py

The server runs in this process (its event loop is the one measured), with the face stand-in policy.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp.test_utils import TestClient, TestServer

from bench.common import machine
from tests.support.configs import FACES, make_config
from tests.support.hosts import Backend

AS = "https://www.w3.org/ns/activitystreams"


async def stall(client: TestClient, method: str, path: str, **kw: object) -> tuple[int, float, float]:
    task = asyncio.ensure_future(client.request(method, path, **kw))  # type: ignore[arg-type]
    started = time.monotonic()
    worst = 0.0
    while not task.done():
        t0 = time.monotonic()
        await asyncio.sleep(0.05)
        worst = max(worst, time.monotonic() - t0 - 0.05)
    resp = await task
    await resp.read()
    return resp.status, worst, time.monotonic() - started


async def main() -> None:
    from proxy.app import SERVICES
    from proxy.server import build_app

    backend = Backend()
    backend_server = TestServer(backend.app())
    await backend_server.start_server()
    cfg = make_config(FACES, instances=[{"name": "m", "kind": "mastodon", "hosts": ["masto.test"],
                                         "upstream": f"http://127.0.0.1:{backend_server.port}", "policy": "main"}])
    app = build_app(cfg)
    client = TestClient(TestServer(app))
    await client.start_server()
    await app[SERVICES].scorer.wait_ready()
    host = {"Host": "masto.test"}
    cases = {
        "inbox, content '<?' x 60,000 (120 KB)": ("POST", "/inbox", {"data": json.dumps(
            {"@context": AS, "type": "Create", "object": {"type": "Note", "content": "<?" * 60_000}}).encode(),
            "headers": {**host, "Content-Type": "application/activity+json"}}),
        "inbox, content '</' x 100,000 (200 KB)": ("POST", "/inbox", {"data": json.dumps(
            {"@context": AS, "type": "Create", "object": {"type": "Note", "content": "</" * 100_000}}).encode(),
            "headers": {**host, "Content-Type": "application/activity+json"}}),
        "multipart '--a' x 2,500,000 (7 MiB)": ("POST", "/api/v2/media", {"data": io.BytesIO(b"--a\r\n" + b"--a" * 2_500_000),
            "headers": {**host, "Content-Type": "multipart/form-data; boundary=a"}}),
        "JSON of 30 MiB of strings": ("POST", "/api/v1/statuses", {"data": json.dumps(["x" * 1000] * 30_000).encode(),
            "headers": {**host, "Content-Type": "application/json"}}),
        "gzip bomb (64 MiB of zeros)": ("POST", "/api/v2/media", {"data": gzip.compress(b"\0" * (64 << 20)),
            "headers": {**host, "Content-Type": "application/json", "Content-Encoding": "gzip"}}),
    }
    print(f"machine: {machine()}")
    print(f"{'body':<42} {'status':>6} {'answered in':>12} {'worst loop stall':>17}")
    for name, (method, path, kw) in cases.items():
        status, worst, total = await stall(client, method, path, **kw)
        print(f"{name:<42} {status:>6} {total:>10.2f} s {worst * 1000:>14.0f} ms")
    await client.close()
    await backend_server.close()


if __name__ == "__main__":
    asyncio.run(main())
