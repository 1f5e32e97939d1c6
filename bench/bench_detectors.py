"""Images/s of each detector signal (open_nsfw, nudenet) at batch 1 and 16, preprocessing included and
shown apart, on this machine.

    .venv/bin/python bench/bench_detectors.py [--images 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PHOTOS, machine, peak_rss_mb, photo_image
from classifier.detectors import DETECTORS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    images = [photo_image(PHOTOS[i % len(PHOTOS)]) for i in range(16)]
    for name, cls in DETECTORS.items():
        src = cls()
        t0 = time.perf_counter()
        prepared = [src.preprocess(im) for im in images]
        prep_rate = len(images) / (time.perf_counter() - t0)
        src.run(prepared[:1])  # warm-up
        for batch in (1, 16):
            done = 0
            t0 = time.perf_counter()
            while done < args.images:
                src.run(prepared[:batch])
                done += batch
            rate = done / (time.perf_counter() - t0)
            print(f"{name:10} batch {batch:>2}: model {rate:6.1f} images/s (preprocessing alone {prep_rate:6.1f} images/s)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
