"""Regression tests from a second attacker's review (2026-11-28) of the review page, workers, native APIs,
banks and sweep: each asserts the safe behaviour, and each failed on the code as reviewed (commit 5a65da8).
Flag path: the benign face stand-in only (tests/support/configs.FACES)."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

from PIL import Image

from proxy.cli import main

from tests.support.configs import FACES, make_config
from tests.support.media import variant
from tests.support.photos import photo, photo_image
from tests.support.servers import Client, post_media, services, start


def faces(**overrides: Any) -> dict[str, Any]:
    pol = copy.deepcopy(FACES)
    pol.update(overrides)
    return pol


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def with_small_face(base: str, frac: float = 0.12, scale: int = 4) -> bytes:
    """A benign photo, upscaled so that it is judged as tiles too, with a small flagged face pasted in a
    corner: the face fills a tile, and the whole-frame PDQ stays within pdq_distance of the benign photo's."""
    img = photo_image(base)
    img = img.resize((img.width * scale, img.height * scale))
    w = int(img.width * frac)
    img.paste(photo_image("astronaut").resize((w, w)), (img.width - w, img.height - w))
    return jpeg(img)


async def test_own_bank_cannot_be_poisoned_to_refuse_a_benign_photo(aiohttp_client: Client) -> None:
    """One unauthenticated POST /api/v1/validate of a benign photo with a small face in a corner teaches the
    own bank the PDQ of the whole frame; the benign photo itself must still pass afterwards."""
    client = await start(aiohttp_client, make_config(faces()))
    status, body = await post_media(client, photo("coffee"))
    assert status == 200, body
    services(client).store.forget(body["sha256"], "main")
    status, body = await post_media(client, with_small_face("coffee"))
    assert status == 406 and body["decided_by"] == "model", body  # the attacker's upload is refused
    status, body = await post_media(client, variant("coffee"))
    assert status == 200, body  # SAFE: the benign photo (re-encoded) is not refused by the own bank


async def test_an_allowed_frame_does_not_carry_a_flagged_frame_through(aiohttp_client: Client) -> None:
    """A moderator allowed one false positive (grace_hopper) on the review page. An animation whose first
    frame is that picture and whose second is another flagged photo (astronaut) must still be refused: the
    allow bank fixes the allowed picture, not every file that contains it."""
    from proxy.bankcli import file_hashes
    from proxy.banks import ALLOW, file_entries
    from tests.support.media import animated_gif

    client = await start(aiohttp_client, make_config(faces()))
    sha256, _, frames = file_hashes(animated_gif(["grace_hopper"]))
    await services(client).banks.add(file_entries(ALLOW, sha256, frames, ("review:allow",)))
    status, body = await post_media(client, animated_gif(["astronaut"]))
    assert status == 406, body  # the flagged photo alone is refused
    status, body = await post_media(client, animated_gif(["grace_hopper", "astronaut"]))
    assert status == 406, body  # SAFE: the astronaut frame is still judged


NGINX_SITE = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    upstream backend {{ server 127.0.0.1:{ffp}; }}
    # examples/mastodon/nginx.conf, the one site of this nginx (listen 443 ssl there; plain HTTP here)
    server {{
        listen 127.0.0.1:{port};
        server_name masto.test;
        location / {{
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_pass http://backend;
            proxy_http_version 1.1;
        }}
    }}
}}
"""


async def test_the_public_vhost_never_reaches_the_review_page_or_the_api(aiohttp_client: Client, aiohttp_server: Any,
                                                                        tmp_path: Any) -> None:
    """nginx as the examples set it up (one site, `proxy_set_header Host $host`): a client that sends any
    Host no instance claims to the public site reaches fedi-filter's own API: the review page, the
    unauthenticated validation API, metrics. SAFE: only the instance's backend answers there."""
    import asyncio
    import shutil
    import socket
    import subprocess

    import aiohttp
    import pytest

    from tests.support.servers import make_env

    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx, or scripts/install-bench-tools.sh)")
    env = await make_env(aiohttp_client, aiohttp_server)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_SITE.format(tmp=tmp_path, ffp=env.client.port, port=port))
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/", headers={"Host": "masto.test"}) as r:
                        await r.read()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("nginx did not start")
            async with session.get(f"http://127.0.0.1:{port}/admin/", headers={"Host": "x"}) as r:
                page = await r.text()
            async with session.get(f"http://127.0.0.1:{port}/metrics", headers={"Host": "x"}) as r:
                metrics = await r.text()
        assert "fedi-filter review" not in page  # SAFE: the review page is not on the public site
        assert "ffp_" not in metrics
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_allowed_picture_with_a_flagged_insert_is_still_judged(aiohttp_client: Client) -> None:
    """A moderator allowed a picture (a false positive; coffee stands in for it). The same picture, upscaled,
    with a flagged face pasted in a corner stays within pdq_distance of the allowed hash: SAFE is that the
    face is still judged (refused), not waved through by the allow bank."""
    from proxy.bankcli import file_hashes
    from proxy.banks import ALLOW, file_entries

    client = await start(aiohttp_client, make_config(faces()))
    sha256, _, frames = file_hashes(photo("coffee"))
    await services(client).banks.add(file_entries(ALLOW, sha256, frames, ("review:allow",)))
    status, body = await post_media(client, with_small_face("coffee"))
    assert status == 406, body


WORKER_TOKENS = ["worker-one-token-0123456789abcdef", "worker-two-token-0123456789abcdef"]


