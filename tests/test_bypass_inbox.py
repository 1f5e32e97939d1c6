"""Bypass class: inboxes. A delivery is known by its content on any path; its media is found however
it is hidden (decoys first, odd spellings, a boost naming its post by URL); what cannot be judged for a
reason the sender controls fails closed (403, final: never a 5xx that Lemmy would retry forever)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.hosts import HITS
from tests.support.servers import Env, drain, make_env

AS = "https://www.w3.org/ns/activitystreams"


def create(*urls: str, **extra: Any) -> dict[str, Any]:
    note = {"type": "Note", "id": "https://r.example/n/1", "content": "<p>hi</p>",
            "attachment": [{"type": "Document", "mediaType": "image/jpeg", "url": u} for u in urls], **extra}
    return {"@context": AS, "type": "Create", "actor": "https://r.example/u/1", "object": note}


async def post(env: Env, path: str, doc: Any, ctype: str = "application/activity+json", host: str = "masto.test") -> int:
    resp = await env.client.post(path, data=json.dumps(doc).encode(), headers={"Host": host, "Content-Type": ctype})
    return resp.status


@pytest.fixture
async def env(aiohttp_client, aiohttp_server) -> Env:
    return await make_env(aiohttp_client, aiohttp_server)


@pytest.mark.parametrize(("path", "ctype"), [
    ("/actor/inbox", "application/activity+json"),
    ("/relay/inbox", "application/activity+json"),
    ("/internal/fetch/inbox", "application/ld+json; profile=\"https://www.w3.org/ns/activitystreams\""),
    ("/f/inbox", "application/activity+json"),
    ("/i/actor/inbox", "application/activity+json"),
    ("/users/alice/inbox.json", "application/activity+json"),
    ("/any/path/at/all", "application/activity+json"),
    ("/inbox", "application/json"),  # an inbox path with a plain JSON type
    ("/not/an/inbox", "application/json"),  # plain JSON, but its @context says ActivityStreams
    ("/inbox", "text/plain"),
])
async def test_deliveries_are_known_by_content_on_any_path(env: Env, path: str, ctype: str) -> None:
    assert await post(env, path, create(env.media_url("astronaut")), ctype) == 403, (path, ctype)
    assert env.backend.seen == []
    assert await post(env, path, create(env.media_url("coffee")), ctype) == 200


async def test_decoys_before_the_media_do_not_hide_it(env: Env) -> None:
    decoys = [f"http://127.0.0.1:{env.media.port}/page?{i}" for i in range(10)]
    assert await post(env, "/inbox", create(*decoys, env.media_url("astronaut"))) == 403
    many = [f"http://127.0.0.1:{env.media.port}/page?{i}" for i in range(70)]  # over fetch.max_urls (64)
    assert await post(env, "/inbox", create(*many, env.media_url("coffee"))) == 403  # cannot judge all: fail closed
    assert env.backend.seen == []


async def test_spellings_of_urls(env: Env) -> None:
    shouty = env.media_url("astronaut").replace("http://", "HTTP://")
    assert await post(env, "/inbox", create(shouty)) == 403
    srcset = create(content=f'<p><img srcset="{env.media_url("grace_hopper")} 2x" src="x"></p>')
    assert await post(env, "/inbox", srcset) == 403
    assert env.backend.seen == []


async def test_a_boost_names_its_post_by_url_and_its_media_is_judged(env: Env) -> None:
    base = f"http://127.0.0.1:{env.media.port}"
    boost = {"@context": AS, "type": "Announce", "actor": "https://r.example/u/1", "object": f"{base}/notes/astronaut"}
    assert await post(env, "/inbox", boost) == 403
    assert env.media.app[HITS]["note:astronaut"] == 1 and env.media.app[HITS]["astronaut"] == 1
    boost["object"] = f"{base}/notes/coffee"
    assert await post(env, "/inbox", boost) == 200
    # authorized fetch (401) or a host that is down: never refuse a boost for that; the backend's own
    # (guarded) fetch judges the media
    boost["object"] = f"{base}/private/x"
    assert await post(env, "/inbox", boost) == 200
    boost["object"] = "http://127.0.0.1:9/notes/gone"
    assert await post(env, "/inbox", boost) == 200
    assert len(env.backend.seen) == 3


async def test_data_uri_media_inside_a_delivery(env: Env) -> None:
    import base64

    from tests.support.photos import photo

    uri = "data:image/jpeg;base64," + base64.b64encode(photo("astronaut")).decode()
    assert await post(env, "/inbox", create(uri)) == 403
    assert env.backend.seen == []


@pytest.mark.parametrize("body", [
    b"{not json",
    b'{"@context": "https://www.w3.org/ns/activitystreams", "type": "Create", "type": "Note"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": NaN}',
    b"\xff\xfe{}",
])
async def test_unreadable_deliveries_fail_closed_never_5xx(env: Env, body: bytes) -> None:
    resp = await env.client.post("/inbox", data=body, headers={"Host": "lemmy.test", "Content-Type": "application/activity+json"})
    assert resp.status == 403 and env.backend.seen == []


async def test_on_invalid_accept_forwards_unjudgeable_deliveries(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server, on_invalid="accept")
    resp = await env.client.post("/inbox", data=b"{not json", headers={"Host": "masto.test",
                                                                        "Content-Type": "application/activity+json"})
    assert resp.status == 200 and env.backend.seen[-1].body == b"{not json"
    await drain(env)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_an_encoded_delivery_is_judged_decoded(env: Env, encoding: str) -> None:
    """A delivery sent with a Content-Encoding (on an inbox path and on any other) is decoded and its media
    judged; the accepted one reaches the backend as it was sent."""
    import gzip
    import zlib

    def pack(doc: Any) -> bytes:
        raw = json.dumps(doc).encode()
        return gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)

    headers = {"Host": "masto.test", "Content-Type": "application/activity+json", "Content-Encoding": encoding}
    for path in ("/inbox", "/any/path"):
        resp = await env.client.post(path, data=pack(create(env.media_url("astronaut"))), headers=headers)
        assert resp.status == 403, (path, await resp.text())
    assert env.backend.seen == []
    sent = pack(create(env.media_url("coffee")))
    resp = await env.client.post("/inbox", data=sent, headers=headers)
    assert resp.status == 200 and env.backend.seen[-1].body == sent
