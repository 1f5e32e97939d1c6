"""The egress proxy: the real mitmproxy with our addon on loopback, real HTTP(S) clients fetching through
it from local aiohttp media hosts (HTTPS with a trustme test CA)."""

from __future__ import annotations

import asyncio
import copy
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from proxy.config import parse_config
from proxy.egress import Egress
from proxy.stores.memory import DENIALS_FRESH_S
from tests.support.egress import client_ssl, egress_config, get, make_ca, running
from tests.support.hosts import HITS, Backend, media_app
from tests.support.photos import photo
from tests.support.servers import Env, audit_rows, deliver, delivery, drain, sample, start


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, str]:
    return make_ca(tmp_path)


@pytest.fixture
async def egress(tmp_path: Path, ca: tuple[trustme.CA, str]) -> AsyncIterator[tuple[Egress, str]]:
    async for e in running(egress_config(tmp_path, ca[1], max_bytes=1024 * 1024)):
        yield e


async def test_clean_media_passes_byte_identical_and_flagged_is_403(egress, aiohttp_server) -> None:
    _, proxy = egress
    media = await aiohttp_server(media_app())
    base = f"http://127.0.0.1:{media.port}"
    status, body, _ = await get(proxy, f"{base}/img/coffee.jpg")
    assert status == 200 and body == photo("coffee")
    status, body, headers = await get(proxy, f"{base}/img/astronaut.jpg")
    assert status == 403 and headers["X-Fedi-Filter"].startswith("reject: portrait")
    # judged once: the second fetch of the same URL is refused before any connection
    status, _, headers = await get(proxy, f"{base}/img/astronaut.jpg")
    assert status == 403 and headers["X-Fedi-Filter"].startswith("denied")
    assert media.app[HITS] == {"coffee": 1, "astronaut": 1}


async def test_https_is_intercepted_with_the_proxy_ca(egress, aiohttp_server, ca, tmp_path) -> None:
    _, proxy = egress
    bundle = (tmp_path / "mitm" / "ca-bundle.pem").read_text()  # what backends point SSL_CERT_FILE at
    assert (tmp_path / "mitm" / "mitmproxy-ca-cert.pem").read_text() in bundle and bundle.count("BEGIN CERTIFICATE") > 1
    authority, _ = ca
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_ctx)
    media = await aiohttp_server(media_app(), ssl=server_ctx)
    base = f"https://127.0.0.1:{media.port}"
    status, body, _ = await get(proxy, f"{base}/img/rocket.jpg", ssl=client_ssl(tmp_path))
    assert status == 200 and body == photo("rocket")
    status, _, headers = await get(proxy, f"{base}/img/grace_hopper.jpg", ssl=client_ssl(tmp_path))
    assert status == 403 and "portrait" in headers["X-Fedi-Filter"]


async def test_text_streams_untouched_and_disguised_media_is_cut(egress, aiohttp_server) -> None:
    e, proxy = egress
    media = await aiohttp_server(media_app())
    base = f"http://127.0.0.1:{media.port}"
    status, body, headers = await get(proxy, f"{base}/note")
    assert status == 200 and len(body) > 100_000 and body.startswith(b'{"type": "Note"')
    status, body, _ = await get(proxy, f"{base}/disguised/astronaut")
    assert status == 200 and body == b""  # labelled text/html, starts like a JPEG: never reaches the backend
    assert sample(e.services, "ffp_egress_responses_total", outcome="disguised_media") == 1


async def test_response_over_the_limit_is_refused(egress, aiohttp_server) -> None:
    e, proxy = egress
    media = await aiohttp_server(media_app())
    status, body, _ = await get(proxy, f"http://127.0.0.1:{media.port}/big?mb=3")
    assert status == 502 and len(body) < 10_000
    await asyncio.sleep(0.05)
    assert sample(e.services, "ffp_egress_responses_total", outcome="too_large") == 1


async def test_busy_judgement_slots_get_on_error(tmp_path, ca, aiohttp_server) -> None:
    raw = egress_config(tmp_path, ca[1], max_concurrent=1)
    raw["policies"]["main"]["timeout_ms"] = 200
    media = await aiohttp_server(media_app())
    async for e, proxy in running(raw):
        assert e.addon is not None
        await e.addon.slots.acquire()  # every slot busy
        status, _, headers = await get(proxy, f"http://127.0.0.1:{media.port}/img/coffee.jpg")
        assert status == 403 and "egress overloaded" in headers["X-Fedi-Filter"]
        e.addon.slots.release()
        # the recovery judges for real: give it a budget no loaded machine runs out of
        e.addon.instance = replace(e.addon.instance, policy=replace(e.addon.instance.policy, timeout_ms=60_000))
        status, body, _ = await get(proxy, f"http://127.0.0.1:{media.port}/img/coffee.jpg")
        assert status == 200 and body == photo("coffee")
        assert sample(e.services, "ffp_overload_total", where="egress") == 1
        rows = await audit_rows(e.services, "SELECT decided_by, detail FROM decisions WHERE source = 'egress' ORDER BY id")
        assert [(r["decided_by"], r["detail"]) for r in rows] == [("error", "egress overloaded"), ("model", None)]


async def test_private_targets_are_refused_before_connecting(egress, aiohttp_server) -> None:
    _, proxy = egress
    media = await aiohttp_server(media_app())
    for url in ("http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data/", f"http://127.0.0.2:{media.port}/img/coffee.jpg"):
        status, _, headers = await get(proxy, url)
        assert status == 403 and headers["X-Fedi-Filter"].startswith("blocked"), url
    assert media.app[HITS] == {}


