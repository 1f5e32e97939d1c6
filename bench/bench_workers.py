"""Remote workers against the in-process classifier, on this machine: frames/s through the Scorer seam.

For each model set (the tiny random-weight CLIP; the detectors NudeNet + open_nsfw):
- in-process: the Classifier in this process, pinned to one CPU, one model thread;
- 1 worker: a `fedi-filter worker` process pinned to that CPU (one model thread), dialling in over a
  loopback websocket to a proxy in this process (`workers.local: false`);
- 2 workers: two such processes, each pinned to its own CPU.
Each frame is one score() call, ``--concurrency`` at a time (single-image uploads arriving together), so
dynamic batching is in play. Also bytes per frame on the wire, and the proxy's cost to encode, for each
lossless encoding.

    .venv/bin/python bench/bench_workers.py [--frames 160] [--concurrency 16] [--encoding raw]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from bench.common import PHOTOS, free_port, machine, stop
from classifier.remote import encode_frames, model_size_geometry
from proxy.app import SERVICES, build_classifier
from proxy.config import MediaLimits, parse_config
from proxy.media import decode
from proxy.server import build_app
from tests.support.configs import FACES, config_dict, policy
from tests.support.photos import photo

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {"detector_threads": 1, "preprocess_workers": 1, "max_batch": 16, "max_wait_ms": 5}


def model_sets() -> dict[str, dict[str, Any]]:
    detectors = copy.deepcopy(FACES)
    detectors["concepts"]["nsfw"] = {"signals": {"open_nsfw.nsfw": 0.99}}
    detectors["labels"]["portrait"]["any"].append({"concept": "nsfw"})
    return {"tiny CLIP": config_dict(policy()), "detectors (nudenet + open_nsfw)": config_dict(detectors)}


def frames() -> list[Any]:
    return [decode(photo(name), MediaLimits()).frames[0] for name in PHOTOS]


async def rate(scorer: Any, sources: list[str], pictures: list[Any], n: int, concurrency: int) -> float:
    for i in range(concurrency):  # warm-up: model and connections
        await scorer.score([pictures[i % len(pictures)]], sources)
    todo = iter(range(n))

    async def one() -> None:
        for i in todo:
            await scorer.score([pictures[i % len(pictures)]], sources)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def in_process(raw: dict[str, Any], cpu: int, pictures: list[Any], args: argparse.Namespace) -> float:
    import torch

    config = parse_config(raw)
    sources = sorted({s for p in config.policies.values() for s, _ in p.rules.signals()})
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    classifier = build_classifier(config, None)
    try:
        await classifier.start()
        await classifier.wait_ready()
        return await rate(classifier, sources, pictures, args.frames, args.concurrency)
    finally:
        await classifier.close()
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


async def remote(raw: dict[str, Any], cpus: list[int], pictures: list[Any], args: argparse.Namespace, tmp: Path) -> float:
    token = secrets.token_hex(16)
    raw = {**raw, "workers": {"tokens": [token], "local": False, "encoding": args.encoding}}
    port = free_port()
    raw["server"] = {**raw["server"], "listen": f"127.0.0.1:{port}"}
    cfg = tmp / "bench-workers.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    config = parse_config(raw)
    sources = sorted({s for p in config.policies.values() for s, _ in p.rules.signals()})
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-m", "proxy", "--log-level", "warning", "worker",
                               "--connect", f"http://127.0.0.1:{port}", "--token", token, "--config", str(cfg),
                               "--name", f"w{i}"], cwd=ROOT, env=env)
             for i, cpu in enumerate(cpus)]
    pool = app[SERVICES].scorer
    try:
        deadline = time.monotonic() + 300
        while sum(p.remote and p.ready for p in pool.peers) < len(cpus):
            if time.monotonic() > deadline:
                raise SystemExit("workers did not connect")
            await asyncio.sleep(0.2)
        return await rate(pool, sources, pictures, args.frames, args.concurrency)
    finally:
        stop(procs)
        await runner.cleanup()


def wire_cost(pictures: list[Any], encoding: str, prepare: Any, label: str) -> None:
    """Bytes of each frame on the wire and the proxy's ms to prepare and encode it (median)."""
    sizes, times = [], []
    for frame in pictures:
        started = time.perf_counter()
        meta, blob = encode_frames([prepare(frame)], encoding)
        times.append((time.perf_counter() - started) * 1000)
        sizes.append(len(blob))
    print(f"  {encoding:5} mean {statistics.mean(sizes) / 1024:7.1f} KiB  max {max(sizes) / 1024:7.1f} KiB  "
          f"{label} {statistics.median(times):5.1f} ms")


