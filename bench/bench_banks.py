"""What PDQ hashes and hash banks cost.

1. PDQ per frame: ``pdq_of`` on the frames the pipeline judges (long side 448 px, the decode worker's
   output) of ten benign photos, and on the same photos at full size for comparison.
2. Matching a file's PDQ against a bank of 1,000 and 100,000 hashes (random 256-bit hashes plus one
   near copy of the query): packed into uint64 words, XOR and popcount in numpy, one linear scan; for
   one frame and for 16 frames (an animation) at once.
3. Exact matching (sha256) in the same banks: a dict lookup, for scale.

    .venv/bin/python bench/bench_banks.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import PHOTOS, machine, photo_image
from proxy.banks import BankIndex, BankRole
from proxy.hashing import PdqHash, pdq_of
from proxy.stores import BankEntry


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):.3f} ms, p95 {sorted(ms)[int(len(ms) * 0.95) - 1]:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    print(f"machine: {machine()}")

    frames, full = [], []
    for name in PHOTOS:
        img = photo_image(name)
        full.append(img)
        small = img.copy()
        small.thumbnail((448, 448))
        frames.append(small)
    per_frame = [t / len(frames) for t in timed(lambda: [pdq_of(f) for f in frames], max(3, args.repeat // 10))]
    per_full = [t / len(full) for t in timed(lambda: [pdq_of(f) for f in full], max(3, args.repeat // 10))]
    sizes = sorted({f"{i.width}x{i.height}" for i in full})
    print(f"PDQ per frame, 448 px (what the decode worker hashes): {summary(per_frame)}")
    print(f"PDQ per frame, full size ({', '.join(sizes)}): {summary(per_full)}")

    rng = np.random.default_rng(0)
    query = pdq_of(frames[0])
    near = f"{int(query.value, 16) ^ 0b1011:064x}"  # 3 bits away
    for n in (1_000, 100_000):
        values = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex() for _ in range(n - 1)] + [near]
        entries = [BankEntry("own", "pdq", v, quality=100) for v in values]
        entries += [BankEntry("own", "sha256", bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex()) for _ in range(n)]
        t = time.perf_counter()
        index = BankIndex(entries, {"own": BankRole.KNOWN})
        build_ms = (time.perf_counter() - t) * 1000
        hit = index.match_pdq(BankRole.KNOWN, [query])
        assert hit is not None and hit.distance == 3, hit
        one = timed(lambda index=index: index.match_pdq(BankRole.KNOWN, [query]), args.repeat)
        many = [PdqHash(pdq_of(f).value, 100) for f in frames] + [PdqHash(f"{i:064x}", 100) for i in range(6)]
        sixteen = timed(lambda index=index, many=many: index.match_pdq(BankRole.KNOWN, many), max(3, args.repeat // 5))
        exact = timed(lambda index=index: index.match_exact(BankRole.KNOWN, {"sha256": "0" * 64}), args.repeat)
        print(f"bank of {n:>7,} PDQ + {n:,} sha256: build {build_ms:.0f} ms; PDQ match 1 frame {summary(one)}; "
              f"16 frames {summary(sixteen)}; sha256 {summary(exact)}")


if __name__ == "__main__":
    main()
