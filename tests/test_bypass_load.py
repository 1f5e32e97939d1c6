"""Bypass class: load. Load never turns benign media into a final refusal and never lets media through
unjudged: bodies over the in-flight byte budget get the policy's retryable on_error answer (503 on
uploads) and inboxes are never answered with a 5xx. Deterministic: the budget is held by the test."""

from __future__ import annotations

import json
import time

import aiohttp

from proxy.server import CONTEXT
from tests.support.photos import photo
from tests.support.servers import make_env, multipart


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
