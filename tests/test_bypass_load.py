"""Bypass class: load. Load never turns benign media into a final refusal and never lets media through
unjudged: bodies over the in-flight byte budget get the policy's retryable on_error answer (503 on
uploads) and inboxes are never answered with a 5xx. Deterministic: the budget is held by the test."""

from __future__ import annotations

import json
import time

import aiohttp

from proxy.intercept import DEFLATE_MAX_RATIO, decoded_worst_case
from proxy.server import CONTEXT
from tests.support.photos import photo
from tests.support.servers import make_env, multipart, sample, services


async def test_over_budget_uploads_are_retryable_and_inboxes_never_5xx(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server, timeout_ms=300)
    budget = env.client.app[CONTEXT].budget
    hold = budget.limit
    await budget.acquire(hold, time.monotonic() + 1)  # every byte in flight elsewhere
    try:
        resp = await env.request("mastodon", "POST", "/api/v1/media", data=multipart(("file", "c.jpg", photo("coffee"))))
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert "could not be checked" in (await resp.json())["error"]
        assert env.backend.seen == []  # not judged, so not forwarded
        note = {"@context": "https://www.w3.org/ns/activitystreams", "type": "Create",
                "object": {"type": "Note", "attachment": [{"url": env.media_url("coffee")}]}}
        resp = await env.client.post("/inbox", data=json.dumps(note).encode(),
                                     headers={"Host": "lemmy.test", "Content-Type": "application/activity+json"})
        assert resp.status == 200  # forwarded: Lemmy would retry a 5xx forever; downstream guards judge its media
    finally:
        await budget.release(hold)
    # room again: bodies are admitted (a form without files needs no judging time, so no clock in this test)
    fd = aiohttp.FormData(default_to_multipart=True)
    fd.add_field("description", "a cup")
    resp = await env.request("mastodon", "PUT", "/api/v1/media/1", data=fd)
    assert resp.status == 200 and b"a cup" in env.backend.seen[-1].body
    assert budget.used == 0


async def test_an_encoded_inbox_delivery_reserves_its_decoded_worst_case(aiohttp_client, aiohttp_server) -> None:
    """A gzip delivery may inflate to 1032 times its size (at most server.max_body_bytes) while it is
    decoded: that worst case is taken from the budget like the gate's, so deliveries cannot hold more than
    the budget. With room for the wire bytes but not the worst case, the delivery is an overloaded inbox
    (forwarded whole, never a 5xx); the same delivery unencoded is judged."""
    import gzip

    env = await make_env(aiohttp_client, aiohttp_server, timeout_ms=300)
    ctx = env.client.app[CONTEXT]
    budget = ctx.budget
    note = {"@context": "https://www.w3.org/ns/activitystreams", "type": "Create",
            "object": {"type": "Note", "content": "no media"}}
    raw = json.dumps(note).encode()
    headers = {"Host": "lemmy.test", "Content-Type": "application/activity+json"}
    packed = gzip.compress(raw)
    hold = budget.limit - len(packed) * (1 + DEFLATE_MAX_RATIO)  # room: one byte short of wire + worst case
    assert hold > 0 and len(raw) < len(packed) * DEFLATE_MAX_RATIO

    def overloaded() -> float:
        return sample(services(env.client), "ffp_inbox_deliveries_total", instance="lemmy",
                      outcome="forwarded_overloaded")

    await budget.acquire(hold, time.monotonic() + 1)
    try:
        resp = await env.client.post("/inbox", data=raw, headers=headers)
        assert resp.status == 200 and overloaded() == 0  # room for the body: judged
        resp = await env.client.post("/inbox", data=packed, headers={**headers, "Content-Encoding": "gzip"})
        assert resp.status == 200 and overloaded() == 1  # no room for what it may decode to
        assert env.backend.seen[-1].body == packed  # forwarded whole, as it came
    finally:
        await budget.release(hold)
    await budget.acquire(hold - 1, time.monotonic() + 1)  # exactly the room it needs, far less than max_body_bytes
    try:
        assert budget.limit - budget.used < ctx.config.server.max_body_bytes
        resp = await env.client.post("/inbox", data=packed, headers={**headers, "Content-Encoding": "gzip"})
        assert resp.status == 200 and overloaded() == 1  # judged
    finally:
        await budget.release(hold - 1)
    assert budget.used == 0


async def test_stacked_encodings_reserve_two_decoded_layers(aiohttp_client, aiohttp_server) -> None:
    """``gzip, gzip`` holds two decoded layers at once while the outer one is undone: with room for one
    layer of server.max_body_bytes but not two, the upload is overload (503, retryable), not judged
    beyond the budget."""
    import gzip

    env = await make_env(aiohttp_client, aiohttp_server, timeout_ms=300)
    ctx = env.client.app[CONTEXT]
    budget, limit = ctx.budget, ctx.config.server.max_body_bytes
    body = gzip.compress(gzip.compress(b'{"status": "hello"}'))
    hold = budget.limit - len(body) - 2 * limit + 1
    assert hold > 0
    await budget.acquire(hold, time.monotonic() + 1)
    try:
        resp = await env.request("mastodon", "POST", "/api/v1/statuses", data=body,
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip, gzip"})
        assert resp.status == 503 and "Retry-After" in resp.headers
    finally:
        await budget.release(hold)
    resp = await env.request("mastodon", "POST", "/api/v1/statuses", data=body,
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip, gzip"})
    assert resp.status == 200 and env.backend.seen[-1].body == body  # with room: judged, forwarded as it came
    assert budget.used == 0


def test_the_decoded_worst_case_of_each_encoding() -> None:
    limit = 40 << 20
    assert decoded_worst_case("", 100, limit) == 0
    assert decoded_worst_case("identity", 100, limit) == 0
    for coding in ("gzip", "x-gzip", "deflate"):
        assert decoded_worst_case(coding, 100, limit) == 100 * DEFLATE_MAX_RATIO + 1
        assert decoded_worst_case(coding, 1 << 20, limit) == limit  # never more than the decoded limit
        assert decoded_worst_case(coding, None, limit) == limit  # chunked: the size is not known up front
    assert decoded_worst_case("br", 100, limit) == limit  # refused later (415); the room is taken first
    assert decoded_worst_case("gzip, identity", 100, limit) == 100 * DEFLATE_MAX_RATIO + 1
    assert decoded_worst_case("gzip, gzip", 100, limit) == 2 * limit
