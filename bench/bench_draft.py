"""How much of a 12-MP JPEG's decode drafting saves (issue 10's "decode of a 12-MP JPEG: <= 0.1x a full
decode"): Pillow's full decode against decodes drafted (libjpeg's DCT scaling) to 1/2, 1/4 and 1/8, side
by side, medians of ``--repeat`` runs.

    .venv/bin/python bench/bench_draft.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, photo_image


def median_s(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    img = photo_image("astronaut").resize((4000, 3000), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    data = buf.getvalue()

    def decode(width: int | None) -> Callable[[], None]:
        def run() -> None:
            im = Image.open(io.BytesIO(data))
            if width is not None:
                im.draft("RGB", (width, width * 3 // 4))
            im.load()
        return run

    print(f"machine: {machine()}; a 4000x3000 JPEG, quality 88 ({len(data) / 1e6:.1f} MB)")
    full = median_s(decode(None), args.repeat)
    print(f"full decode: {full * 1000:.0f} ms")
    for width in (2000, 1000, 500):
        drafted = median_s(decode(width), args.repeat)
        print(f"drafted to {width} px (1/{4000 // width}): {drafted * 1000:.0f} ms = {drafted / full:.2f}x full")


if __name__ == "__main__":
    main()
