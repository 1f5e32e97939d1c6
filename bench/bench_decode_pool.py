"""Decode beside the GIL: a thread pool against a process pool for `proxy.media.decode`, side by side.

    .venv/bin/python bench/bench_decode_pool.py [--rounds 5] [--images 24] [--workers 2]

Distinct 2048-px JPEGs (quality 88, from the benign photos) decoded to their views (whole view + tiles)
by ``--workers`` workers; the process pool returns each view as a small uint8 array (what the pipeline
would need back), the thread pool returns the PIL images. Rounds interleave the two; medians printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_feed import jpegs
from proxy.config import MediaLimits
from proxy.media import decode


def decode_to_arrays(data: bytes) -> list[np.ndarray]:
    return [np.asarray(f) for f in decode(data, MediaLimits()).frames]


def decode_to_images(data: bytes) -> int:
    return len(decode(data, MediaLimits()).frames)


def run(pool: Executor, fn: object, bodies: list[bytes]) -> float:
    t0 = time.perf_counter()
    list(pool.map(fn, bodies))  # type: ignore[call-overload]
    return len(bodies) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    bodies = jpegs(args.images, 2048)
    views = decode_to_images(bodies[0])
    print(f"{os.cpu_count()} cores (shared); {args.images} distinct 2048-px JPEGs a round, {views} views each, "
          f"{args.workers} workers")
    rates: dict[str, list[float]] = {"threads": [], "processes": []}
    with ThreadPoolExecutor(args.workers) as threads, ProcessPoolExecutor(args.workers) as procs:
        run(threads, decode_to_images, bodies[:4])
        run(procs, decode_to_arrays, bodies[:4])
        for r in range(args.rounds):
            rates["threads"].append(run(threads, decode_to_images, bodies))
            rates["processes"].append(run(procs, decode_to_arrays, bodies))
            print(f"round {r + 1}: threads {rates['threads'][-1]:.1f} images/s, processes {rates['processes'][-1]:.1f}",
                  flush=True)
    t, p = statistics.median(rates["threads"]), statistics.median(rates["processes"])
    print(f"median: thread pool {t:.1f} images/s, process pool {p:.1f} images/s ({p / t:.2f}x)")


if __name__ == "__main__":
    main()
