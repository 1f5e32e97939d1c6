"""Latency of POST /api/v1/validate at a given concurrency, against a real server on loopback.

    .venv/bin/python bench/bench_validate.py [--model ViT-B-32] [--concurrency 8] [--requests 64]

Prints, in one run: end-to-end latency p50/p99 of fresh images (decode + classify + HTTP), the verdict
latency the server measured inside the pipeline, the difference (what the endpoint adds around the
pipeline), and the latency of repeats answered from the sha256 cache (the endpoint's own floor).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import yaml

from bench.common import PHOTOS, machine, pct, peak_rss_mb, photo_image, start_app
from proxy.config import parse_config
from proxy.app import SERVICES
from proxy.server import build_app


def unique_jpegs(n: int) -> list[bytes]:
    """n distinct JPEGs (distinct sha256, so none is a cache hit) from the benign photos."""
    out = []
    for i in range(n):
        img = photo_image(PHOTOS[i % len(PHOTOS)]).copy()
        img.putpixel((0, 0), (i % 256, i // 256 % 256, 7))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def config(args: argparse.Namespace, policy: dict) -> dict:
    return {
        "server": {"listen": "127.0.0.1:0", "audit_db": ":memory:"},
        "classifier": {"model": args.model, "pretrained": args.pretrained or "random", "device": args.device,
                       "max_batch": 32, "max_wait_ms": 5},
        "policies": {"p": policy},
        "instances": [{"name": "pictrs", "kind": "pictrs", "upstream": "http://127.0.0.1:9", "policy": "p"}],
    }


CLIP_POLICY = {
    "concepts": {"c": {"prompts": {"a photo of a cat": 0.3, "a rocket": 0.3}}},
    "labels": {"flag": {"all": [{"concept": "c"}]}},
    "actions": {"flag": "reject"},
    "timeout_ms": 60000,
}


async def run(args: argparse.Namespace, raw_config: dict, label: str) -> None:
    app = build_app(parse_config(raw_config))
    runner, port = await start_app(app)
    await app[SERVICES].scorer.wait_ready()
    url = f"http://127.0.0.1:{port}/api/v1/validate"
    bodies = unique_jpegs(args.requests)
    sem = asyncio.Semaphore(args.concurrency)

    async def one(session: aiohttp.ClientSession, body: bytes) -> tuple[float, float]:
        async with sem:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "image/jpeg"}) as resp:
                verdict = await resp.json()
                assert resp.status in (200, 406), (resp.status, verdict)
            return (time.perf_counter() - t0) * 1000, verdict["latency_ms"]

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, b) for b in unique_jpegs(args.concurrency)))  # warm-up
        started = time.perf_counter()
        fresh = await asyncio.gather(*(one(session, b) for b in bodies))
        elapsed = time.perf_counter() - started
        cached = await asyncio.gather(*(one(session, b) for b in bodies))
    await runner.cleanup()

    e2e = [a for a, _ in fresh]
    inner = [b for _, b in fresh]
    added = [a - b for a, b in fresh]
    hits = [a for a, _ in cached]
    print(f"[{label}] {args.requests} fresh images at concurrency {args.concurrency}: {args.requests / elapsed:.1f} req/s")
    print(f"  end-to-end latency   p50 {pct(e2e, 50):8.1f} ms   p99 {pct(e2e, 99):8.1f} ms")
    print(f"  pipeline (in server) p50 {pct(inner, 50):8.1f} ms   p99 {pct(inner, 99):8.1f} ms")
    print(f"  added by endpoint    p50 {pct(added, 50):8.1f} ms   p99 {pct(added, 99):8.1f} ms")
    print(f"  cache hits           p50 {pct(hits, 50):8.1f} ms   p99 {pct(hits, 99):8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--config", help="benchmark this config file's first policy instead (e.g. config/cpu.yaml)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    if args.config:
        raw = yaml.safe_load(Path(args.config).read_text())
        raw["server"] = {"listen": "127.0.0.1:0", "audit_db": ":memory:"}
        raw["instances"] = raw["instances"][:1]
        asyncio.run(run(args, raw, args.config))
    else:
        asyncio.run(run(args, config(args, CLIP_POLICY), f"CLIP {args.model}"))
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
