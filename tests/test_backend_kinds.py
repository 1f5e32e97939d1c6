"""GoToSocial and Pixelfed behind `fedi-filter serve`, driven by a real client (Mastodon.py) and by signed
deliveries to their inbox paths. The face (the benign stand-in) is refused in the kind's own error shape and
never reaches the backend; the clean photo arrives byte for byte."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
from mastodon import Mastodon, MastodonAPIError

from proxy.backends import KINDS
from proxy.multipart import parse
from tests.support import httpsig
from tests.support.configs import FACES, make_config
from tests.support.hosts import Backend, media_app
from tests.support.photos import photo
from tests.support.servers import FIXTURES, KEY, PEM, multipart, start

REFUSALS = {
    "gotosocial": lambda body: set(body) == {"error"} and "media refused" in body["error"],
    "pixelfed": lambda body: "media refused" in body["message"] and "media refused" in body["errors"]["file"][0],
}
INBOXES = {"gotosocial": ["/users/alice/inbox"], "pixelfed": ["/users/alice/inbox", "/f/inbox", "/i/actor/inbox"]}


async def serve(aiohttp_client, aiohttp_server, kind: str):
    backend = Backend()
    upstream = await aiohttp_server(backend.app())
    media = await aiohttp_server(media_app())
    pol = copy.deepcopy(FACES)
    pol["inbox"] = "reject"
    cfg = make_config(pol, fetch={"allow_networks": ["127.0.0.1/32"], "timeout_ms": 3000},
                      instances=[{"name": kind, "kind": kind, "hosts": ["127.0.0.1", f"{kind}.test"],
                                  "upstream": f"http://127.0.0.1:{upstream.port}", "policy": "main"}])
    return await start(aiohttp_client, cfg), backend, media


def uploaded_file(seen_body: bytes, content_type: str, field: str) -> bytes:
    form = parse(seen_body, content_type)
    part = next(p for p in form.parts if p.name == field)
    return part.content(seen_body)


@pytest.mark.parametrize("kind", ["gotosocial", "pixelfed"])
async def test_mastodon_py_uploads(aiohttp_client, aiohttp_server, kind: str) -> None:
    client, backend, _ = await serve(aiohttp_client, aiohttp_server, kind)
    api = Mastodon(access_token="token", api_base_url=f"http://127.0.0.1:{client.port}", version_check_mode="none",
                   mastodon_version="4.3.0")
    coffee, face = photo("coffee"), photo("astronaut")
    await asyncio.to_thread(api.media_post, coffee, mime_type="image/jpeg", description="coffee")
    seen = backend.seen[-1]
    assert seen.path_qs in ("/api/v1/media", "/api/v2/media")
    assert uploaded_file(seen.body, seen.headers["Content-Type"], "file") == coffee  # byte-identical
    with pytest.raises(MastodonAPIError) as info:
        await asyncio.to_thread(api.media_post, face, mime_type="image/jpeg")
    assert "422" in str(info.value)
    with pytest.raises(MastodonAPIError):
        await asyncio.to_thread(api.account_update_credentials, avatar=photo("grace_hopper"), avatar_mime_type="image/jpeg")
    assert len(backend.seen) == 1  # neither the face nor the avatar reached the backend
    await asyncio.to_thread(api.account_update_credentials, avatar=photo("rocket"), avatar_mime_type="image/jpeg")
    seen = backend.seen[-1]
    assert seen.path_qs == "/api/v1/accounts/update_credentials"
    assert uploaded_file(seen.body, seen.headers["Content-Type"], "avatar") == photo("rocket")


@pytest.mark.parametrize("kind", ["gotosocial", "pixelfed"])
async def test_refusal_shape_of_the_kind(aiohttp_client, aiohttp_server, kind: str) -> None:
    client, backend, _ = await serve(aiohttp_client, aiohttp_server, kind)
    resp = await client.post("/api/v1/media", data=multipart(("file", "a.jpg", photo("astronaut"))),
                             headers={"Host": f"{kind}.test"})
    assert resp.status == KINDS[kind].refusal_status == 422
    assert REFUSALS[kind](await resp.json())
    assert backend.seen == []


async def test_their_other_upload_routes(aiohttp_client, aiohttp_server) -> None:
    """Routes of their own (GoToSocial's instance thumbnail and emoji; Pixelfed's web compose, stories,
    avatar), refused in the kind's shape."""
    cases = {"gotosocial": [("PATCH", "/api/v1/instance", "thumbnail"), ("POST", "/api/v1/admin/custom_emojis", "image"),
                            ("PATCH", "/api/v1/admin/custom_emojis/01ABC", "image")],
             "pixelfed": [("POST", "/api/compose/v0/media/upload", "file"), ("POST", "/api/web/stories/v1/add", "file"),
                          ("POST", "/api/v1.1/stories/add", "file"), ("POST", "/settings/avatar", "avatar"),
                          ("POST", "/i/admin/custom-emoji/new", "emoji")]}
    for kind, routes in cases.items():
        client, backend, _ = await serve(aiohttp_client, aiohttp_server, kind)
        for method, path, field in routes:
            resp = await client.request(method, path, data=multipart((field, "a.jpg", photo("grace_hopper"))),
                                        headers={"Host": f"{kind}.test"})
            assert resp.status == 422 and REFUSALS[kind](await resp.json()), (kind, path)
            assert KINDS[kind].match(method, path) is not None, (kind, path)
        assert backend.seen == []


@pytest.mark.parametrize("kind", ["gotosocial", "pixelfed"])
async def test_inbox_paths(aiohttp_client, aiohttp_server, kind: str) -> None:
    """A signed delivery whose attachment is the face is refused (403) on each inbox path the kind serves;
    a clean one reaches the backend with its signature intact."""
    client, backend, media = await serve(aiohttp_client, aiohttp_server, kind)
    backend.verify = lambda seen: httpsig.verify(PEM, seen.method, seen.path_qs, seen.headers, seen.body)
    for path in INBOXES[kind]:
        for name, status in (("astronaut", 403), ("coffee", 202)):
            doc = json.loads((FIXTURES / "mastodon_create_note.json").read_text())
            doc.pop("expected")
            doc["object"]["tag"] = []
            doc["object"]["attachment"] = [{"type": "Document", "mediaType": "image/jpeg",
                                            "url": f"http://127.0.0.1:{media.port}/img/{name}.jpg"}]
            body = json.dumps(doc).encode()
            headers = httpsig.sign(KEY, "https://remote.example/users/bob#main-key", "POST", path, f"{kind}.test", body)
            before = len(backend.seen)
            backend.status = 202
            resp = await client.post(path, data=body, headers=headers)
            assert resp.status == status, (path, name, await resp.text())
            if status == 403:
                assert len(backend.seen) == before
            else:
                assert backend.seen[-1].body == body and backend.seen[-1].path_qs == path
