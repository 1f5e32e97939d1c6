"""The fedi-filter command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.configs import FACES, config_dict
from tests.support.photos import photo

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_check_config_ok_and_summary() -> None:
    r = run("check-config", "config/default.yaml")
    assert r.returncode == 0, r.stderr
    assert "policy csam" in r.stdout and "csam->reject" in r.stdout


def test_check_config_error_names_the_path(tmp_path: Path) -> None:
    raw = config_dict()
    raw["instances"][0]["policy"] = "missing"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = run("check-config", str(path))
    assert r.returncode == 2
    assert "instances[0].policy: 'missing' is not a policy" in r.stderr
    path.write_text("server: [unclosed")
    r = run("check-config", str(path))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_scan_prints_one_verdict_per_file(tmp_path: Path) -> None:
    cfg = tmp_path / "faces.yaml"
    cfg.write_text(yaml.safe_dump(config_dict(FACES)))
    files = []
    for name in ("astronaut", "coffee"):
        f = tmp_path / f"{name}.jpg"
        f.write_bytes(photo(name))
        files.append(str(f))
    broken = tmp_path / "broken.png"
    broken.write_bytes(photo("coffee", "PNG")[:999])
    r = run("scan", "--config", str(cfg), "--json", *files, str(broken))
    assert r.returncode == 1, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(v["file"], v["action"]) for v in lines] == [(files[0], "reject"), (files[1], "accept"), (str(broken), "reject")]
    assert lines[0]["labels"] == ["portrait"] and lines[2]["error_kind"] == "corrupt"
    r = run("scan", "--config", str(cfg), files[1])
    assert r.returncode == 0 and r.stdout.startswith(f"{files[1]}: accept")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_run_defaults_serve_offline_and_fail_closed(tmp_path: Path) -> None:
    """What `make run` starts on a fresh offline machine: it serves, /healthz says why the classifier is
    not ready, and media is refused meanwhile (on_error: reject), never silently passed."""
    port = free_port()
    env = {**os.environ, "FEDI_FILTER_LISTEN": f"127.0.0.1:{port}", "FEDI_FILTER_AUDIT_DB": str(tmp_path / "a.db"),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", "config/default.yaml"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read())
                exc.close()
                if body["classifier"]["state"] == "failed":
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert body is not None and body["classifier"]["state"] == "failed", body
        assert "ViT-L-14" in body["classifier"]["reason"]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/validate", data=photo("coffee"),
                                     headers={"Content-Type": "image/jpeg"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 503
        assert json.loads(info.value.read())["error_kind"] == "not_ready"
        info.value.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "classifier not ready" in out


@pytest.mark.slow
def test_egress_command_serves_as_a_proxy(tmp_path: Path) -> None:
    """`fedi-filter egress` as a real process: a clean image fetched through it arrives byte-identical,
    a portrait (the face stand-in) is refused, and its admin port serves metrics."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    images = {"/coffee.jpg": photo("coffee"), "/astronaut.jpg": photo("astronaut")}

    class Media(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = images[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    media = ThreadingHTTPServer(("127.0.0.1", 0), Media)
    threading.Thread(target=media.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    raw = config_dict(FACES, fetch={"allow_networks": ["127.0.0.1/32"]})
    raw["server"]["audit_db"] = str(tmp_path / "a.db")
    raw["egress"] = {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}", "confdir": str(tmp_path / "mitm")}
    cfg = tmp_path / "egress.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "egress", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
        base = f"http://127.0.0.1:{media.server_address[1]}"
        with opener.open(f"{base}/coffee.jpg", timeout=30) as r:
            assert r.read() == images["/coffee.jpg"]
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(f"{base}/astronaut.jpg", timeout=30)
        info.value.close()
        assert info.value.code == 403 and info.value.headers["X-Fedi-Filter"].startswith("reject")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'ffp_egress_responses_total{outcome="accepted"} 1.0' in text
        assert 'ffp_egress_responses_total{outcome="refused"} 1.0' in text
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        media.shutdown()
        media.server_close()


def test_model_hub_warnings_are_printed_once() -> None:
    """huggingface_hub's logger has a handler of its own; with ours beside it each line came out twice."""
    code = ("from proxy.cli import _setup_logging; _setup_logging('info'); "
            "from huggingface_hub.utils import logging as hub; hub.get_logger('huggingface_hub.utils._http')"
            ".warning('Retrying in 1s [Retry 1/5].')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stderr.count("Retrying in 1s") == 1, out.stderr


@pytest.mark.parametrize("level", ["info", "debug"])
def test_open_clip_speaks_under_its_own_name_and_its_steps_only_in_debug(level: str) -> None:
    """open_clip logs ten INFO lines a model load through the root logger: at info they are not shown, at
    debug they are, named open_clip; its warnings (random weights) are shown at both."""
    code = (f"from proxy.cli import _setup_logging; _setup_logging({level!r}); "
            "from classifier.sources import register_model_configs; register_model_configs(); "
            "import open_clip; open_clip.create_model_and_transforms('ffp-tiny-clip')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert "WARNING open_clip: No pretrained weights loaded" in out.stderr, out.stderr
    assert " root: " not in out.stderr, out.stderr
    steps = out.stderr.count("DEBUG open_clip: ")
    assert (steps >= 5) if level == "debug" else (steps == 0 and "INFO open_clip" not in out.stderr), out.stderr
