"""Does the model set the pace? Throughput of POST /api/v1/validate against what the models alone can do,
side by side in one run (issue 10).

    .venv/bin/python bench/bench_feed.py [--rounds 3] [--images 24] [--before ../other-checkout]
        [--only cpu|clip]

- ``cpu``: `config/cpu.yaml` (open_nsfw + NudeNet, one thread each) on distinct 2048-px JPEGs (quality 88,
  made from the benign photos; each is judged as its whole view plus tiles). The limit: the two detectors
  run directly, side by side in two threads, on ready tensors of the same views (the faster of batch 1 and
  batch 16). Through validate at concurrency 1 and 16, in views per second; the ratio is views/s over the
  limit (goals: >= 0.60 at 1, >= 0.95 at 16).
- ``clip``: the tiny random-weight CLIP (`ffp-tiny-clip`) through validate at concurrency 32 on distinct
  photo-sized JPEGs, against the model's own rate at batch 32 on ready tensors (goal: >= 25 %).

Each part also prints a ceiling, to tell what is left from what cannot be had on these cores:
- ``cpu``: the ratio two cores allow at most when every view costs the detectors' own run time plus what
  feeds them (decode and PDQ, the packages' preprocessing), each timed alone on one thread, against the
  limit where each detector owns a core (so the slower one sets its pace);
- ``clip``: a bare aiohttp app on the same cores that only reads the body, hashes it and decodes the JPEG
  at its smallest draft (1/8), driven by the same client: no judging server can beat it.

`fedi-filter serve` runs as its own process (``--before DIR`` adds one from another checkout, measured in
the same rounds); the limit is measured here while the servers idle. Rounds interleave every
measurement; medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CORPUS, free_port, machine, photo_image
from proxy.config import MediaLimits
from proxy.media import decode

ROOT = Path(__file__).resolve().parent.parent


def jpegs(n: int, side: int | None) -> list[bytes]:
    """n distinct JPEGs (quality 88) from the benign photos, long side scaled to ``side`` (None: as they are)."""
    out = []
    for i in range(n):
        img = photo_image(CORPUS[i % len(CORPUS)])
        if side is not None:
            scale = side / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        img = img.copy()
        img.putpixel((0, 0), (i % 256, i // 256 % 256, 11))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=88, comment=f"bench image {i}".encode())  # distinct bytes, whatever the pixels
        out.append(buf.getvalue())
    return out


def serve(tmp: str, root: Path, raw: dict, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    raw = {**raw, "server": {**raw.get("server", {}), "listen": f"127.0.0.1:{port}", "audit_db": ""}}
    path = Path(tmp) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--log-level", "warning", "serve", "--config", str(path)],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


async def wait_ready(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(1500):
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"serve on {port} never became ready")


async def validate(port: int, bodies: list[bytes], conc: int) -> float:
    """Requests per second of POST /api/v1/validate for these bodies at this concurrency."""
    sem = asyncio.Semaphore(conc)
    url = f"http://127.0.0.1:{port}/api/v1/validate"

    async def one(session: aiohttp.ClientSession, body: bytes) -> None:
        async with sem, session.post(url, data=body, headers={"Content-Type": "image/jpeg"}) as resp:
            verdict = await resp.json()
            assert resp.status in (200, 406) and verdict["decided_by"] == "model", (resp.status, verdict)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session, b) for b in bodies))
        return len(bodies) / (time.perf_counter() - t0)


def detectors_limit(views: list[Image.Image]) -> float:
    """Views per second of open_nsfw and NudeNet run directly, one thread each, side by side, on ready
    tensors; the faster of batch 1 and batch 16."""
    from classifier.detectors import DETECTORS

    sources = [cls(1) for cls in DETECTORS.values()]  # type: ignore[call-arg]
    ready = [[src.preprocess(v) for v in views] for src in sources]
    best = 0.0
    for batch in (1, 16):
        def work(src: Any, tensors: list[Any], batch: int = batch) -> None:
            for i in range(0, len(tensors), batch):
                src.run(tensors[i:i + batch])

        for src, tensors in zip(sources, ready, strict=True):
            src.run(tensors[:batch])  # warm-up
        threads = [threading.Thread(target=work, args=(s, t)) for s, t in zip(sources, ready, strict=True)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, len(views) / (time.perf_counter() - t0))
    return best


def cpu_ceiling(bodies: list[bytes]) -> None:
    """Per-view costs of the stages, each alone on one thread, and the ratio they allow on two cores."""
    from classifier.detectors import DETECTORS
    from proxy.hashing import pdq_frames

    def timed(fn: Any, *args: Any) -> tuple[float, Any]:
        t0 = time.perf_counter()
        out = fn(*args)
        return time.perf_counter() - t0, out

    decode(bodies[0], MediaLimits())
    spent, views = 0.0, []
    for body in bodies:
        took, d = timed(decode, body, MediaLimits())
        took += timed(pdq_frames, d.frames, d.views)[0]
        spent += took
        views += d.frames
    feed = {"decode + PDQ": spent / len(views)}
    run: dict[str, float] = {}
    for cls in DETECTORS.values():
        src = cls(1)  # type: ignore[call-arg]
        took, ready = timed(lambda src=src: [src.preprocess(v) for v in views])
        feed[f"{src.name} preprocessing"] = took / len(views)
        best = float("inf")
        for batch in (1, 16):
            src.run(ready[:batch])
            batches = [ready[i:i + batch] for i in range(0, len(ready), batch)]
            best = min(best, timed(lambda src=src, batches=batches: [src.run(b) for b in batches])[0])
        run[src.name] = best / len(views)
    slowest, models = max(run.values()), sum(run.values())
    print("[cpu.yaml] per view, alone on one thread: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in (run | feed).items()))
    prep = sum(v for k, v in feed.items() if "preprocessing" in k)
    print(f"[cpu.yaml] ceiling on 2 cores (validate <= 2 / (models + feed), limit = 1 / slowest model): "
          f"{min(1.0, 2 * slowest / (models + sum(feed.values()))):.2f}; with the packages' preprocessing as the "
          f"only feed: {min(1.0, 2 * slowest / (models + prep)):.2f}")


FLOOR_SERVER = """
import hashlib, io, sys
from aiohttp import web
from PIL import Image