async def test_a_token_revoked_during_the_hello_does_not_join(aiohttp_client: Client) -> None:
    """A stolen worker token: the thief opens the websocket and waits; the admin removes the token and sends
    SIGHUP (WorkerHub.apply); the thief then says hello. SAFE: it is refused, not welcomed into the pool."""
    import asyncio
    import dataclasses

    from classifier.detectors import NudeNetSource
    from classifier.remote import source_identity

    cfg = make_config(faces(), workers={"tokens": WORKER_TOKENS, "local": False})
    client = await start(aiohttp_client, cfg, ready=False)
    hub = services(client).hub
    assert hub is not None
    identity = {"nudenet": await asyncio.to_thread(lambda: source_identity(NudeNetSource(1)))}
    ws = await client.ws_connect("/api/v1/workers", headers={"Authorization": f"Bearer {WORKER_TOKENS[0]}"})
    revoked = hub.apply(dataclasses.replace(cfg.workers, tokens=(WORKER_TOKENS[1],)))  # what SIGHUP does
    assert revoked == 0  # nobody had joined with that token yet
    await ws.send_json({"type": "hello", "protocol": 1, "name": "thief", "capacity": 8,
                        "sources": identity})
    msg = await ws.receive(timeout=10)
    welcomed = msg.type.name == "TEXT" and msg.json().get("type") == "welcome"
    await ws.close()
    assert not welcomed, msg  # SAFE: a revoked token never joins


def gzip_zeros(size: int) -> bytes:
    import gzip

    return gzip.compress(b"\0" * size, 9)


async def test_api_bodies_are_held_against_the_in_flight_byte_budget(aiohttp_client: Client) -> None:
    """POST /api/v1/validate (unauthenticated) with a 20 KB gzip body that decodes to 20 MiB, on a server
    whose in-flight budget is 8 MiB. The reverse proxy refuses such a body (it budgets the decoded worst
    case); SAFE is that the API routes do too, so a few hundred concurrent small requests cannot make the
    process hold gigabytes."""
    client = await start(aiohttp_client, make_config(faces(timeout_ms=1000),
                                                     server={"max_inflight_bytes": 8 << 20}))
    resp = await client.post("/api/v1/validate", data=gzip_zeros(20 << 20),
                             headers={"Content-Type": "image/jpeg", "Content-Encoding": "gzip"})
    assert resp.status in (413, 503), await resp.text()


def test_a_poisoned_own_bank_does_not_make_sweep_delete_benign_media(tmp_path: Any) -> None:
    """The own-bank poisoning above (one POST /api/v1/validate to `fedi-filter serve`), then the admin's
    `fedi-filter sweep --action delete --yes` over the media store (same audit_db): SAFE is that the stored
    benign photo (coffee, re-encoded) is not deleted."""
    import asyncio

    import yaml
    from aiohttp.test_utils import TestClient, TestServer

    from proxy.config import load_config
    from proxy.server import build_app
    from tests.support.configs import config_dict

    raw = config_dict(faces())
    raw["server"]["audit_db"] = str(tmp_path / "audit.sqlite3")
    cfg_path = tmp_path / "faces.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))

    config = load_config(str(cfg_path))

    async def poison() -> None:
        app = build_app(config)
        async with TestClient(TestServer(app)) as client:
            await services(client).scorer.wait_ready()
            status, body = await post_media(client, with_small_face("coffee"))  # the attacker, unauthenticated
            assert status == 406, body
            await services(client).store.flush()

    asyncio.run(poison())
    media = tmp_path / "media"
    media.mkdir()
    (media / "coffee.jpg").write_bytes(variant("coffee"))  # a user's benign upload, stored by the backend
    main(["--log-level", "error", "sweep", "--config", str(cfg_path), "--report", str(tmp_path / "r.jsonl"),
          "--action", "delete", "--yes", str(media)])
    assert (media / "coffee.jpg").exists(), (tmp_path / "r.jsonl").read_text()  # SAFE: not deleted


def test_an_s3_sweep_never_deletes_its_own_quarantined_copies(tmp_path: Any, monkeypatch: Any) -> None:
    """One bucket, the quarantine prefix inside the swept prefix (`s3://media-bucket/` and `s3://media-bucket/quarantine/`). The
    first run moves the flagged photo to quarantine/<sha256>; the next run (cron) lists that copy, judges it
    flagged, "quarantines" it onto itself and then deletes it. SAFE: the quarantined copy is kept."""
    import yaml

    from tests.support import s3 as s3support
    from tests.support.configs import config_dict

    for key, value in s3support.aws_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    raw = config_dict(faces())
    raw["server"]["audit_db"] = str(tmp_path / "audit.sqlite3")
    cfg = tmp_path / "faces.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with s3support.moto_server() as endpoint:
        s3 = s3support.client(endpoint)
        s3.create_bucket(Bucket="media-bucket")
        s3.put_object(Bucket="media-bucket", Key="media/astronaut.jpg", Body=photo("astronaut"))
        s3.put_object(Bucket="media-bucket", Key="media/coffee.jpg", Body=photo("coffee"))
        for run in range(2):
            main(["--log-level", "error", "sweep", "--config", str(cfg), "--report", str(tmp_path / f"r{run}.jsonl"),
                  "--endpoint-url", endpoint, "--action", "quarantine", "--quarantine", "s3://media-bucket/quarantine/", "s3://media-bucket/"])
        held = [k for k in s3support.objects(s3, "media-bucket", "quarantine/") if "/manifest/" not in k]
        assert held, (tmp_path / "r1.jsonl").read_text()  # SAFE: the flagged photo is still held
