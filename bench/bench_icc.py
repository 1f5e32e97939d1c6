"""What colour management costs the decoder: decode() of the same JPEG untagged and tagged with an ICC
profile, side by side (medians of interleaved runs).

    .venv/bin/python bench/bench_icc.py [--side 4000] [--runs 7]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageCms

from bench.common import machine, photo_image
from proxy.config import MediaLimits
from proxy.media import decode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=4000, help="long side of the JPEG (4000: 12 MP)")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    img = photo_image("coffee").convert("RGB")
    img = img.resize((args.side, args.side * 3 // 4), Image.Resampling.BICUBIC)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    bodies = {}
    for name, extra in (("untagged", {}), ("tagged (sRGB profile)", {"icc_profile": profile})):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=88, **extra)
        bodies[name] = buf.getvalue()
    times: dict[str, list[float]] = {name: [] for name in bodies}
    for body in bodies.values():
        decode(body, MediaLimits())  # warm-up (the transform is cached per profile)
    for _ in range(args.runs):
        for name, body in bodies.items():
            t0 = time.perf_counter()
            decoded = decode(body, MediaLimits())
            times[name].append(time.perf_counter() - t0)
    print(f"machine: {machine()}; {img.width}x{img.height} JPEG, {len(decoded.views)} views")
    base = statistics.median(times["untagged"])
    for name, values in times.items():
        print(f"{name:24}: {statistics.median(values) * 1000:6.1f} ms ({statistics.median(values) / base:.2f}x)")


if __name__ == "__main__":
    main()
