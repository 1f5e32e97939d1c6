"""Small proxied GETs of a claimed host: `fedi-filter serve` against nginx's own `proxy_pass`, with wrk.

    .venv/bin/python bench/bench_nginx.py [--rounds 5] [--seconds 5] [--before ../other-checkout]

One backend behind two fronts: by default the issue's pinned setup, a small aiohttp app (its own process,
uvloop when installed, answering a small JSON; ``--backend nginx`` uses an nginx with 1 worker instead, which
shows the fronts' own cost with a backend that is nearly free). The fronts: nginx (1 worker,
`proxy_pass` with upstream keepalive) and `fedi-filter serve` (its own process; uvloop when installed,
proxied requests not access-logged). `wrk -t1 -c16` drives each front in turn, the fronts interleaved
round after round in one run; the medians are printed with their ratio. ``--before DIR`` adds a serve
started from another checkout (the code before a change), interleaved the same way.
nginx and wrk come from scripts/install-bench-tools.sh (run here when either is missing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}-body; proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fcgi; uwsgi_temp_path {dir}/{name}-uwsgi; scgi_temp_path {dir}/{name}-scgi;
    {body}
}}
"""
BACKEND = """server {{ listen 127.0.0.1:{port}; keepalive_requests 100000;
    location / {{ default_type application/json; return 200 '{{"ok":true,"items":[1,2,3]}}'; }} }}"""
FRONT = """upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; keepalive_requests 100000; }}
server {{ listen 127.0.0.1:{port}; keepalive_requests 100000;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
                  proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}"""


def nginx(tmp: str, name: str, body: str) -> subprocess.Popen[bytes]:
    conf = Path(tmp) / f"{name}.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp, name=name, body=body))
    return subprocess.Popen([NGINX, "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.DEVNULL)


BACKEND_APP = """
import asyncio, sys
from aiohttp import web
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
async def small(request):
    return web.json_response({"ok": True, "items": [1, 2, 3]})
app = web.Application()
app.router.add_get("/{tail:.*}", small)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def aiohttp_backend(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BACKEND_APP, str(port)], stderr=subprocess.DEVNULL)


def serve(tmp: str, root: Path, name: str, port: int, backend: int) -> subprocess.Popen[bytes]:
    cfg = {
        "server": {"listen": f"127.0.0.1:{port}", "audit_db": ""},
        "classifier": {"model": "ffp-tiny-clip", "pretrained": "random", "device": "cpu"},
        "policies": {"p": {"concepts": {"c": {"prompts": {"a cat": 1.0}}}, "labels": {"l": {"all": [{"concept": "c"}]}}}},
        "instances": [{"name": "social", "kind": "mastodon", "hosts": ["social.test"],
                       "upstream": f"http://127.0.0.1:{backend}", "policy": "p"}],
    }
    path = Path(tmp) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "proxy", "--log-level", "warning", "serve", "--config", str(path)],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(port: int, host: str) -> None:
    for _ in range(600):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/timelines/public", headers={"Host": host})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers on port {port}")


def wrk(port: int, seconds: int, connections: int) -> tuple[float, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", "Host: social.test",
                          f"http://127.0.0.1:{port}/api/v1/timelines/public"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert p50 is not None and "Non-2xx" not in out, out
    ms = float(p50.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return rps, ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--backend", choices=("aiohttp", "nginx"), default="aiohttp")
    ap.add_argument("--before", type=Path, help="another checkout whose serve runs beside this one")
    args = ap.parse_args()
    if not (os.access(NGINX, os.X_OK) and shutil.which("wrk")):
        subprocess.run([str(ROOT / "scripts" / "install-bench-tools.sh")], check=True)

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            backend, front = free_port(), free_port()
            if args.backend == "nginx":
                procs.append(nginx(tmp, "backend", BACKEND.format(port=backend)))
            else:
                procs.append(aiohttp_backend(backend))
            procs.append(nginx(tmp, "front", FRONT.format(port=front, backend=backend)))
            fronts = {"nginx": front}
            for name, root in (("serve", ROOT), ("serve before", args.before)):
                if root is not None:
                    fronts[name] = free_port()
                    procs.append(serve(tmp, root.resolve(), name.replace(" ", "-"), fronts[name], backend))
            for port in fronts.values():
                wait_up(port, "social.test")
            for port in fronts.values():  # warm-up
                wrk(port, 1, args.connections)
            print(f"machine: {os.cpu_count()} cores (shared), {args.backend} backend, nginx 1 worker, wrk -t1 -c{args.connections}, "
                  f"{args.seconds} s x {args.rounds} rounds, fronts interleaved")
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in fronts}
            for r in range(args.rounds):
                for name, port in fronts.items():
                    results[name].append(wrk(port, args.seconds, args.connections))
                print(f"round {r + 1}: " + ", ".join(f"{n} {results[n][-1][0]:.0f} req/s" for n in fronts), flush=True)
            med = {n: statistics.median(x[0] for x in v) for n, v in results.items()}
            for name, values in results.items():
                p50 = statistics.median(x[1] for x in values)
                print(f"{name:13}: median {med[name]:8.0f} req/s, p50 latency {p50:.2f} ms "
                      f"({med[name] / med['nginx']:.2f}x nginx)")
        finally:
            stop(procs)


if __name__ == "__main__":
    main()
