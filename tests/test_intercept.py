"""The interception points end to end: uploads, URL ingestion and inboxes through fedi-filter serve.

The stand-in policy flags faces (NudeNet's real weights): the astronaut and Grace Hopper portraits are
'flagged', coffee/rocket/cat photos are clean. Remote media lives on a real media host on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from mastodon import Mastodon, MastodonAPIError

from proxy.multipart import parse
from proxy.server import CONTEXT
from tests.support import httpsig
from tests.support.hosts import HITS
from tests.support.photos import photo
from tests.support.servers import FIXTURES, KEY, PEM, audit_rows, deliver, delivery, drain, make_env, multipart, sample


# --- uploads ---------------------------------------------------------------------------------------


async def test_mastodon_py_media_post(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server, mastodon_host="127.0.0.1")
    api = Mastodon(access_token="token", api_base_url=f"http://127.0.0.1:{env.client.port}", version_check_mode="none",
                   mastodon_version="4.3.0")
    coffee, portrait = photo("coffee"), photo("astronaut")
    await asyncio.to_thread(api.media_post, coffee, mime_type="image/jpeg", description="coffee")
    seen = [s for s in env.backend.seen if s.path_qs.startswith(("/api/v1/media", "/api/v2/media"))]
    assert len(seen) == 1 and coffee in seen[0].body  # the original bytes, untouched, in the multipart body
    with pytest.raises(MastodonAPIError) as info:
        await asyncio.to_thread(api.media_post, portrait, mime_type="image/jpeg")
    assert "422" in str(info.value) and "media refused" in str(info.value)
    assert len(env.backend.seen) == 1


async def test_mastodon_avatar_update_is_judged(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    resp = await env.request("mastodon", "PATCH", "/api/v1/accounts/update_credentials",
                             data=multipart(("avatar", "me.jpg", photo("grace_hopper")), extra={"display_name": "x"}))
    assert resp.status == 422 and "media refused" in (await resp.json())["error"]
    resp = await env.request("akkoma", "PATCH", "/api/v1/accounts/update_credentials",
                             data=multipart(("header", "h.jpg", photo("rocket"))))
    assert resp.status == 200 and photo("rocket") in env.backend.seen[-1].body


async def test_upload_routes_without_files_pass_untouched(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    resp = await env.request("mastodon", "PATCH", "/api/v1/accounts/update_credentials", json={"display_name": "Alice"})
    assert resp.status == 200 and json.loads(env.backend.seen[-1].body) == {"display_name": "Alice"}
    resp = await env.request("mastodon", "PUT", "/api/v1/media/42", data={"description": "a cup"})
    assert resp.status == 200 and env.backend.seen[-1].body == b"description=a+cup"
    fd = aiohttp.FormData(default_to_multipart=True)
    fd.add_field("description", "a cup")
    resp = await env.request("mastodon", "PUT", "/api/v1/media/42", data=fd)
    seen = env.backend.seen[-1]
    assert resp.status == 200 and seen.headers["Content-Type"].startswith("multipart/") and b"a cup" in seen.body


async def test_lemmy_pictrs_upload(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    form = multipart(("images[]", "c.jpg", photo("chelsea")))
    resp = await env.request("lemmy", "POST", "/pictrs/image", data=form)
    assert resp.status == 200
    clean_body = env.backend.seen[-1].body
    assert photo("chelsea") in clean_body
    resp = await env.request("lemmy", "POST", "/pictrs/image", data=multipart(("images[]", "a.jpg", photo("astronaut"))))
    body = await resp.json()
    assert resp.status == 400 and body["msg"].startswith("media refused") and body["code"] == "media-refused"
    assert len(env.backend.seen) == 1


async def test_pictrs_strip_forwards_the_other_files_untouched(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server, strip_uploads=True)
    files = [("images[]", "1.jpg", photo("coffee")), ("images[]", "2.jpg", photo("astronaut")), ("images[]", "3.jpg", photo("rocket"))]
    resp = await env.request("pictrs", "POST", "/image", data=multipart(*files))
    assert resp.status == 200
    seen = env.backend.seen[-1]
    mp = parse(seen.body, seen.headers["Content-Type"])
    assert [p.content(seen.body) for p in mp.parts] == [photo("coffee"), photo("rocket")]
    assert [p.filename for p in mp.parts] == ["1.jpg", "3.jpg"]
    # all flagged: nothing left to forward, so the upload is refused
    resp = await env.request("pictrs", "POST", "/image", data=multipart(("images[]", "2.jpg", photo("grace_hopper"))))
    assert resp.status == 400 and len(env.backend.seen) == 1


async def test_misskey_drive_upload_error_shape(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    form = multipart(("file", "a.jpg", photo("astronaut")), extra={"i": "token"})
    resp = await env.request("misskey", "POST", "/api/drive/files/create", data=form)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "MEDIA_REFUSED" and body["error"]["kind"] == "client"
    assert env.backend.seen == []


async def test_malformed_or_oversized_uploads_are_refused(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    resp = await env.request("mastodon", "POST", "/api/v2/media", data=b"--x\r\nbroken",
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert resp.status == 400 and "malformed upload" in (await resp.json())["error"]
    resp = await env.request("mastodon", "POST", "/api/v2/media", data=multipart(("file", "a.jpg", b"\xff\xd8\xff" + b"\0" * 3000)))
    assert resp.status == 422  # a corrupt JPEG: on_invalid reject
    assert env.backend.seen == []


# --- URL ingestion ---------------------------------------------------------------------------------


async def test_url_ingestion_is_judged_before_the_backend_fetches(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    resp = await env.request("pictrs", "GET", "/image/download", params={"url": env.media_url("astronaut")})
    assert resp.status == 400 and env.backend.seen == []
    resp = await env.request("pictrs", "GET", "/image/download", params={"url": env.media_url("coffee")})
    assert resp.status == 200 and env.backend.seen[-1].path_qs.startswith("/image/download?url=")
    resp = await env.request("lemmy", "GET", "/api/v3/image_proxy", params={"url": env.media_url("coffee")})
    assert resp.status == 200
    assert env.media.app[HITS]["coffee"] == 1  # the URL verdict was cached
    # the bytes pict-rs then fetches and validates are answered from the sha256 cache
    v = await env.client.post("/api/v1/validate?instance=pictrs", data=photo("astronaut"))
    assert v.status == 406 and (await v.json())["decided_by"] == "cache"
    resp = await env.request("misskey", "POST", "/api/drive/files/upload-from-url", json={"url": env.media_url("grace_hopper"), "i": "t"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "MEDIA_REFUSED"
    resp = await env.request("misskey", "POST", "/api/drive/files/upload-from-url", json={"url": env.media_url("rocket"), "i": "t"})
    assert resp.status == 200 and json.loads(env.backend.seen[-1].body)["url"] == env.media_url("rocket")


async def test_ingestion_of_private_addresses_is_refused(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    for url in ("http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.jpg"):
        resp = await env.request("pictrs", "GET", "/image/download", params={"url": url})
        assert resp.status == 400, url
    assert env.backend.seen == []


# --- inboxes ---------------------------------------------------------------------------------------

async def test_clean_signed_delivery_reaches_the_backend_verifiable(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    body = delivery(env, [env.media_url("coffee"), env.media_url("rocket")])
    resp = await deliver(env, body)
    assert resp.status == 200, await resp.text()  # the backend's own signature check passed
    assert env.backend.seen[-1].body == body
    assert env.media.app[HITS] == {"coffee": 1, "rocket": 1}


async def test_a_tampered_delivery_fails_the_backends_check(aiohttp_client, aiohttp_server) -> None:
    """The verifier is real: change one byte and the backend refuses it."""
    env = await make_env(aiohttp_client, aiohttp_server)
    body = delivery(env, [env.media_url("coffee")])
    headers = httpsig.sign(KEY, "k", "POST", "/inbox", "masto.test", body)
    env.backend.verify = lambda seen: httpsig.verify(PEM, seen.method, seen.path_qs, seen.headers, seen.body)
    resp = await env.client.post("/inbox", data=body.replace(b"Note", b"Nope"), headers=headers)
    assert resp.status == 401


@pytest.mark.parametrize(("action", "status", "forwarded"),
                         [("reject", 403, False), ("drop", 202, False), ("strip", 200, True), ("pass", 200, True)])
async def test_inbox_actions(aiohttp_client, aiohttp_server, action: str, status: int, forwarded: bool) -> None:
    env = await make_env(aiohttp_client, aiohttp_server, inbox=action)
    flagged = env.media_url("astronaut")
    body = delivery(env, [env.media_url("coffee"), flagged])
    resp = await deliver(env, body, "/inbox")
    assert resp.status == status, await resp.text()
    assert (len(env.backend.seen) == 1) is forwarded
    if forwarded:
        assert env.backend.seen[0].body == body
    await drain(env)
    # whatever the delivery got, the flagged URL is denied downstream, across restarts too (audit store)
    resp = await env.request("pictrs", "GET", "/image/download", params={"url": flagged})
    assert resp.status == 400 and "reject" in (await resp.json())["msg"]
    rows = await audit_rows(env.services, "SELECT url FROM denied_urls")
    assert [r["url"] for r in rows] == [flagged]


async def test_inbox_without_prefetch_forwards_at_once_and_denies_later(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server, prefetch=False)
    flagged = env.media_url("grace_hopper")
    resp = await deliver(env, delivery(env, [flagged]))
    assert resp.status == 200
    await drain(env)
    assert await env.services.pipeline.url_denial(flagged, "main") is not None


async def test_inbox_never_fetches_private_addresses(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    # 127.0.0.1/32 is allowed here (the media host); its neighbours are not
    private = ["http://10.0.0.1/a.jpg", "http://169.254.169.254/b.jpg", "http://[::1]/c.jpg", "http://127.0.0.2/d.jpg"]
    resp = await deliver(env, delivery(env, private + [env.media_url("coffee")]))
    assert resp.status == 200 and len(env.backend.seen) == 1  # nothing judged flagged: delivered
    await drain(env)
    assert sample(env.services, "ffp_fetch_errors_total", kind="blocked") == len(private)
    rows = await audit_rows(env.services, "SELECT url, decided_by, detail FROM decisions WHERE decided_by = 'fetch'")
    assert sorted(r["url"] for r in rows) == sorted(private)
    # refused at every fetch, never kept as denials: anyone can name endless private URLs in a delivery
    denied = await audit_rows(env.services, "SELECT url FROM denied_urls")
    assert not {r["url"] for r in denied} & set(private)


async def test_link_attachments_to_web_pages_are_not_media(aiohttp_client, aiohttp_server) -> None:
    """A Lemmy link post: its attachment is an article, not an image; the delivery is not held up."""
    env = await make_env(aiohttp_client, aiohttp_server)
    doc = json.loads((FIXTURES / "lemmy_announce_page.json").read_text())
    doc.pop("expected")
    page = doc["object"]["object"]
    page["attachment"] = [{"type": "Link", "href": f"http://127.0.0.1:{env.media.port}/page"}]
    page["image"] = {"type": "Image", "url": env.media_url("rocket")}
    page["content"] = "<p>no inline images</p>"
    body = json.dumps(doc).encode()
    resp = await env.client.post("/inbox", data=body, headers={"Host": "lemmy.test", "Content-Type": "application/activity+json"})
    assert resp.status == 200 and env.backend.seen[-1].body == body
    text = await (await env.client.get("/metrics")).text()
    assert "ffp_invalid_media_total" not in text.replace("# HELP ffp_invalid_media_total", "").replace("# TYPE ffp_invalid_media_total", "")


async def test_slow_media_does_not_hold_a_delivery_past_its_budget(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server, inbox_timeout_ms=300)
    slow = f"http://127.0.0.1:{env.media.port}/slow?s=2"
    resp = await deliver(env, delivery(env, [slow]))
    assert resp.status == 200 and len(env.backend.seen) == 1
    assert len(env.client.app[CONTEXT].background) == 1  # answered while its media is still being judged
    await drain(env)
    assert env.client.app[CONTEXT].background == set()


async def test_mediafree_deliveries_pass_and_unreadable_ones_fail_closed(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    follow = json.dumps({"type": "Follow", "actor": "https://r.example/u/1", "object": "https://masto.test/users/alice"})
    resp = await deliver(env, follow.encode())
    assert resp.status == 200 and env.backend.seen[-1].body == follow.encode()
    # what we cannot read, a lenient backend parser might: never forwarded (403: final, no retry storm)
    for body in (b"{not json", b'{"type": "Create", "type": "Note"}', b"[" * 100_000):
        resp = await deliver(env, body)
        assert resp.status == 403, body[:20]
    assert len(env.backend.seen) == 1


async def test_lemmy_community_inbox_and_unreachable_media(aiohttp_client, aiohttp_server) -> None:
    env = await make_env(aiohttp_client, aiohttp_server)
    body = json.dumps({"type": "Update", "object": {"type": "Group", "icon": {"type": "Image", "url": env.media_url("astronaut")},
                                                     "image": {"type": "Image", "url": f"http://127.0.0.1:{env.media.port}/missing.jpg"}}}).encode()
    resp = await env.client.post("/c/pics/inbox", data=body, headers={"Host": "lemmy.test", "Content-Type": "application/activity+json"})
    assert resp.status == 403 and env.backend.seen == []


