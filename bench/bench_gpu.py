"""The GPU goals of issue 10 in one short run, for a lent GPU machine (the `device` tool):

    .venv/bin/python bench/bench_gpu.py [--model ViT-L-14] [--device cuda] [--images 4096] [--workers N]

- the model alone: CLIP (random weights: the same arithmetic as the real ones, no download), bf16 autocast
  on CUDA as the classifier runs it, batch 64 on ready tensors: images/s;
- through validate: `fedi-filter serve` (its own process, `max_batch` 64, N decode and N preprocessing
  threads) on distinct photo-sized JPEGs at concurrency 128: images/s, and the ratio to the model alone
  (goal >= 0.8);
- latency at low load: p50 of validate at concurrency 1 on fresh images, against the model's own batch-1
  call on a ready tensor; the difference is what the proxy adds (goal <= 50 ms).

It runs on a CPU too (``--model ffp-tiny-clip --device cpu --images 256``), to check it before a GPU is
lent; only a GPU's figures count for the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_feed import jpegs, serve, validate, wait_ready
from bench.common import machine, pct, stop
from proxy.config import MediaLimits
from proxy.media import decode

ROOT = Path(__file__).resolve().parent.parent


def model_alone(model: str, device: str, images: list, seconds: float) -> tuple[float, float]:
    """(images/s at batch 64, seconds of one batch-1 call), the model on ready tensors."""
    from classifier.sources import ClipSettings, ClipSource, register_model_configs

    register_model_configs()
    src = ClipSource(ClipSettings(model=model, pretrained=None, device=device))
    src.set_prompts({"a photo of a cat", "a rocket"})
    ready = [src.preprocess(im) for im in images[:64]]
    for _ in range(3):  # warm-up: kernels chosen, memory pooled
        src.run(ready)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        src.run(ready)  # returns Python floats: the GPU has finished
        calls += 1
    rate = 64 * calls / (time.perf_counter() - t0)
    single = []
    for i in range(20):
        t = time.perf_counter()
        src.run(ready[i % 64:i % 64 + 1])
        single.append(time.perf_counter() - t)
    return rate, statistics.median(single)


async def latencies(port: int, bodies: list[bytes]) -> list[float]:
    url = f"http://127.0.0.1:{port}/api/v1/validate"
    out = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            t = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "image/jpeg"}) as resp:
                verdict = await resp.json()
                assert verdict["decided_by"] == "model", verdict
            out.append(time.perf_counter() - t)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=4096, help="fresh JPEGs through validate at concurrency 128")
    ap.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2) // 2),
                    help="decode threads and preprocessing threads each (default: half the cores)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the model alone runs")
    args = ap.parse_args()
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    latency_n = 64
    bodies = jpegs(args.images + latency_n + 256, None)
    images = [f for b in bodies[:64] for f in decode(b, MediaLimits()).frames][:64]
    rate, single = await asyncio.to_thread(model_alone, args.model, args.device, images, args.seconds)
    print(f"model alone ({args.model}, {args.device}): {rate:.0f} images/s at batch 64; one image at batch 1: "
          f"{single * 1000:.1f} ms", flush=True)
    raw = {
        "server": {"decode_workers": args.workers},
        "classifier": {"model": args.model, "pretrained": "random", "device": args.device, "max_batch": 64,
                       "preprocess_workers": args.workers, "max_queue": 8192},
        "policies": {"p": {"concepts": {"c": {"prompts": {"a photo of a cat": 0.3, "a rocket": 0.3}}},
                           "labels": {"flag": {"all": [{"concept": "c"}]}}, "timeout_ms": 600_000}},
        "instances": [{"name": "pictrs", "kind": "pictrs", "upstream": "http://127.0.0.1:9", "policy": "p"}],
    }
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = serve(tmp, ROOT, raw, "gpu")
        try:
            await wait_ready(port)
            await validate(port, bodies[:256], 64)  # warm-up
            through = await validate(port, bodies[256:256 + args.images], 128)
            print(f"through validate at concurrency 128 ({args.workers} decode + {args.workers} preprocessing "
                  f"threads): {through:.0f} images/s = {through / rate:.2f} of the model alone (goal >= 0.8)", flush=True)
            lat = await latencies(port, bodies[256 + args.images:])
            p50 = statistics.median(lat)
            print(f"validate at concurrency 1: p50 {p50 * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms; the model's "
                  f"batch-1 call {single * 1000:.1f} ms; added by the proxy: {(p50 - single) * 1000:.1f} ms "
                  f"(goal <= 50 ms)", flush=True)
        finally:
            stop([proc])


if __name__ == "__main__":
    asyncio.run(main())
