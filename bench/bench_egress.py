"""Cost of the egress proxy: latency and throughput of fetches through `fedi-filter egress` vs direct from
the same media host, side by side in one run.

    .venv/bin/python bench/bench_egress.py [--requests 200] [--concurrency 8] [--config config/cpu.yaml]

Three kinds of response: ActivityPub JSON (streamed through, sniffed), an image already judged (sha256
verdict from the cache: the proxy's own floor), and fresh images (each one judged by the config's
policy). The egress runs in this process on loopback (real mitmproxy), as in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import yaml
from aiohttp import web

from bench.common import PHOTOS, machine, pct, peak_rss_mb, photo_image
from proxy.config import parse_config
from proxy.egress import Egress


def media_app(n_images: int) -> web.Application:
    images = []
    for i in range(n_images):
        img = photo_image(PHOTOS[i % len(PHOTOS)]).copy()
        img.putpixel((0, 0), (i % 256, i // 256 % 256, 3))  # distinct bytes: no cache hits between them
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    note = {"type": "Note", "content": "<p>" + "hello " * 300 + "</p>"}

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=images[int(request.match_info["i"])], content_type="image/jpeg")

    async def activity(request: web.Request) -> web.Response:
        return web.json_response(note, content_type="application/activity+json")

    app = web.Application()
    app.router.add_get("/img/{i}.jpg", image)
    app.router.add_get("/note", activity)
    return app


async def measure(session: aiohttp.ClientSession, urls: list[str], proxy: str | None, conc: int) -> tuple[float, list[float]]:
    sem = asyncio.Semaphore(conc)
    lat: list[float] = []

    async def one(url: str) -> None:
        async with sem:
            t0 = time.perf_counter()
            async with session.get(url, proxy=proxy) as r:
                await r.read()
                assert r.status == 200, (url, r.status)
            lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(u) for u in urls))
    return len(urls) / (time.perf_counter() - t0), lat


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--fresh", type=int, default=64, help="fresh images judged through the egress")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--config", default="config/cpu.yaml", help="whose first policy judges the images")
    args = ap.parse_args()

    runner = web.AppRunner(media_app(args.fresh * 2 + 1), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    mport = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{mport}"

    raw = yaml.safe_load(Path(args.config).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        raw["server"] = {"listen": "127.0.0.1:0", "audit_db": ""}
        raw["fetch"] = {"allow_networks": ["127.0.0.1/32"]}
        raw["instances"] = raw["instances"][:1]
        raw["egress"] = {"listen": "127.0.0.1:0", "confdir": f"{tmp}/mitm", "admin_listen": ""}
        raw["policies"][raw["instances"][0]["policy"]]["timeout_ms"] = 60000
        egress = Egress(parse_config(raw))
        await egress.start()
        await egress.classifier.wait_ready()
        task = asyncio.ensure_future(egress.run())
        while not egress.listen_addrs():
            await asyncio.sleep(0.05)
        proxy = f"http://127.0.0.1:{egress.listen_addrs()[0][1]}"
        print(f"machine: {machine()}")
        print(f"policy: {args.config}, concurrency {args.concurrency}")
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
                notes = [f"{base}/note"] * args.requests
                cached = [f"{base}/img/0.jpg"] * args.requests
                await measure(session, cached[:1], proxy, 1)  # judge it once: later fetches hit the cache
                for label, urls in (("AP JSON (streamed)", notes), ("judged image (cache)", cached)):
                    rows = {}
                    for name, via in (("direct", None), ("egress", proxy)):
                        rps, lat = await measure(session, urls, via, args.concurrency)
                        rows[name] = (rps, lat)
                        print(f"{label:22} {name:6}: {rps:7.0f} req/s   p50 {pct(lat, 50):7.2f} ms   p99 {pct(lat, 99):7.2f} ms")
                    print(f"{label:22} added p50 {pct(rows['egress'][1], 50) - pct(rows['direct'][1], 50):.2f} ms; "
                          f"egress at {rows['egress'][0] / rows['direct'][0]:.2f}x the direct rate")
                fresh_direct = [f"{base}/img/{i}.jpg" for i in range(1, args.fresh + 1)]
                fresh_egress = [f"{base}/img/{i}.jpg" for i in range(args.fresh + 1, 2 * args.fresh + 1)]
                d_rps, d_lat = await measure(session, fresh_direct, None, args.concurrency)
                e_rps, e_lat = await measure(session, fresh_egress, proxy, args.concurrency)
                print(f"{'fresh images':22} direct: {d_rps:7.1f} req/s   p50 {pct(d_lat, 50):7.2f} ms   p99 {pct(d_lat, 99):7.2f} ms")
                print(f"{'fresh images':22} egress: {e_rps:7.1f} req/s   p50 {pct(e_lat, 50):7.2f} ms   p99 {pct(e_lat, 99):7.2f} ms"
                      f"   (each judged by the policy)")
        finally:
            egress.shutdown()
            await task
            await egress.close()
            await runner.cleanup()
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
