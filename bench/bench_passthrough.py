"""Pass-through cost of the reverse proxy: requests/s and p50/p99 through `fedi-filter serve` vs direct to
the same backend, small and large bodies, side by side in one run; and the proxy's memory while it
streams a 1 GiB body (it must stay flat).

    .venv/bin/python bench/bench_passthrough.py [--small 2000] [--concurrency 16] [--large-mb 50] [--large 5] [--huge-mb 1024]

The proxy runs as its own process (`python -m proxy serve`), so its memory is measured alone (VmRSS and
VmHWM from /proc); the backend and the client run here, on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from bench.common import free_port, machine, pct, rss_kb, serve_process, start_app

ROOT = Path(__file__).resolve().parent.parent
BLOCK = bytes(range(256)) * 4096  # 1 MiB


def backend_app() -> web.Application:
    async def small(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def sink(request: web.Request) -> web.Response:
        h, n = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(1 << 20):
            h.update(chunk)
            n += len(chunk)
        return web.json_response({"sha256": h.hexdigest(), "bytes": n})

    async def download(request: web.Request) -> web.StreamResponse:
        mb = int(request.query["mb"])
        response = web.StreamResponse()
        response.content_length = mb * len(BLOCK)
        await response.prepare(request)
        for _ in range(mb):
            await response.write(BLOCK)
        return response

    app = web.Application()
    app.router.add_get("/api/v1/timelines/public", small)
    app.router.add_get("/download", download)
    app.router.add_post("/sink", sink)
    return app


async def small_requests(session: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int, conc: int) -> tuple[float, list[float]]:
    sem = asyncio.Semaphore(conc)
    lat: list[float] = []

    async def one() -> None:
        async with sem:
            t0 = time.perf_counter()
            async with session.get(url, headers=headers) as r:
                await r.read()
                assert r.status == 200
            lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0), lat


async def body_gen(mb: int):
    for _ in range(mb):
        yield BLOCK


async def large(session: aiohttp.ClientSession, url: str, headers: dict[str, str], mb: int, n: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url, data=body_gen(mb), headers={**headers, "Content-Length": str(mb * len(BLOCK))}) as r:
            body = await r.json()
            assert body["bytes"] == mb * len(BLOCK), body
        lat.append((time.perf_counter() - t0) * 1000)
    return n * mb / (sum(lat) / 1000), lat


async def download(session: aiohttp.ClientSession, url: str, headers: dict[str, str], mb: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    h, n = hashlib.sha256(), 0
    async with session.get(f"{url}?mb={mb}", headers=headers) as r:
        async for chunk in r.content.iter_chunked(1 << 20):
            h.update(chunk)
            n += len(chunk)
    assert n == mb * len(BLOCK), n
    took = time.perf_counter() - t0
    return mb / took, [took * 1000]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--large-mb", type=int, default=50)
    ap.add_argument("--large", type=int, default=5)
    ap.add_argument("--huge-mb", type=int, default=1024)
    args = ap.parse_args()

    runner, bport = await start_app(backend_app())
    pport = free_port()
    cfg = {
        "server": {"listen": f"127.0.0.1:{pport}", "audit_db": ""},
        "classifier": {"model": "ffp-tiny-clip", "pretrained": "random", "device": "cpu"},
        "policies": {"p": {"concepts": {"c": {"prompts": {"a cat": 1.0}}}, "labels": {"l": {"all": [{"concept": "c"}]}}}},
        "instances": [{"name": "social", "kind": "mastodon", "hosts": ["social.test"],
                       "upstream": f"http://127.0.0.1:{bport}", "policy": "p"}],
    }
    try:
        async with serve_process(cfg) as proc, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
            print(f"machine: {machine()}")
            direct = (f"http://127.0.0.1:{bport}", {})
            proxied = (f"http://127.0.0.1:{pport}", {"Host": "social.test"})
            await small_requests(session, direct[0] + "/api/v1/timelines/public", {}, 200, args.concurrency)  # warm-up
            await small_requests(session, proxied[0] + "/api/v1/timelines/public", proxied[1], 200, args.concurrency)
            results = {}
            for name, (base, headers) in (("direct", direct), ("proxied", proxied)):
                rps, lat = await small_requests(session, base + "/api/v1/timelines/public", headers, args.small, args.concurrency)
                results[name] = rps
                print(f"small GET, {name:7}: {rps:8.0f} req/s   p50 {pct(lat, 50):6.2f} ms   p99 {pct(lat, 99):6.2f} ms"
                      f"   ({args.small} requests, concurrency {args.concurrency})")
            print(f"small GET through the proxy: {results['proxied'] / results['direct']:.2f}x the direct rate")
            for name, (base, headers) in (("direct", direct), ("proxied", proxied)):
                mbps, lat = await large(session, base + "/sink", headers, args.large_mb, args.large)
                results[name] = mbps
                print(f"{args.large_mb} MiB POST, {name:7}: {mbps:8.0f} MiB/s   p50 {pct(lat, 50):7.1f} ms   p99 {pct(lat, 99):7.1f} ms")
            print(f"{args.large_mb} MiB POST through the proxy: {results['proxied'] / results['direct']:.2f}x the direct rate")

            huge = (("POST (upload)", large(session, proxied[0] + "/sink", proxied[1], args.huge_mb, 1)),
                    ("GET (download, the lean client)", download(session, proxied[0] + "/download", proxied[1], args.huge_mb)))
            for what, work in huge:
                before = rss_kb(proc.pid)
                peak = before["VmRSS"]
                done = asyncio.ensure_future(work)
                while not done.done():
                    peak = max(peak, rss_kb(proc.pid)["VmRSS"])
                    await asyncio.sleep(0.1)
                mbps, _ = done.result()
                after = rss_kb(proc.pid)
                print(f"{args.huge_mb} MiB {what} streamed through the proxy at {mbps:.0f} MiB/s: proxy RSS "
                      f"{before['VmRSS'] / 1024:.0f} MiB before, {peak / 1024:.0f} MiB peak while streaming, "
                      f"{after['VmRSS'] / 1024:.0f} MiB after (growth {(peak - before['VmRSS']) / 1024:.1f} MiB)")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