def wire_costs(pictures: list[Any]) -> None:
    print("bytes per frame on the wire (these photos decoded to <= 448 px, lossless), proxy encode ms per frame:")
    for encoding in ("raw", "png", "webp"):
        wire_cost(pictures, encoding, lambda frame: frame, "encode")
    import open_clip

    for side in (224, 64):  # ViT-L-14's input; the tiny CLIP's
        descriptor = " ".join(repr(open_clip.image_transform(side, is_train=False)).split())
        prepare = model_size_geometry(descriptor)
        assert prepare is not None, descriptor
        print(f"CLIP-only batches travel at the model size ({side} x {side}): resize + crop + encode per frame")
        for encoding in ("raw", "webp"):
            wire_cost(pictures, encoding, prepare, "prepare+encode")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=160)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--encoding", default="raw", choices=["raw", "png", "webp"])
    ap.add_argument("--only", choices=["tiny", "detectors"], help="one model set")
    ap.add_argument("--ceiling", action="store_true",
                    help="also run the in-process classifier in two processes at once, one per CPU: what two "
                         "workers could reach on this machine with no proxy at all")
    ap.add_argument("--solo", nargs=2, metavar=("MODELSET", "CPU"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.solo:  # one in-process classifier, pinned, for --ceiling
        raw = next(r for n, r in model_sets().items() if n.startswith(args.solo[0]))
        raw["classifier"] = {**raw["classifier"], **ONE_THREAD}
        print(await in_process(raw, int(args.solo[1]), frames(), args))
        return
    cpus = sorted(os.sched_getaffinity(0))
    print(f"machine: {machine()}; CPUs {cpus}; {args.frames} frames, {args.concurrency} at a time, encoding {args.encoding}")
    pictures = frames()
    wire_costs(pictures)
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw in model_sets().items():
            if args.only and not name.startswith(args.only):
                continue
            raw["classifier"] = {**raw["classifier"], **ONE_THREAD}
            local = await in_process(raw, cpus[-1], pictures, args)
            one = await remote(raw, cpus[-1:], pictures, args, Path(tmp))
            line = f"{name}: in-process {local:6.1f} frames/s, 1 worker {one:6.1f} ({one / local:.2f}x)"
            if len(cpus) >= 2:
                two = await remote(raw, cpus[-2:], pictures, args, Path(tmp))
                line += f", 2 workers {two:6.1f} ({two / one:.2f}x one worker)"
            print(line, flush=True)
            if args.ceiling and len(cpus) >= 2:
                print(f"{name}: ceiling: " + ceiling(name.split()[0].lower(), cpus, args), flush=True)


def ceiling(modelset: str, cpus: list[int], args: argparse.Namespace) -> str:
    """Two pinned in-process classifiers at once against one alone: how far two of anything scale here."""
    def run(cpu_list: list[int]) -> list[float]:
        procs = [subprocess.Popen([sys.executable, __file__, "--solo", modelset, str(cpu), "--frames", str(args.frames),
                                   "--concurrency", str(args.concurrency)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for cpu in cpu_list]
        return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    alone = run(cpus[-1:])[0]
    both = sum(run(cpus[-2:]))
    return f"one classifier alone {alone:6.1f} frames/s, two at once {both:6.1f} ({both / alone:.2f}x)"


if __name__ == "__main__":
    asyncio.run(main())
