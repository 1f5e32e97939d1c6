"""The egress addon's own cost: small JSON fetched through `fedi-filter egress` vs through bare mitmproxy
with the same options and no addon, each its own process, interleaved round after round in one run.

    .venv/bin/python bench/bench_egress_bare.py [--rounds 5] [--requests 1000] [--concurrency 8]
        [--config config/cpu.yaml] [--before ../other-checkout]

The JSON host (aiohttp) runs in its own process too; the client (aiohttp, keep-alive through the proxy)
runs here. ``--before DIR`` adds the egress of another checkout (the code before a change).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, stop

ROOT = Path(__file__).resolve().parent.parent

JSON_HOST = """
import sys
from aiohttp import web
async def note(request):
    return web.json_response({"type": "Note", "id": "https://remote.example/notes/1", "content": "hello"},
                             content_type="application/activity+json")
app = web.Application()
app.router.add_get("/note", note)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

BARE_MITM = """
import asyncio, sys, yaml
from mitmproxy.options import Options
from mitmproxy.tools.dump import DumpMaster
from proxy.config import parse_config
from proxy.egress import mitm_options
async def main():
    settings = parse_config(yaml.safe_load(open(sys.argv[1]))).egress
    master = DumpMaster(Options(), with_termlog=False, with_dumper=False)
    master.options.update(**mitm_options(settings))
    await master.run()
asyncio.run(main())
"""


async def measure(session: aiohttp.ClientSession, url: str, proxy: str, n: int, conc: int) -> float:
    sem = asyncio.Semaphore(conc)

    async def one() -> None:
        async with sem, session.get(url, proxy=proxy) as r:
            await r.read()
            assert r.status == 200, r.status

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


async def wait_up(session: aiohttp.ClientSession, url: str, proxy: str | None) -> None:
    for _ in range(900):
        try:
            async with session.get(url, proxy=proxy) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} via {proxy} never answered")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--config", default="config/cpu.yaml")
    ap.add_argument("--before", type=Path)
    args = ap.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            jport = free_port()
            procs.append(subprocess.Popen([sys.executable, "-c", JSON_HOST, str(jport)], **quiet))  # type: ignore[call-overload]
            proxies: dict[str, tuple[str, int]] = {}
            for name, root in (("bare mitmproxy", None), ("egress", ROOT), ("egress before", args.before)):
                if name == "egress before" and root is None:
                    continue
                port, admin = free_port(), free_port()
                raw = yaml.safe_load((ROOT / args.config).read_text())
                raw["server"] = {"listen": "127.0.0.1:0", "audit_db": f"{tmp}/{port}.sqlite3"}
                raw["instances"] = raw["instances"][:1]
                raw["fetch"] = {"allow_networks": ["127.0.0.1/32"]}  # the JSON host is on loopback
                raw["egress"] = {"listen": f"127.0.0.1:{port}", "confdir": f"{tmp}/mitm-{port}",
                                 "admin_listen": f"127.0.0.1:{admin}"}
                cfg = Path(tmp) / f"{port}.yaml"
                cfg.write_text(yaml.safe_dump(raw))
                if root is None:
                    cmd = [sys.executable, "-c", BARE_MITM, str(cfg)]
                    cwd = ROOT
                else:
                    cmd = [sys.executable, "-m", "proxy", "--log-level", "warning", "egress", "--config", str(cfg)]
                    cwd = root.resolve()
                procs.append(subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONPATH": str(cwd)}, **quiet))  # type: ignore[call-overload]
                proxies[name] = (f"http://127.0.0.1:{port}", admin if root is not None else 0)
            url = f"http://127.0.0.1:{jport}/note"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
                await wait_up(session, url, None)
                for proxy, admin in proxies.values():
                    if admin:
                        await wait_up(session, f"http://127.0.0.1:{admin}/healthz", None)
                    await wait_up(session, url, proxy)
                    await measure(session, url, proxy, 200, args.concurrency)  # warm-up
                print(f"machine: {os.cpu_count()} cores (shared); {args.requests} small JSON GETs per round, "
                      f"concurrency {args.concurrency}, policy {args.config}, proxies interleaved")
                rates: dict[str, list[float]] = {n: [] for n in proxies}
                for r in range(args.rounds):
                    for name, (proxy, _) in proxies.items():
                        rates[name].append(await measure(session, url, proxy, args.requests, args.concurrency))
                    print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f} req/s" for n in proxies), flush=True)
            base = statistics.median(rates["bare mitmproxy"])
            for name, values in rates.items():
                med = statistics.median(values)
                print(f"{name:15}: median {med:7.0f} req/s ({med / base:.2f}x bare mitmproxy)")
        finally:
            stop(procs)


if __name__ == "__main__":
    asyncio.run(main())
