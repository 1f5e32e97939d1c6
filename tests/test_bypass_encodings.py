"""Bypass class: encodings. A flagged photo inside a JSON string, a form field, a query parameter, a
multipart text field (as a data: URI), as a raw body, or under a Content-Encoding is judged like a file
part; what we cannot decode is refused, never forwarded. Clean requests arrive byte for byte."""

from __future__ import annotations

import base64
import gzip
import io
import json
import zlib
from urllib.parse import quote

import aiohttp
import brotli
import pytest
from multidict import CIMultiDict

from tests.support.photos import photo, photo_image
from tests.support.servers import Env, form_bytes, make_env


def small_face() -> bytes:
    """The astronaut at 96 px, small enough for a query string, still a face to NudeNet (0.70)."""
    buf = io.BytesIO()
    photo_image("astronaut").resize((96, 96)).save(buf, "JPEG", quality=60)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
async def env(aiohttp_client, aiohttp_server) -> Env:
    return await make_env(aiohttp_client, aiohttp_server)


async def test_json_data_uri_avatar(env: Env) -> None:
    """Mastodon's Paperclip stores any string parameter that is a data: URI (update_credentials in JSON)."""
    resp = await env.request("mastodon", "PATCH", "/api/v1/accounts/update_credentials",
                             json={"display_name": "x", "avatar": data_uri(photo("astronaut"))})
    assert resp.status == 422 and env.backend.seen == []
    body = json.dumps({"avatar": data_uri(photo("coffee"))}).encode()
    resp = await env.request("mastodon", "PATCH", "/api/v1/accounts/update_credentials", data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 200 and env.backend.seen[-1].body == body


@pytest.mark.parametrize("shape", ["escaped slashes", "nested", "key", "url-safe", "uppercase scheme"])
async def test_json_data_uri_spellings(env: Env, shape: str) -> None:
    uri = data_uri(photo("grace_hopper"))
    if shape == "escaped slashes":
        text = json.dumps({"avatar": uri}).replace("/", "\\/")
    elif shape == "nested":
        text = json.dumps({"a": [{"b": {"c": uri}}]})
    elif shape == "key":
        text = json.dumps({uri: 1})
    elif shape == "url-safe":
        text = json.dumps({"avatar": uri.replace("+", "-").replace("/", "_")})
    else:
        text = json.dumps({"avatar": "DATA:IMAGE/JPEG;BASE64," + uri.split(",", 1)[1]})
    resp = await env.request("mastodon", "PATCH", "/api/v1/profile", data=text, headers={"Content-Type": "application/json"})
    assert resp.status == 422 and env.backend.seen == [], shape


async def test_form_query_and_text_part_data_uris(env: Env) -> None:
    uri = data_uri(photo("astronaut"))
    resp = await env.request("mastodon", "PATCH", "/api/v1/accounts/update_credentials", data={"header": uri})
    assert resp.status == 422
    small = data_uri(small_face())  # a query fits a small image only
    resp = await env.request("mastodon", "PUT", f"/api/v1/media/3?thumbnail={quote(small, safe='')}")
    assert resp.status == 422
    resp = await env.request("mastodon", "PUT", f"/api/v1/media/3?thumbnail={quote(uri, safe='')}")
    assert resp.status == 400  # a request line over 8 KiB is refused before any handler: never forwarded
    fd = aiohttp.FormData(default_to_multipart=True)
    fd.add_field("avatar", uri)  # a text field, no filename
    resp = await env.request("mastodon", "PATCH", "/api/v1/accounts/update_credentials", data=fd)
    assert resp.status == 422
    # no Content-Type at all: Rack reads a POST body without one as a form
    resp = await env.request("mastodon", "POST", "/api/v1/media", data=f"file={quote(uri, safe='')}".encode(),
                             headers={"Content-Type": ""})
    assert resp.status == 422
    assert env.backend.seen == []


async def test_raw_media_bodies(env: Env) -> None:
    for ctype in ("image/jpeg", "application/octet-stream", "text/plain", "application/x-unknown"):
        resp = await env.request("pictrs", "PUT", "/image/whatever", data=photo("astronaut"), headers={"Content-Type": ctype})
        assert resp.status == 400, ctype
    assert env.backend.seen == []
    resp = await env.request("pictrs", "PUT", "/image/whatever", data=photo("rocket"), headers={"Content-Type": "image/jpeg"})
    assert resp.status == 200 and env.backend.seen[-1].body == photo("rocket")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "gzip, deflate"])
