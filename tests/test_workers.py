"""Remote model workers as real processes on loopback: `fedi-filter serve` with `workers.local: false` and
`fedi-filter worker` processes dialling in, judged with the face stand-in (NudeNet's real weights)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.support.configs import FACES, config_dict, policy
from tests.support.media import variant
from tests.support.photos import photo, photo_image

ROOT = Path(__file__).resolve().parent.parent
TOKENS = ["worker-one-token-0123456789abcdef", "worker-two-token-0123456789abcdef"]
WAIT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def _variant(name: str, quality: int) -> bytes:
    """The photo as a JPEG of this quality: other bytes (no cache hit), the same picture."""
    return variant(name, scale=1, quality=quality)


class Proc:
    """A real `python -m proxy ...` process; its output is collected for assertions about log lines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the procs fixture
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], cwd=ROOT, stdout=self.out,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def log(self) -> str:
        self.out.seek(0)
        return self.out.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


class Serve:
    def __init__(self, tmp: Path, **workers: Any) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.raw = config_dict(FACES)
        self.raw["server"].update(listen=f"127.0.0.1:{self.port}", audit_db=str(tmp / "audit.db"))
        self.raw["policies"]["main"]["timeout_ms"] = 6000
        self.raw["workers"] = {"tokens": ["${FFP_T1}", "${FFP_T2}"], "local": False, **workers}
        self.path = tmp / "serve.yaml"
        self.write()
        self.env = {"FFP_T1": TOKENS[0], "FFP_T2": TOKENS[1]}
        self.proc = Proc("serve", "--config", str(self.path), env=self.env)
        wait_for("serve to listen", lambda: self.health() is not None)

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.raw))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as exc:
            body = dict(json.loads(exc.read()))
            exc.close()
            return body
        except OSError:
            return None

    def workers(self) -> list[str]:
        health = self.health() or {}
        return [w["name"] for w in health.get("classifier", {}).get("workers", []) if w["ready"]]

    def validate(self, data: bytes, timeout: float = 60) -> tuple[int, dict[str, Any], dict[str, str]]:
        req = urllib.request.Request(f"{self.url}/api/v1/validate", data=data, headers={"Content-Type": "image/jpeg"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read()), dict(r.headers)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
            exc.close()
            return exc.code, body, dict(exc.headers)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def worker(self, name: str, token: str = TOKENS[0], config: Path | None = None) -> Proc:
        return Proc("worker", "--connect", self.url, "--token", token, "--config", str(config or self.path),
                    "--name", name, env=self.env)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop(signal.SIGKILL)
        p.out.close()


@pytest.mark.slow
def test_remote_worker_judges_fails_closed_when_killed_and_recovers(tmp_path: Path, procs: list[Proc]) -> None:
    serve = Serve(tmp_path)
    procs.append(serve.proc)
    health = serve.health()
    assert health is not None and health["status"] == "not_ready"
    assert "no worker connected" in health["classifier"]["reason"]
    status, body, headers = serve.validate(_variant("coffee", 90))
    assert status == 503 and body["error_kind"] == "not_ready" and headers["Retry-After"]

    worker = serve.worker("gpu-home")
    procs.append(worker)
    wait_for("the worker to connect", lambda: serve.workers() == ["gpu-home"])
    status, body, _ = serve.validate(photo("astronaut"))
    assert status == 406 and body["labels"] == ["portrait"] and body["decided_by"] == "model"
    status, body, _ = serve.validate(photo("coffee"))
    assert status == 200 and body["action"] == "accept"

    def audit() -> list[tuple[str, str]]:
        with sqlite3.connect(serve.tmp / "audit.db") as db:
            return list(db.execute("SELECT action, worker FROM decisions WHERE decided_by = 'model' ORDER BY id"))

    assert wait_for("the audit rows", lambda: len(audit()) == 2 and audit()) == [("reject", "gpu-home"), ("accept", "gpu-home")]
    text = serve.metrics()
    assert "ffp_workers_connected 1.0" in text
    assert 'ffp_worker_rtt_seconds_count{worker="gpu-home"} 2.0' in text
    assert 'ffp_worker_frames_in_flight{worker="gpu-home"} 0.0' in text

    worker.stop(signal.SIGKILL)
    wait_for("the worker to be dropped", lambda: serve.workers() == [])
    status, body, headers = serve.validate(_variant("rocket", 91), timeout=30)
    assert status == 503 and body["error_kind"] == "not_ready" and headers["Retry-After"]

    again = serve.worker("gpu-home")
    procs.append(again)
    wait_for("the worker to reconnect", lambda: serve.workers() == ["gpu-home"])
    status, body, _ = serve.validate(_variant("rocket", 91))
    assert status == 200 and body["decided_by"] == "model"
    assert serve.proc.proc.poll() is None
    assert TOKENS[0] not in serve.proc.log()


@pytest.mark.slow
def test_two_workers_share_work_and_bad_ones_are_refused(tmp_path: Path, procs: list[Proc]) -> None:
    serve = Serve(tmp_path)
    procs.append(serve.proc)
    procs += [serve.worker("w1", TOKENS[0]), serve.worker("w2", TOKENS[1])]
    wait_for("two workers", lambda: sorted(serve.workers()) == ["w1", "w2"])
    # clean photos: each is scored (a refused one would be learned by the own bank, and its copies
    # refused from there without a model call)
    for quality in range(80, 88):
        status, body, _ = serve.validate(_variant("coffee", quality))
        assert status == 200 and body["decided_by"] == "model"
    scored = {w["name"]: w["frames_scored"] for w in (serve.health() or {})["classifier"]["workers"]}
    assert scored["w1"] > 0 and scored["w2"] > 0 and scored["w1"] + scored["w2"] == 8

    # a wrong token: refused before the websocket opens, and the token is never logged
    wrong = serve.worker("intruder", "not-a-token-of-this-proxy-000000")
    procs.append(wrong)
    wait_for("the refusal", lambda: "missing or unknown token" in serve.proc.log())
    wait_for("the worker to say so", lambda: "HTTP 401 (wrong token?)" in wrong.log())

    # models that disagree with the policy: a worker configured with CLIP only, no NudeNet
    other = tmp_path / "clip-only.yaml"
    other.write_text(yaml.safe_dump(config_dict(policy())))
    mismatch = serve.worker("clip-only", TOKENS[0], config=other)
    procs.append(mismatch)
    wait_for("the mismatch refusal", lambda: "worker clip-only from 127.0.0.1 refused: it has no 'nudenet' model" in serve.proc.log())
    wait_for("the worker to log why", lambda: "refused this worker: it has no 'nudenet' model" in mismatch.log())
    assert sorted(serve.workers()) == ["w1", "w2"]
    log = serve.proc.log()
    assert not any(t in log for t in TOKENS) and "not-a-token-of-this-proxy" not in log


@pytest.mark.slow
def test_fingerprint_pin_refuses_other_weights(tmp_path: Path, procs: list[Proc]) -> None:
    serve = Serve(tmp_path, fingerprints={"nudenet": "sha256:" + "0" * 64})
    procs.append(serve.proc)
    worker = serve.worker("w1")
    procs.append(worker)
    wait_for("the refusal", lambda: "worker w1 from 127.0.0.1 refused: nudenet fingerprint" in serve.proc.log())
    assert serve.workers() == []


@pytest.mark.slow
def test_sighup_revokes_a_token_and_a_broken_reload_keeps_the_old_config(tmp_path: Path, procs: list[Proc]) -> None:
    serve = Serve(tmp_path)
    procs.append(serve.proc)
    procs += [serve.worker("w1", TOKENS[0]), serve.worker("w2", TOKENS[1])]
    wait_for("two workers", lambda: sorted(serve.workers()) == ["w1", "w2"])
    serve.raw["workers"]["tokens"] = ["${FFP_T1}"]
    serve.write()
    serve.proc.proc.send_signal(signal.SIGHUP)
    wait_for("w2 to be revoked", lambda: serve.workers() == ["w1"])
    assert "worker w2: its token was revoked" in serve.proc.log()
    wait_for("w2 to be refused on reconnecting", lambda: "HTTP 401" in procs[-1].log())

    serve.path.write_text("workers: [broken")
    serve.proc.proc.send_signal(signal.SIGHUP)
    wait_for("the reload error", lambda: "config reload failed, keeping the old config" in serve.proc.log())
    status, body, _ = serve.validate(photo("coffee"))
    assert status == 200 and serve.workers() == ["w1"]


@pytest.mark.slow
def test_a_hostile_worker_is_dropped_and_cannot_stall_the_proxy(tmp_path: Path, procs: list[Proc]) -> None:
    """A worker with a valid token that answers garbage: the proxy disconnects it, the upload gets the
    fail-closed answer, and the proxy keeps serving."""
    import asyncio

    import aiohttp

    serve = Serve(tmp_path)
    procs.append(serve.proc)
    answers = [{"type": "result", "id": 1, "scores": [{"nudenet": {"FACE_FEMALE": "NaN"}}]},
               {"type": "result", "id": 99, "scores": []}, "x" * (5 << 20)]

    async def hostile(answer: Any, result: list[Any]) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{serve.port}/api/v1/workers", headers={"Authorization": f"Bearer {TOKENS[0]}"}) as ws:
            await ws.send_json({"type": "hello", "protocol": 1, "name": "hostile", "capacity": 8,
                                "sources": {"nudenet": {"model": "nudenet", "fingerprint": "x", "preprocess": "y", "keys": []}}})
            assert (await ws.receive_json())["type"] == "welcome"
            job = await ws.receive()
            assert job.type is aiohttp.WSMsgType.BINARY
            await ws.send_str(answer if isinstance(answer, str) else json.dumps(answer))
            result.append(await ws.receive())

    for i, answer in enumerate(answers):
        result: list[Any] = []

        def run(a: Any = answer, r: list[Any] = result) -> None:
            try:
                asyncio.run(hostile(a, r))
            except Exception as exc:  # reported by the assertion below
                r.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        wait_for("the hostile worker", lambda: serve.workers() == ["hostile"])
        status, body, _ = serve.validate(_variant("coffee", 70 + i), timeout=30)
        thread.join(30)
        assert result, serve.proc.log()[-3000:]
        dropped = isinstance(result[0], ConnectionError | aiohttp.ClientError) or (
            not isinstance(result[0], Exception)
            and result[0].type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR))
        assert dropped, result
        assert status == 503 and body["action"] == "reject"
    log = serve.proc.log()
    assert "protocol error" in log
    assert (serve.health() or {}).get("classifier", {}).get("state") == "no_workers"