async def test_a_url_stripped_from_an_inbox_is_refused_by_egress(tmp_path, ca, aiohttp_client, aiohttp_server) -> None:
    """serve and egress share the audit store: an inbox `strip` in one denies the URL in the other."""
    raw = egress_config(tmp_path, ca[1])
    backend = Backend()
    backend_server = await aiohttp_server(backend.app())
    media = await aiohttp_server(media_app())
    serve_raw = copy.deepcopy(raw)
    serve_raw["instances"] = [{"name": "pictrs", "kind": "mastodon", "hosts": ["masto.test"],
                               "upstream": f"http://127.0.0.1:{backend_server.port}", "policy": "main"}]
    client = await start(aiohttp_client, parse_config(serve_raw))
    env = Env(client, backend, media)
    flagged = env.media_url("astronaut")
    resp = await deliver(env, delivery(env, [flagged]))
    assert resp.status == 200 and len(backend.seen) == 1  # strip: delivered untouched
    await drain(env)
    async for _e, proxy in running(raw):
        status, _, headers = await get(proxy, flagged)
        assert status == 403 and headers["X-Fedi-Filter"].startswith("denied")
    assert media.app[HITS] == {"astronaut": 1}  # fetched once, by serve's inbox prefetch


async def test_a_url_denied_under_another_policy_is_judged_by_egress_under_its_own(tmp_path, ca, aiohttp_client,
                                                                                   aiohttp_server) -> None:
    """A denial is its policy's verdict: an inbox strip on a strict instance must not deny the URL to the
    backend of an instance whose policy accepts it (there, egress judges the bytes itself)."""
    raw = egress_config(tmp_path, ca[1])
    lenient = copy.deepcopy(raw["policies"]["main"])
    lenient["actions"] = {"portrait": "accept"}
    raw["policies"]["lenient"] = lenient
    backend = Backend()
    backend_server = await aiohttp_server(backend.app())
    media = await aiohttp_server(media_app())
    raw["instances"] = [
        {"name": "strict", "kind": "mastodon", "hosts": ["masto.test"],
         "upstream": f"http://127.0.0.1:{backend_server.port}", "policy": "main"},
        {"name": "open", "kind": "mastodon", "hosts": ["open.test"], "upstream": "http://127.0.0.1:9", "policy": "lenient"},
    ]
    client = await start(aiohttp_client, parse_config(raw))
    env = Env(client, backend, media)
    flagged = env.media_url("astronaut")
    resp = await deliver(env, delivery(env, [flagged]))
    assert resp.status == 200 and len(backend.seen) == 1
    await drain(env)
    raw["egress"]["instance"] = "open"
    async for _e, proxy in running(raw):
        status, body, headers = await get(proxy, flagged)
        assert status == 200 and body == photo("astronaut"), headers.get("X-Fedi-Filter")
    raw["egress"]["instance"] = "strict"
    async for _e, proxy in running(raw):
        status, _, headers = await get(proxy, flagged)
        assert status == 403 and headers["X-Fedi-Filter"].startswith("denied")
    assert media.app[HITS] == {"astronaut": 2}  # serve's prefetch, and the lenient egress's own fetch


async def test_a_denial_written_by_another_process_is_honoured_within_a_bounded_time(egress, aiohttp_server,
                                                                                      tmp_path) -> None:
    """egress answers URL denials from memory, and notices another process's writes to the shared SQLite
    store (PRAGMA data_version) within DENIALS_FRESH_S: the next requests after a short wait are refused."""
    _, proxy = egress
    media = await aiohttp_server(media_app())
    url = f"http://127.0.0.1:{media.port}/img/coffee.jpg"
    status, _, _ = await get(proxy, url)
    assert status == 200  # judged clean; the denial check answered "no" from memory
    writer = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
              "c.execute('INSERT OR REPLACE INTO denied_urls VALUES (?, ?, NULL, ?, ?)', "
              "(sys.argv[2], time.time(), 'main', 'denied by another process')); c.commit()")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", writer, str(tmp_path / "audit.sqlite3"), url)
    assert await proc.wait() == 0
    written = time.monotonic()
    while True:
        status, _, headers = await get(proxy, url)
        if status == 403:
            break
        assert time.monotonic() - written < 10, "a denial written elsewhere was never honoured"
        await asyncio.sleep(0.05)
    assert headers["X-Fedi-Filter"] == "denied: denied by another process"
    await asyncio.sleep(DENIALS_FRESH_S)
    assert (await get(proxy, url))[0] == 403


async def test_a_judge_that_fails_unexpectedly_refuses_and_never_passes(egress, aiohttp_server, monkeypatch) -> None:
    """Found by an attacker's review: mitmproxy logs an addon's exception and passes the response on, so an
    unexpected error while judging was an unjudged pass. A decoder's own bug is on_error (reject); anything
    else in the judgement refuses the response (502)."""
    e, proxy = egress
    media = await aiohttp_server(media_app())
    base = f"http://127.0.0.1:{media.port}"

    def broken_decoder(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a decoder bug")

    monkeypatch.setattr("proxy.pipeline.decode", broken_decoder)
    status, _, headers = await get(proxy, f"{base}/img/coffee.jpg")
    assert status == 403 and headers["X-Fedi-Filter"].startswith("reject"), headers
    assert "decoder error: RuntimeError" in headers["X-Fedi-Filter"]

    async def broken_judge(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a judge bug")

    monkeypatch.setattr(e.services.pipeline, "judge", broken_judge)
    status, body, _ = await get(proxy, f"{base}/img/rocket.jpg")
    assert status == 502 and body != photo("rocket")