async def test_content_encodings_are_judged_decoded_and_forwarded_as_sent(env: Env, encoding: str) -> None:
    def encode(data: bytes) -> bytes:
        for coding in [c.strip() for c in encoding.split(",")]:
            data = {"gzip": gzip.compress, "deflate": zlib.compress}[coding](data)
        return data

    flagged, ctype = form_bytes("file", "a.jpg", photo("astronaut"))
    resp = await env.request("mastodon", "POST", "/api/v2/media", data=encode(flagged),
                             headers={"Content-Type": ctype, "Content-Encoding": encoding})
    assert resp.status == 422 and env.backend.seen == []
    clean, ctype = form_bytes("file", "c.jpg", photo("coffee"))
    sent = encode(clean)
    resp = await env.request("mastodon", "POST", "/api/v2/media", data=sent,
                             headers={"Content-Type": ctype, "Content-Encoding": encoding})
    seen = env.backend.seen[-1]
    assert resp.status == 200 and seen.body == sent and seen.headers["Content-Encoding"] == encoding


@pytest.mark.parametrize("lines", [("identity", "gzip"), ("gzip", "identity")])
@pytest.mark.parametrize("ctype", ["application/octet-stream", "image/jpeg"])
async def test_every_content_encoding_line_is_undone(env: Env, lines: tuple[str, str], ctype: str) -> None:
    """Content-Encoding is a list header: a backend may join two lines into ``identity, gzip`` and undo the
    gzip. Reading only the first line, the proxy once streamed such a gzip'd face photo to the backend unjudged."""
    headers = CIMultiDict([("Host", "masto.test"), ("Content-Type", ctype),
                          ("Content-Encoding", lines[0]), ("Content-Encoding", lines[1])])
    resp = await env.client.post("/api/v2/media", data=gzip.compress(photo("astronaut")), headers=headers)
    assert resp.status == 422 and env.backend.seen == []
    sent = gzip.compress(photo("coffee"))
    resp = await env.client.post("/api/v2/media", data=sent, headers=headers)
    assert resp.status == 200 and env.backend.seen[-1].body == sent


async def test_what_cannot_be_decoded_is_refused(env: Env) -> None:
    body, ctype = form_bytes("file", "c.jpg", photo("coffee"))
    resp = await env.request("mastodon", "POST", "/api/v2/media", data=body,
                             headers={"Content-Type": ctype, "Content-Encoding": "zstd-future"})
    assert resp.status == 415
    resp = await env.request("mastodon", "POST", "/api/v2/media", data=b"\x1f\x8b not gzip",
                             headers={"Content-Type": ctype, "Content-Encoding": "gzip"})
    assert resp.status == 400
    # br: its decoder here cannot bound its output (1.6 KB inflates to 1 GiB): refused before decoding
    br_bomb = brotli.compress(b"\0" * (64 << 20))
    resp = await env.request("mastodon", "POST", "/api/v2/media", data=br_bomb,
                             headers={"Content-Type": ctype, "Content-Encoding": "br"})
    assert resp.status == 415
    # a second gzip member: Python would read it, actix would not: refused, never forwarded
    resp = await env.request("pictrs", "POST", "/image", data=gzip.compress(b"") + gzip.compress(body),
                             headers={"Content-Type": ctype, "Content-Encoding": "gzip"})
    assert resp.status == 400
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros, ~64 KiB on the wire
    resp = await env.request("mastodon", "POST", "/api/v2/media", data=bomb,
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert resp.status == 413
    resp = await env.request("mastodon", "POST", "/api/v1/statuses", data=b'{"a": 1, "a": 2}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400  # backends disagree on which duplicate key wins
    assert env.backend.seen == []
