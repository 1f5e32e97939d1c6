"""What judging every distinct frame costs, and what decoding straight to model size saves.

1. A 200-frame GIF judged through the real pipeline with config/cpu.yaml's detectors (open_nsfw and
   NudeNet, real weights): frames decoded, frames judged after deduplication, seconds for decode alone and
   for the whole judgement. Two animations: a slideshow (20 pictures shown 10 times over) and a pan across
   a photo (every frame distinct, the worst case for deduplication).
2. A 12-MP JPEG: a full decode (every pixel) against ``decode()`` (JPEG draft to the scale the views
   need, then resize): the whole view alone, and the whole view with its model-size tiles. Entropy
   decoding is not scaled by a JPEG draft, so a noisy photo saves less time than memory.

    .venv/bin/python bench/bench_frames.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image

from bench.common import PHOTOS, machine, peak_rss_mb, photo_image
from proxy.app import build_services
from proxy.config import MediaLimits, load_config
from proxy.media import decode

ROOT = Path(__file__).resolve().parent.parent
SIZE = (320, 240)


def slideshow() -> bytes:
    pictures = [photo_image(PHOTOS[i % len(PHOTOS)]).resize(SIZE).rotate(i * 7) for i in range(20)]
    return _gif([pictures[i % 20] for i in range(200)])  # looped 10 times (GIF merges adjacent repeats)


def pan() -> bytes:
    big = photo_image("astronaut").resize((SIZE[0] + 200, SIZE[1]))
    return _gif([big.crop((i, 0, i + SIZE[0], SIZE[1])) for i in range(200)])


def _gif(frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buf.getvalue()


def jpeg_12mp() -> bytes:
    img = photo_image("chelsea").resize((4000, 3000), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).integers(-12, 13, (3000, 4000, 3))
    img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def median_s(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def judge_animations(repeat: int) -> None:
    config = load_config(ROOT / "config" / "cpu.yaml")
    shipped = config.instances[0].policy.timeout_ms
    # measure the whole judgement, not the policy's budget: lift the timeout, compare with it below
    instance = replace(config.instances[0], policy=replace(config.instances[0].policy, timeout_ms=600_000))
    services = build_services(config, persistent=False, fetch=False)
    await services.start()
    await services.scorer.wait_ready()
    pipeline = services.pipeline
    print(f"200-frame GIF, judged with config/cpu.yaml (open_nsfw + nudenet, real weights; its timeout_ms: {shipped}):")
    print(f"  {'animation':<10} {'decoded':>7} {'judged':>6} {'decode s':>8} {'judge s':>8}  within timeout_ms")
    for name, data in (("slideshow", slideshow()), ("pan", pan())):
        decoded = decode(data, instance.policy.limits)
        decode_s = median_s(lambda data=data: decode(data, instance.policy.limits), repeat)
        times = []
        for _ in range(repeat):
            services.store.forget(hashlib.sha256(data).hexdigest(), instance.policy.name)
            started = time.perf_counter()
            verdict = await pipeline.judge(data, instance, "bench")
            times.append(time.perf_counter() - started)
        assert verdict.decided_by == "model", verdict
        judge_s = statistics.median(times)
        fits = "yes" if judge_s * 1000 < shipped else "no: on_error applies"
        print(f"  {name:<10} {decoded.total_frames:>7} {verdict.frames:>6} {decode_s:>8.3f} {judge_s:>8.3f}  {fits}")
    await services.close()


def jpeg_decode(repeat: int) -> None:
    data = jpeg_12mp()

    def full() -> None:
        with Image.open(io.BytesIO(data)) as img:
            img.convert("RGB")

    no_tiles = MediaLimits(max_tiles=1)  # one tile is no better than the whole view: none are made
    full_s = median_s(full, repeat)
    whole_s = median_s(lambda: decode(data, no_tiles), repeat)
    tiled_s = median_s(lambda: decode(data, MediaLimits()), repeat)
    tiles = len(decode(data, MediaLimits()).frames) - 1
    print(f"12-MP JPEG (4000x3000, {len(data) // 1024} KiB), median of {repeat}:")
    print(f"  full decode                   {full_s:.3f} s")
    print(f"  decode() whole view (448 px)  {whole_s:.3f} s   {full_s / whole_s:.1f}x faster")
    print(f"  decode() whole + {tiles} tiles     {tiled_s:.3f} s   {full_s / tiled_s:.1f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    asyncio.run(judge_animations(args.repeat))
    jpeg_decode(args.repeat)
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
