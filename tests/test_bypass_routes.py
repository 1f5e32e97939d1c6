"""Bypass class: routes, methods and path spellings. Bodies are judged by content, so no route, method,
override or spelling lets the flagged photo (a face: the benign stand-in) reach the backend.

Routes are the media-taking routes of today's servers (Lemmy 0.19 and 1.0, pict-rs, Mastodon, Akkoma,
Misskey and the forks' Mastodon API), read from their sources; plus routes no backend has, since the
gate does not need to know them."""

from __future__ import annotations

import asyncio

import json
from urllib.parse import quote

import aiohttp
import pytest

from proxy.backends import KINDS
from tests.support.photos import photo
from tests.support.servers import Env, form_bytes, make_env, multipart, raw_request

ROUTES = [
    ("lemmy", "POST", "/pictrs/image", "images[]"),
    ("lemmy", "POST", "/api/v4/image", "images[]"),
    ("lemmy", "POST", "/api/v4/account/avatar", "images[]"),
    ("lemmy", "POST", "/api/v4/account/banner", "images[]"),
    ("lemmy", "POST", "/api/v4/community/icon?id=3", "images[]"),
    ("lemmy", "POST", "/api/v4/community/banner?id=3", "images[]"),
    ("lemmy", "POST", "/api/v4/site/icon", "images[]"),
    ("lemmy", "POST", "/api/v4/site/banner", "images[]"),
    ("pictrs", "POST", "/image", "images[]"),
    ("pictrs", "POST", "/image/backgrounded", "images[]"),
    ("pictrs", "POST", "/internal/import", "images[]"),
    ("mastodon", "POST", "/api/v1/media", "file"),
    ("mastodon", "POST", "/api/v2/media", "file"),
    ("mastodon", "PUT", "/api/v1/media/7", "thumbnail"),
    ("mastodon", "PATCH", "/api/v1/media/7", "thumbnail"),
    ("mastodon", "PATCH", "/api/v1/accounts/update_credentials", "avatar"),
    ("mastodon", "PATCH", "/api/v1/profile", "header"),
    ("mastodon", "PUT", "/settings/profile", "account[avatar]"),
    ("mastodon", "POST", "/admin/custom_emojis", "custom_emoji[image]"),
    ("mastodon", "PATCH", "/admin/settings/branding", "form_admin_settings[mascot]"),
    ("mastodon", "PATCH", "/admin/settings/appearance", "form_admin_settings[favicon]"),
    ("akkoma", "PUT", "/api/v1/pleroma/mascot", "file"),
    ("akkoma", "POST", "/api/v1/pleroma/emoji/packs/files?name=pack", "file"),
    ("misskey", "POST", "/api/drive/files/create", "file"),
    ("misskey", "POST", "/api/drive/files/create", "anything"),  # Misskey takes the first file, any name
    ("misskey", "PUT", "/api/drive/files/create", "file"),  # and serves every method but GET
    ("misskey", "POST", "/api/v1/media", "file"),  # Sharkey's Mastodon API
    ("misskey", "POST", "/api/iceshrimp/drive", "file"),
    ("gotosocial", "POST", "/api/v2/media", "file"),
    ("gotosocial", "PATCH", "/api/v1/instance", "thumbnail"),
    ("gotosocial", "POST", "/api/v1/admin/custom_emojis", "image"),
    ("pixelfed", "POST", "/api/v1/avatar/update", "avatar"),
    ("pixelfed", "POST", "/api/compose/v0/media/upload", "file"),
    ("pixelfed", "POST", "/api/web/stories/v1/add", "file"),
    ("pixelfed", "POST", "/i/admin/custom-emoji/new", "emoji"),
    ("mastodon", "POST", "/a/route/no/backend/has/yet", "whatever"),
]


async def assert_gated(env: Env, kind: str, method: str, path: str, **kw: object) -> None:
    """The face never reaches the backend and the client reads the backend's own refusal shape; the
    clean photo arrives byte for byte."""
    field = str(kw.pop("field", "file"))
    before = len(env.backend.seen)
    resp = await env.request(kind, method, path, data=multipart((field, "a.jpg", photo("astronaut"))), **kw)
    assert resp.status == KINDS[kind].refusal_status, (kind, method, path, resp.status, await resp.text())
    body = await resp.json()
    assert "media refused" in json.dumps(body)
    assert len(env.backend.seen) == before, (kind, method, path)
    resp = await env.request(kind, method, path, data=multipart((field, "c.jpg", photo("coffee"))), **kw)
    assert resp.status == 200, (kind, method, path)
    assert photo("coffee") in env.backend.seen[-1].body


