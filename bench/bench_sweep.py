"""Sweep throughput against the validate endpoint's, on the same files, side by side in one run.

    .venv/bin/python bench/bench_sweep.py [--files 1000] [--config config/cpu.yaml] [--concurrency 8]

Makes ``--files`` distinct media files from the benign photos at run time (JPEG, PNG and WebP, longest side
256 to 1024 px; every file has its own sha256, so none is a cache hit), then judges all of them twice with
the same policy, each time with fresh services (no verdict shared between the two):

- validate: POST /api/v1/validate of every file to a real server on loopback, ``--concurrency`` at once;
- sweep: ``fedi-filter sweep``'s engine over the directory (report only), ``--concurrency`` objects at once,
  progress kept in a fresh SQLite store.

Prints objects/s and MB/s of each and the ratio (the goal: sweep >= 0.9x validate).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import yaml

from bench.common import PHOTOS, machine, peak_rss_mb, photo_image, start_app
from proxy.app import SERVICES, build_services
from proxy.config import parse_config
from proxy.server import build_app
from proxy.sweep import DirSource, Sweep, SweepOptions

SIDES = (256, 384, 512, 768, 1024)
FORMATS = ("JPEG", "PNG", "WEBP")


def make_files(root: Path, n: int) -> int:
    """n distinct files, mixed formats and sizes; their total size in bytes."""
    total = 0
    for i in range(n):
        img = photo_image(PHOTOS[i % len(PHOTOS)]).copy()
        side = SIDES[(i // len(PHOTOS)) % len(SIDES)]
        img.thumbnail((side, side))
        img.putpixel((0, 0), (i % 256, i // 256 % 256, 7))
        fmt = FORMATS[i % len(FORMATS)]
        buf = io.BytesIO()
        img.save(buf, fmt, **({"quality": 90} if fmt != "PNG" else {}))
        path = root / f"{i // 100:02d}" / f"{i:05d}.{fmt.lower()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def load(config_path: str, audit_db: str) -> dict:
    raw = yaml.safe_load(Path(config_path).read_text())
    raw["server"] = {"listen": "127.0.0.1:0", "audit_db": audit_db}
    raw["instances"] = raw["instances"][:1]
    return raw


async def bench_validate(raw: dict, files: list[Path], concurrency: int) -> float:
    app = build_app(parse_config(raw))
    runner, port = await start_app(app)
    await app[SERVICES].scorer.wait_ready()
    url = f"http://127.0.0.1:{port}/api/v1/validate"
    sem = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, path: Path) -> None:
        async with sem:
            body = await asyncio.to_thread(path.read_bytes)
            async with session.post(url, data=body, headers={"Content-Type": "application/octet-stream"}) as resp:
                await resp.read()
                assert resp.status in (200, 406), resp.status

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(one(session, f) for f in files))
        elapsed = time.perf_counter() - started
    await runner.cleanup()
    return elapsed


async def bench_sweep(raw: dict, root: Path, concurrency: int) -> tuple[float, dict]:
    config = parse_config(raw)
    services = build_services(config, persistent=True, fetch=False)
    await services.start()
    await services.scorer.wait_ready()
    with open(os.devnull, "w") as report:
        sweep = Sweep(services, config.instances[0], [DirSource(str(root))], SweepOptions(concurrency=concurrency),
                      report=report)
        started = time.perf_counter()
        await sweep.run()
        elapsed = time.perf_counter() - started
    await services.close()
    return elapsed, sweep.summary()


async def warm_up(raw: dict, root: Path) -> None:
    """Load the models once (weights in the page cache, onnxruntime initialised) before either side is timed."""
    await bench_sweep(raw, root, 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--config", default="config/cpu.yaml")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "media"
        total = make_files(root, args.files)
        warm = Path(tmp) / "warm"
        make_files(warm, 16)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        mb = total / 1e6
        print(f"{len(files)} files, {mb:.1f} MB (JPEG/PNG/WebP, 256-1024 px), {args.config}, concurrency {args.concurrency}")
        asyncio.run(warm_up(load(args.config, str(Path(tmp) / "warm.sqlite3")), warm))
        v = asyncio.run(bench_validate(load(args.config, str(Path(tmp) / "validate.sqlite3")), files, args.concurrency))
        s, summary = asyncio.run(bench_sweep(load(args.config, str(Path(tmp) / "sweep.sqlite3")), root, args.concurrency))
    assert summary["judged"] == len(files), summary
    print(f"  validate endpoint: {len(files) / v:7.1f} objects/s  {mb / v:6.2f} MB/s  ({v:.1f} s)")
    print(f"  sweep:             {len(files) / s:7.1f} objects/s  {mb / s:6.2f} MB/s  ({s:.1f} s; "
          f"flagged {summary['flagged']}, unjudged {summary['unjudged']})")
    print(f"  sweep / validate:  {v / s:.2f}x")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
