"""Helpers shared by the benchmark scripts: benign photos, machine description, peak RSS."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from tests.support.photos import CORPUS, photo_image  # noqa: F401  (re-exported for the scripts)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "coins", "moon", "clock", "colorwheel")


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(procs: list[subprocess.Popen[Any]]) -> None:
    """Terminate every process, then wait for each (they shut down side by side)."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            out[key] = int(value.split()[0])
    return out


ROOT = Path(__file__).resolve().parent.parent


async def start_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """An aiohttp app on a free loopback port (a backend, or serve in this process); cleanup() the runner."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@asynccontextmanager
async def serve_process(config: dict[str, Any]) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`fedi-filter serve` as a process of its own (so its memory is measured alone) with ``config``,
    yielded once /healthz answers 200 on its listen address."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(config, fh)
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--log-level", "warning", "serve", "--config", fh.name],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://{config['server']['listen']}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.unlink(fh.name)
