"""Memory of `fedi-filter serve` under 50 concurrent 20 MiB uploads: every body is read whole to be judged,
so without admission control memory would grow with the number of uploads in flight. Bodies are admitted
against `server.max_inflight_bytes` (default 256 MiB); the goal is a peak RSS within
idle RSS + max_inflight_bytes + 300 MiB.

    .venv/bin/python bench/bench_memory.py [--uploads 50] [--mb 20] [--inflight-mb 256]

Each upload is a multipart body: a benign photo (judged by the face stand-in policy, NudeNet) and a
20 MiB text field (held, not judged). The proxy runs as its own process, so its memory is measured alone
(VmRSS sampled every 50 ms, and VmHWM from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from bench.common import free_port, machine, rss_kb, serve_process, start_app
from tests.support.configs import FACES
from tests.support.photos import photo

ROOT = Path(__file__).resolve().parent.parent


def backend_app() -> web.Application:
    async def sink(request: web.Request) -> web.Response:
        n = 0
        async for chunk in request.content.iter_chunked(1 << 20):
            n += len(chunk)
        return web.json_response({"bytes": n})

    app = web.Application(client_max_size=1 << 31)
    app.router.add_route("*", "/{tail:.*}", sink)
    return app


def body(mb: int) -> tuple[bytes, str]:
    boundary = "benchboundary"
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n".encode() + photo("coffee") + b"\r\n",
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\n".encode() + b"x" * (mb << 20) + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploads", type=int, default=50)
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--inflight-mb", type=int, default=256)
    args = ap.parse_args()

    runner, bport = await start_app(backend_app())
    pport = free_port()
    cfg = {
        "server": {"listen": f"127.0.0.1:{pport}", "audit_db": "", "max_body_bytes": (args.mb + 1) << 20,
                   "max_inflight_bytes": args.inflight_mb << 20},
        "classifier": {"model": "ffp-tiny-clip", "pretrained": "random", "device": "cpu", "detector_threads": 1},
        "policies": {"p": {**FACES, "timeout_ms": 60_000, "limits": {"max_bytes": (args.mb + 1) << 20}}},
        "instances": [{"name": "social", "kind": "mastodon", "hosts": ["social.test"],
                       "upstream": f"http://127.0.0.1:{bport}", "policy": "p"}],
    }
    data, ctype = body(args.mb)
    try:
        async with serve_process(cfg) as proc, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.uploads)) as session:
            url = f"http://127.0.0.1:{pport}/api/v2/media"
            headers = {"Host": "social.test", "Content-Type": ctype}
            async with session.post(url, data=data, headers=headers) as r:  # warm-up: one judged upload
                assert r.status == 200, await r.text()
            idle = rss_kb(proc.pid)["VmRSS"]
            statuses: collections.Counter[int] = collections.Counter()

            async def one() -> None:
                async with session.post(url, data=data, headers=headers) as r:
                    await r.read()
                    statuses[r.status] += 1

            t0 = time.perf_counter()
            task = asyncio.ensure_future(asyncio.gather(*(one() for _ in range(args.uploads))))
            peak = idle
            while not task.done():
                peak = max(peak, rss_kb(proc.pid)["VmRSS"])
                await asyncio.sleep(0.05)
            await task
            seconds = time.perf_counter() - t0
            hwm = rss_kb(proc.pid)["VmHWM"]
            print(f"machine: {machine()}")
            print(f"{args.uploads} concurrent {args.mb} MiB uploads, max_inflight_bytes {args.inflight_mb} MiB: "
                  f"{dict(statuses)} in {seconds:.1f} s")
            print(f"proxy RSS: idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB sampled, VmHWM {hwm / 1024:.0f} MiB; "
                  f"growth {(max(peak, hwm) - idle) / 1024:.0f} MiB against a bound of "
                  f"{args.inflight_mb + 300} MiB (max_inflight_bytes + 300 MiB)")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