async def validate(request):
    body = await request.read()
    hashlib.sha256(body).digest()
    with Image.open(io.BytesIO(body)) as img:
        img.draft("RGB", (img.width // 8, img.height // 8))
        img.load()
    return web.json_response({"decided_by": "model", "action": "accept"})

app = web.Application(client_max_size=2**26)
app.router.add_post("/api/v1/validate", validate)
app.router.add_get("/healthz", lambda request: web.Response(text="ok"))
try:
    import uvloop
    loop = uvloop.new_event_loop()
except ImportError:
    loop = None
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)
"""


async def clip_floor(bodies: list[bytes]) -> float:
    """Requests/s of a bare aiohttp app that only reads, hashes and draft-decodes each JPEG (concurrency 32)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(port)])
    try:
        await wait_ready(port)
        await validate(port, bodies[:64], 32)
        return await validate(port, bodies, 32)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def clip_limit(images: list[Image.Image]) -> float:
    from classifier.sources import ClipSettings, ClipSource, register_model_configs

    register_model_configs()
    src = ClipSource(ClipSettings(model="ffp-tiny-clip", pretrained=None, device="cpu"))
    src.set_prompts({"a photo of a cat", "a rocket"})
    ready = [src.preprocess(im) for im in images]
    batches = [ready[i:i + 32] for i in range(0, len(ready), 32) if len(ready[i:i + 32]) == 32]
    src.run(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        src.run(b)
    return 32 * len(batches) / (time.perf_counter() - t0)


def report(name: str, rows: dict[str, list[float]], unit: str, limit: list[float]) -> None:
    """Medians, and the median of each round's ratio to that round's limit (the limit moves with the load
    other processes put on a shared machine; a round's figures are measured minutes apart at most)."""
    lim = statistics.median(limit)
    print(f"[{name}] limit: median {lim:.1f} {unit} (rounds: {', '.join(f'{x:.1f}' for x in limit)})")
    for label, values in rows.items():
        ratios = [v / x for v, x in zip(values, limit, strict=True)]
        print(f"[{name}] {label:28}: median {statistics.median(values):7.1f} {unit}; of the round's limit: median "
              f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=24, help="2048-px JPEGs per cpu.yaml measurement")
    ap.add_argument("--clip-images", type=int, default=512)
    ap.add_argument("--before", type=Path)
    ap.add_argument("--only", choices=("cpu", "clip"))
    ap.add_argument("--before-first", action="store_true", help="measure the other checkout first in each round")
    ap.add_argument("--ceiling-only", action="store_true", help="only the per-view costs and the cpu.yaml ceiling")
    args = ap.parse_args()
    print(f"machine: {machine()} (shared with other engineers' test runs)")
    roots = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    if args.before_first:
        roots = dict(reversed(roots.items()))
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "cpu"):
            raw = yaml.safe_load((ROOT / "config" / "cpu.yaml").read_text())
            raw["instances"] = raw["instances"][:1]
            for pol in raw["policies"].values():
                pol["timeout_ms"] = 600_000
            half = max(1, args.images // 2)
            bodies = jpegs(args.rounds * len(roots) * 3 * half + 2, 2048)
            fresh = iter(bodies[2:])
            per_image = len(decode(bodies[0], MediaLimits()).frames)
            views = [v for b in bodies[:4] for v in decode(b, MediaLimits()).frames]
            print(f"[cpu.yaml] {per_image} views per 2048-px JPEG (whole view + tiles), {args.images} images a measurement")
            cpu_ceiling(bodies[:4])
            if args.ceiling_only:
                return
            procs = {label: serve(tmp, root, raw, f"cpu-{label}") for label, root in roots.items()}
            try:
                for _, port in procs.values():
                    await wait_ready(port)
                for _, port in procs.values():  # warm-up
                    await validate(port, bodies[:2], 2)
                limit: list[float] = []
                rows: dict[str, list[float]] = {}
                for _ in range(args.rounds):
                    limit.append(await asyncio.to_thread(detectors_limit, views))
                    for conc in (1, 16):
                        for label, (_, port) in procs.items():
                            part = [next(fresh) for _ in range(half if conc == 1 else 2 * half)]
                            rate = await validate(port, part, conc) * per_image
                            rows.setdefault(f"{label}, concurrency {conc}", []).append(rate)
                    print(f"round done: limit {limit[-1]:.1f} views/s; " +
                          ", ".join(f"{n} {v[-1]:.1f}" for n, v in rows.items()), flush=True)
                report("cpu.yaml", rows, "views/s", limit)
            finally:
                for proc, _ in procs.values():
                    proc.terminate()
                    proc.wait(timeout=60)
        if args.only in (None, "clip"):
            raw = {
                "classifier": {"model": "ffp-tiny-clip", "pretrained": "random", "device": "cpu", "max_batch": 32},
                "policies": {"p": {"concepts": {"c": {"prompts": {"a photo of a cat": 0.3, "a rocket": 0.3}}},
                                   "labels": {"flag": {"all": [{"concept": "c"}]}}, "timeout_ms": 600_000}},
                "instances": [{"name": "pictrs", "kind": "pictrs", "upstream": "http://127.0.0.1:9", "policy": "p"}],
            }
            bodies = jpegs(args.clip_images * (args.rounds * len(roots) + 1), None)
            fresh = iter(bodies[args.clip_images:])
            images = [v for b in bodies[:256] for v in decode(b, MediaLimits()).frames]
            procs = {label: serve(tmp, root, raw, f"clip-{label}") for label, root in roots.items()}
            try:
                for _, port in procs.values():
                    await wait_ready(port)
                for _, port in procs.values():
                    await validate(port, bodies[:64], 32)
                limit, rows = [], {}
                for _ in range(args.rounds):
                    limit.append(await asyncio.to_thread(clip_limit, images))
                    for label, (_, port) in procs.items():
                        part = [next(fresh) for _ in range(args.clip_images)]
                        rows.setdefault(f"{label}, concurrency 32", []).append(await validate(port, part, 32))
                    print(f"round done: limit {limit[-1]:.0f} images/s; " +
                          ", ".join(f"{n} {v[-1]:.0f}" for n, v in rows.items()), flush=True)
                report("tiny CLIP", rows, "images/s", limit)
                floor = await clip_floor(bodies[:args.clip_images])
                print(f"[tiny CLIP] ceiling: a bare aiohttp app that only reads, hashes and draft-decodes (1/8) each "
                      f"JPEG: {floor:.0f} requests/s = {floor / statistics.median(limit):.2f} of the limit")
            finally:
                for proc, _ in procs.values():
                    proc.terminate()
                    proc.wait(timeout=60)


if __name__ == "__main__":
    asyncio.run(main())