@pytest.fixture
async def env(aiohttp_client, aiohttp_server) -> Env:
    return await make_env(aiohttp_client, aiohttp_server)


async def test_every_media_route_of_todays_servers(env: Env) -> None:
    for kind, method, path, field in ROUTES:
        await assert_gated(env, kind, method, path, field=field)


async def test_refusal_shapes_follow_the_route(env: Env) -> None:
    resp = await env.request("lemmy", "POST", "/pictrs/image", data=multipart(("images[]", "a.jpg", photo("astronaut"))))
    assert set(await resp.json()) == {"msg", "code"}  # pict-rs's answer, which Lemmy 0.19 passes through
    resp = await env.request("lemmy", "POST", "/api/v4/image", data=multipart(("images[]", "a.jpg", photo("astronaut"))))
    body = await resp.json()
    assert body["error"] == "media_refused" and "media refused" in body["message"]  # what lemmy-js-client reads
    resp = await env.request("misskey", "POST", "/api/drive/files/create", data=multipart(("file", "a.jpg", photo("astronaut"))))
    assert (await resp.json())["error"]["kind"] == "client"


@pytest.mark.parametrize(("method", "headers", "extra"), [
    ("POST", {"X-HTTP-Method-Override": "PUT"}, {}),
    ("POST", {"X-HTTP-Method": "PATCH"}, {}),
    ("POST", {}, {"_method": "patch"}),
    ("DELETE", {}, {}),
    ("GET", {}, {}),  # a GET with a body never takes the lean GET path (which sends no body)
    ("OPTIONS", {}, {}),
    ("PROPFIND", {}, {}),
])
async def test_methods_and_overrides(env: Env, method: str, headers: dict[str, str], extra: dict[str, str]) -> None:
    resp = await env.request("mastodon", method, "/api/v1/media/7", headers=headers,
                             data=multipart(("thumbnail", "a.jpg", photo("grace_hopper")), extra=extra))
    assert resp.status == 422 and env.backend.seen == []


async def test_a_chunked_get_body_is_judged(env: Env) -> None:
    body, ctype = form_bytes("file", "a.jpg", photo("astronaut"))
    reader, writer = await asyncio.open_connection("127.0.0.1", env.client.port)
    writer.write(f"GET /api/v1/media HTTP/1.1\r\nHost: masto.test\r\nContent-Type: {ctype}\r\n"
                 f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
                 + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    data = await reader.read()
    writer.close()
    assert data.startswith(b"HTTP/1.1 422") and env.backend.seen == []


@pytest.mark.parametrize("path", [
    "//api/v1/media", "/api/v1//media", "/api/v1/./media", "/api/v1/x/../media", "/api/v1/media/", "/api/v1/media.json",
    "/api/v1/%6Dedia", "/API/V1/MEDIA", "/api/v1/media;x=1", "/api/v1/media%2F",
])
async def test_path_spellings(env: Env, path: str) -> None:
    body, ctype = form_bytes("file", "a.jpg", photo("astronaut"))
    status, _ = await raw_request(env.client.port, "POST", path, {"Host": "masto.test", "Content-Type": ctype}, body)
    assert status == 422 and env.backend.seen == [], path


@pytest.mark.parametrize("path", ["//image/download", "/image/download/", "/%69mage/download", "/image/./download",
                                  "/IMAGE/DOWNLOAD"])
async def test_ingestion_url_spellings(env: Env, path: str) -> None:
    target = f"{path}?url={quote(env.media_url('astronaut'), safe='')}"
    status, _ = await raw_request(env.client.port, "GET", target, {"Host": "pictrs.test"})
    assert status == 400 and env.backend.seen == [], path


async def test_misskey_ingestion_on_any_method(env: Env) -> None:
    for method in ("POST", "PUT", "PATCH"):
        resp = await env.request("misskey", method, "/api/drive/files/upload-from-url", json={"url": env.media_url("astronaut")})
        assert resp.status == 400, method
    assert env.backend.seen == []


async def test_bodies_without_media_still_stream(env: Env) -> None:
    payload = bytes(range(256)) * 4096
    resp = await env.request("mastodon", "POST", "/api/v1/statuses", data=payload,
                             headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 200 and env.backend.seen[-1].body == payload
    fd = aiohttp.FormData({"status": "hello", "visibility": "public"})
    resp = await env.request("mastodon", "POST", "/api/v1/statuses", data=fd)
    assert resp.status == 200 and env.backend.seen[-1].body == b"status=hello&visibility=public"