def test_frames_cross_the_wire_losslessly() -> None:
    from classifier.remote import ProtocolError, decode_frames, encode_frames

    frames = [photo_image("coffee").convert("RGB"), Image.new("RGB", (3, 2), (1, 2, 3))]
    for encoding in ("raw", "png", "webp"):
        meta, blob = encode_frames(frames, encoding)
        back = decode_frames(meta, blob, 8)
        assert [f.tobytes() for f in back] == [f.tobytes() for f in frames], encoding
    meta, blob = encode_frames(frames, "raw")
    for bad_meta, bad_blob in (([[3, 2, "raw", 18]], blob), ([[5000, 2, "raw", 18]], blob[:18]),
                               (meta, blob + b"x"), ([[3, 2, "gif", 18]], blob[:18]), (meta * 10, blob)):
        with pytest.raises(ProtocolError):
            decode_frames(bad_meta, bad_blob, 8)


@pytest.mark.slow
async def test_worker_verifies_tls_with_a_private_ca(aiohttp_server: Any, tmp_path: Path, procs: list[Proc]) -> None:
    """Over https the worker verifies the proxy's certificate: refused without the private CA, scoring with
    --ca. (serve runs in this process on TLS here; nginx terminates TLS in front of a real one.)"""
    import asyncio
    import ssl

    import trustme

    from proxy.app import SERVICES
    from proxy.config import parse_config
    from proxy.server import build_app

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    raw = config_dict(FACES)
    raw["workers"] = {"tokens": [TOKENS[0]], "local": False}
    app = build_app(parse_config(raw))
    server = await aiohttp_server(app, ssl=server_ctx)
    cfg = tmp_path / "worker.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    url = f"https://127.0.0.1:{server.port}"

    async def wait(what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not check():
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            await asyncio.sleep(0.2)

    untrusting = Proc("worker", "--connect", url, "--token", TOKENS[0], "--config", str(cfg), "--name", "no-ca")
    procs.append(untrusting)
    await wait("the certificate refusal", lambda: "CERTIFICATE_VERIFY_FAILED" in untrusting.log())
    pool = app[SERVICES].scorer
    assert not pool.ready

    trusting = Proc("worker", "--connect", url, "--token", TOKENS[0], "--config", str(cfg), "--name", "with-ca",
                    "--ca", str(ca_file))
    procs.append(trusting)
    await wait("the worker over TLS", lambda: pool.ready)
    verdict = await app[SERVICES].pipeline.judge(photo("astronaut"), app[SERVICES].config.instances[0], "validate")
    assert verdict.action == "reject" and verdict.worker == "with-ca"


def test_the_vps_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.config import ConfigError, load_config

    monkeypatch.setenv("FEDI_FILTER_WORKER_TOKEN", TOKENS[0])
    monkeypatch.setenv("FEDI_FILTER_ADMIN_TOKEN", "admin")
    cfg = load_config(ROOT / "examples" / "workers" / "vps.yaml")
    assert cfg.workers.tokens == (TOKENS[0],) and not cfg.workers.local and cfg.workers.enabled and not cfg.store
    monkeypatch.setenv("FEDI_FILTER_STORE", "mysql://nope")
    with pytest.raises(ConfigError, match="store: expected null"):
        load_config(ROOT / "examples" / "workers" / "vps.yaml")
    monkeypatch.setenv("FEDI_FILTER_WORKER_TOKEN", "short")
    with pytest.raises(ConfigError, match="workers.tokens: every worker token needs 16 characters"):
        load_config(ROOT / "examples" / "workers" / "vps.yaml")


@pytest.mark.slow
def test_a_worker_lost_mid_batch_hands_its_frames_to_another(tmp_path: Path, procs: list[Proc]) -> None:
    """The batch goes to a worker that takes it and drops the connection: the frames are scored by the
    other worker, and the verdict is the model's, not the fallback."""
    import asyncio

    import aiohttp

    from classifier.detectors import NudeNetSource
    from classifier.remote import source_identity

    serve = Serve(tmp_path)
    procs.append(serve.proc)
    procs.append(serve.worker("steady", TOKENS[1]))
    wait_for("the steady worker", lambda: serve.workers() == ["steady"])
    status, _, _ = serve.validate(_variant("coffee", 60))
    assert status == 200  # the steady worker has been used; the next batch goes to the idler newcomer
    identity = {"nudenet": source_identity(NudeNetSource(1))}
    took: list[bool] = []

    async def dying() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{serve.port}/api/v1/workers", headers={"Authorization": f"Bearer {TOKENS[0]}"}) as ws:
            await ws.send_json({"type": "hello", "protocol": 1, "name": "dying", "capacity": 8, "sources": identity})
            assert (await ws.receive_json())["type"] == "welcome"
            took.append((await ws.receive()).type is aiohttp.WSMsgType.BINARY)

    thread = threading.Thread(target=lambda: asyncio.run(dying()))
    thread.start()
    wait_for("the second worker", lambda: sorted(serve.workers()) == ["dying", "steady"])
    status, body, _ = serve.validate(photo("astronaut"))
    thread.join(30)
    assert took == [True]
    assert status == 406 and body["decided_by"] == "model" and body["labels"] == ["portrait"]
    assert "worker dying lost" in serve.proc.log() and "go to another worker" in serve.proc.log()

    def audit() -> list[tuple[str, str]]:
        with sqlite3.connect(serve.tmp / "audit.db") as db:
            return list(db.execute("SELECT action, worker FROM decisions WHERE decided_by = 'model' ORDER BY id"))

    assert wait_for("the audit rows", lambda: len(audit()) == 2 and audit())[1] == ("reject", "steady")


@pytest.mark.slow
def test_a_silent_worker_is_dropped_after_unanswered_batches(tmp_path: Path, procs: list[Proc]) -> None:
    """A worker that takes batches and never answers costs each asker its policy timeout (fail closed:
    503), and is dropped after MAX_UNANSWERED batches in a row."""
    import asyncio

    import aiohttp

    from classifier.remote import MAX_UNANSWERED

    serve = Serve(tmp_path)
    procs.append(serve.proc)
    jobs: list[Any] = []

    async def silent() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{serve.port}/api/v1/workers", headers={"Authorization": f"Bearer {TOKENS[0]}"}) as ws:
            await ws.send_json({"type": "hello", "protocol": 1, "name": "silent", "capacity": 8,
                                "sources": {"nudenet": {"model": "nudenet", "fingerprint": "x", "preprocess": "y", "keys": []}}})
            async for msg in ws:
                jobs.append(msg.type)

    thread = threading.Thread(target=lambda: asyncio.run(silent()))
    thread.start()
    wait_for("the silent worker", lambda: serve.workers() == ["silent"])
    for i in range(MAX_UNANSWERED):
        status, body, _ = serve.validate(_variant("coffee", 50 + i), timeout=30)
        assert status == 503 and body["error_kind"] == "timeout"
    thread.join(30)
    assert not thread.is_alive() and jobs.count(aiohttp.WSMsgType.BINARY) == MAX_UNANSWERED
    wait_for("the drop", lambda: f"worker silent disconnected: no answer to {MAX_UNANSWERED} batches" in serve.proc.log())
    assert serve.workers() == []


@pytest.mark.slow
def test_local_models_count_as_one_worker(tmp_path: Path, procs: list[Proc]) -> None:
    """workers.local: true: the in-process models set the reference a worker must match, and both share
    the work."""
    serve = Serve(tmp_path, local=True)
    procs.append(serve.proc)
    wait_for("the local models", lambda: (serve.health() or {}).get("status") == "ok")
    procs.append(serve.worker("w1"))
    wait_for("the worker", lambda: sorted(serve.workers()) == ["local", "w1"])
    status, body, _ = serve.validate(_variant("astronaut", 80))
    assert status == 406 and body["labels"] == ["portrait"]
    for quality in range(80, 84):
        status, body, _ = serve.validate(_variant("rocket", quality))
        assert status == 200 and body["decided_by"] == "model"
    scored = {w["name"]: w["frames_scored"] for w in (serve.health() or {})["classifier"]["workers"]}
    assert scored["local"] > 0 and scored["w1"] > 0
