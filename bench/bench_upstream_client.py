"""CPU per proxied request of the two upstream clients `serve` uses: aiohttp's client (requests with a
body, HEAD, websockets, https) and the lean client (`proxy/upstream.py`, bodiless GETs), side by side.

    .venv/bin/python bench/bench_upstream_client.py [--requests 16000] [--rounds 3]

Both run 16 coroutines of small GETs against the same backend (a small aiohttp app in its own process,
as in bench_nginx.py) on uvloop, with the headers serve sends; CPU is this process's `time.process_time()`
per request, so the backend's own cost is not counted. Medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_nginx import aiohttp_backend
from bench.common import free_port, machine
from proxy.upstream import UpstreamPool

HEADERS = {"Host": "social.test", "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http",
           "X-Forwarded-Host": "social.test", "Accept": "*/*"}


async def cpu_per_request(one: Callable[[], Awaitable[None]], n: int) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(worker(50) for _ in range(16)))  # warm: connections open
    started = time.process_time()
    await asyncio.gather(*(worker(n // 16) for _ in range(16)))
    return (time.process_time() - started) / n * 1e6


async def measure(port: int, n: int, rounds: int) -> None:
    url = f"http://127.0.0.1:{port}"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512, limit_per_host=256), auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"), cookie_jar=aiohttp.DummyCookieJar())
    pool = UpstreamPool()

    async def with_aiohttp() -> None:
        async with session.request("GET", url + "/api/v1/timelines/public", headers=HEADERS, allow_redirects=False) as r:
            await r.read()

    async def with_lean() -> None:
        answer = await pool.get(url, "/api/v1/timelines/public", CIMultiDict(HEADERS))
        try:
            await answer.read()
        finally:
            answer.release()

    results: dict[str, list[float]] = {"aiohttp client": [], "lean client": []}
    try:
        for _ in range(rounds):
            results["aiohttp client"].append(await cpu_per_request(with_aiohttp, n))
            results["lean client"].append(await cpu_per_request(with_lean, n))
    finally:
        await session.close()
        pool.close()
    med = {name: statistics.median(v) for name, v in results.items()}
    for name, value in med.items():
        print(f"{name:15}: {value:6.1f} us of CPU per request (rounds: {', '.join(f'{v:.1f}' for v in results[name])})")
    print(f"lean / aiohttp: {med['lean client'] / med['aiohttp client']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    backend = aiohttp_backend(port)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        print(f"machine: {machine()}; {args.requests} small GETs, 16 at a time, {args.rounds} rounds")
        try:
            import uvloop
            uvloop.run(measure(port, args.requests, args.rounds))
        except ImportError:
            asyncio.run(measure(port, args.requests, args.rounds))
    finally:
        backend.terminate()
        backend.wait(10)


if __name__ == "__main__":
    main()
