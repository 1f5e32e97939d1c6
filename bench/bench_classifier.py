"""Classifier throughput: images/s at batch 1, 8 and 32, and the speedup of dynamic batching over
one-at-a-time under 32 concurrent requests, measured side by side in one run.

    .venv/bin/python bench/bench_classifier.py [--model ViT-B-32] [--pretrained PATH] [--device auto]

Random weights run at the same speed as real ones; pass --pretrained to load real weights anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PHOTOS, machine, peak_rss_mb, photo_image
from classifier import Classifier, ClassifierSettings
from classifier.sources import ClipSource

PROMPTS = {"a photo of a cat", "a rocket", "a cup of coffee", "a portrait", "a clock"}


def images_per_second(src: ClipSource, batch: int, total: int) -> float:
    images = [src.preprocess(photo_image(PHOTOS[i % len(PHOTOS)])) for i in range(batch)]
    src.run(images)  # warm-up
    started = time.perf_counter()
    done = 0
    while done < total:
        src.run(images)
        done += batch
    return done / (time.perf_counter() - started)


async def concurrent(settings: ClassifierSettings, requests: int, rounds: int) -> float:
    c = Classifier(settings, {("clip", p) for p in PROMPTS})
    await c.start()
    await c.wait_ready()
    frames = [[photo_image(PHOTOS[i % len(PHOTOS)])] for i in range(requests)]
    await asyncio.gather(*(c.score(f, {"clip"}) for f in frames))  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(c.score(f, {"clip"}) for f in frames))
    elapsed = time.perf_counter() - started
    await c.close()
    return requests * rounds / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=64, help="images per batch-size measurement")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of 32 concurrent requests")
    args = ap.parse_args()

    base = ClassifierSettings(model=args.model, pretrained=args.pretrained, device=args.device)
    src = ClipSource(base.clip)
    src.set_prompts(PROMPTS)
    print(f"machine: {machine()}")
    print(f"model: {args.model} ({args.pretrained or 'random weights'}) on {src.describe()['device']} "
          f"{src.describe()['precision']}")
    for batch in (1, 8, 32):
        print(f"batch {batch:>2}: {images_per_second(src, batch, max(args.images, batch)):7.1f} images/s")
    del src

    one = asyncio.run(concurrent(replace(base, max_batch=1, max_wait_ms=0), 32, args.rounds))
    dyn = asyncio.run(concurrent(replace(base, max_batch=32, max_wait_ms=5), 32, args.rounds))
    print(f"32 concurrent requests, one at a time (max_batch=1): {one:7.1f} images/s")
    print(f"32 concurrent requests, dynamic batching (max_batch=32, max_wait_ms=5): {dyn:7.1f} images/s")
    print(f"dynamic batching speedup: {dyn / one:.2f}x")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
