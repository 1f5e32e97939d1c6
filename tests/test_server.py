"""The validation API end to end: a real aiohttp server on loopback, a real HTTP client posting media the
way pict-rs does (raw body, Content-Type), the tiny random-weight CLIP behind it."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest
from aiohttp import web

from classifier import ClassifierNotReady
from proxy.server import build_app
from tests.support.configs import ALWAYS, NEVER, make_config, policy
from tests.support.media import animated_gif, png_bomb, wav_audio
from tests.support.photos import photo
from tests.support.servers import Client, audit_rows, metric, post_media, services, start

async def test_clean_media_is_accepted_with_a_json_verdict(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(NEVER)))
    data = photo("coffee")
    status, body = await post_media(client, data)
    assert status == 200
    assert body["action"] == "accept" and body["decided_by"] == "model"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["instance"] == "pictrs" and body["source"] == "validate" and body["latency_ms"] > 0
    assert set(body["scores"]["clip"]) == {"a photo of a cat"}


async def test_flagged_media_is_refused_with_406(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(ALWAYS)))
    status, body = await post_media(client, photo("chelsea"))
    assert status == 406
    assert body["action"] == "reject" and body["labels"] == ["flagged"] and "flagged" in body["msg"]
    assert await metric(client, "ffp_verdicts_total", action="reject", decided_by="model") == 1
    assert await metric(client, "ffp_labels_total", label="flagged") == 1


async def test_threshold_between_two_real_scores_splits_them(aiohttp_client: Client) -> None:
    """The rules engine reads real model output: a threshold set between the scores of two photos
    (measured through the same endpoint) flags exactly the higher one."""
    client = await start(aiohttp_client, make_config(policy(NEVER)))
    scores = {}
    for name in ("coffee", "rocket"):
        _, body = await post_media(client, photo(name))
        scores[name] = body["scores"]["clip"]["a photo of a cat"]
    assert scores["coffee"] != scores["rocket"]
    high = max(scores, key=scores.__getitem__)
    mid = sum(scores.values()) / 2
    client2 = await start(aiohttp_client, make_config(policy(mid)))
    for name in scores:
        status, _ = await post_media(client2, photo(name))
        assert status == (406 if name == high else 200)


async def test_policy_reject_status_is_used(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(ALWAYS, reject_status=451)))
    status, _ = await post_media(client, photo("coffee"))
    assert status == 451


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("zero-byte", b"", "empty"),
        ("non-image", b"<html>not an image</html>", "unsupported"),
        ("truncated", photo("coffee", "PNG")[:5000], "corrupt"),
        ("corrupt", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "corrupt"),
        ("bomb", png_bomb(), "too_many_pixels"),
    ],
)
async def test_hostile_bodies_get_the_policy_answer_and_a_log_line(
    aiohttp_client: Client, caplog: pytest.LogCaptureFixture, name: str, data: bytes, kind: str
) -> None:
    client = await start(aiohttp_client, make_config(policy(NEVER)))
    with caplog.at_level(logging.WARNING, logger="proxy.pipeline"):
        status, body = await post_media(client, data)
    assert status == 406, name
    assert body["decided_by"] == "invalid" and body["error_kind"] == kind
    assert any(kind in r.getMessage() for r in caplog.records)
    assert await metric(client, "ffp_invalid_media_total", kind=kind) == 1
    status, _ = await post_media(client, photo("rocket"))  # and the server keeps serving
    assert status == 200


async def test_on_invalid_accept_is_a_counted_fail_open(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(NEVER, on_invalid="accept")))
    status, body = await post_media(client, photo("coffee", "PNG")[:3000])
    assert status == 200 and body["decided_by"] == "invalid" and body["error_kind"] == "corrupt"
    assert await metric(client, "ffp_fail_open_total", reason="invalid:corrupt") == 1
    assert (await post_media(client, b"%PDF-1.7 not media"))[0] == 406  # on_unsupported stays reject


async def test_on_unsupported_decides_files_that_are_no_media(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(ALWAYS, on_unsupported="accept")))
    status, body = await post_media(client, b"%PDF-1.7 a document")
    assert status == 200 and body["error_kind"] == "unsupported"
    assert await metric(client, "ffp_fail_open_total", reason="invalid:unsupported") == 1
    assert (await post_media(client, photo("coffee", "PNG")[:3000]))[0] == 406  # corrupt media: on_invalid


async def test_audio_without_cover_art_has_nothing_to_judge(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(ALWAYS)))
    status, body = await post_media(client, wav_audio())
    assert status == 200 and body["decided_by"] == "no_frames" and body["mime"] == "audio/wav"


async def test_oversized_body_is_refused_with_413_without_reading_it(aiohttp_client: Client) -> None:
    cfg = make_config(policy(NEVER), server={"max_body_bytes": 100_000})
    client = await start(aiohttp_client, cfg)
    status, body = await post_media(client, b"\xff\xd8\xff" + b"\0" * 200_000)
    assert status == 413 and "limit of 100000" in body["error"]

    async def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(50):
            yield b"\0" * 10_000

    status, body = await post_media(client, chunks())
    assert status == 413
    assert (await post_media(client, photo("rocket")))[0] == 200


async def test_allow_list_wins_over_the_model_and_deny_list_is_final(aiohttp_client: Client) -> None:
    fp, bad = photo("chelsea"), photo("rocket")
    pol = policy(
        ALWAYS,
        allow={"hashes": [hashlib.sha256(fp).hexdigest()]},
        deny={"hashes": [hashlib.md5(bad).hexdigest()]},
    )
    pol["concepts"]["standin"]["prompts"]["a photo of a cat"] = NEVER
    client = await start(aiohttp_client, make_config(pol))
    assert (await post_media(client, photo("coffee")))[0] == 200
    status, body = await post_media(client, bad)
    assert status == 406 and body["decided_by"] == "denylist" and body["detail"].startswith("md5:")
    client2 = await start(aiohttp_client, make_config(policy(ALWAYS, allow={"hashes": [hashlib.sha256(fp).hexdigest()]})))
    status, body = await post_media(client2, fp)
    assert status == 200 and body["decided_by"] == "allowlist"
    assert (await post_media(client2, photo("coffee")))[0] == 406


async def test_repeat_is_answered_from_cache_and_audited(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(ALWAYS)))
    data = photo("camera")
    first = await post_media(client, data)
    second = await post_media(client, data)
    assert first[0] == second[0] == 406
    assert second[1]["decided_by"] == "cache" and second[1]["labels"] == ["flagged"]
    rows = await audit_rows(services(client), "SELECT sha256, action, decided_by, labels FROM decisions ORDER BY id")
    assert [(r["action"], r["decided_by"]) for r in rows] == [("reject", "model"), ("reject", "cache")]
    assert rows[0]["sha256"] == hashlib.sha256(data).hexdigest() and rows[0]["labels"] == ["flagged"]


async def test_concurrent_requests_for_the_same_bytes_share_one_judgement(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(ALWAYS)))
    data = photo("horse")
    results = await asyncio.gather(*(post_media(client, data) for _ in range(8)))
    assert all(status == 406 and body["labels"] == ["flagged"] for status, body in results)
    assert sorted(body["decided_by"] for _, body in results) == ["cache"] * 7 + ["model"]
    assert await metric(client, "ffp_classifier_batch_size_sum", model="clip") == 1  # one frame classified
    assert services(client).pipeline.judgements_in_flight == 0


async def test_worst_frame_of_an_animation_decides(aiohttp_client: Client) -> None:
    """Measure each photo's score, set the threshold between the lowest and highest, and hide the
    highest-scoring photo as one frame among low-scoring ones."""
    client = await start(aiohttp_client, make_config(policy(NEVER)))
    scores = {}
    names = ["coffee", "rocket", "camera", "moon", "horse", "chelsea"]
    for name in names:
        gif = animated_gif([name])  # score it as the same GIF-quantised frame the animation holds
        _, body = await post_media(client, gif)
        scores[name] = body["scores"]["clip"]["a photo of a cat"]
    ranked = sorted(names, key=scores.__getitem__)
    low, top = ranked[:-1], ranked[-1]
    threshold = (scores[top] + scores[ranked[-2]]) / 2
    client2 = await start(aiohttp_client, make_config(policy(threshold)))
    assert (await post_media(client2, animated_gif(low)))[0] == 200
    status, body = await post_media(client2, animated_gif(low[:2] + [top] + low[2:]))
    assert status == 406 and body["frames"] == 6


async def test_classifier_not_ready_fails_closed_with_503(aiohttp_client: Client, tmp_path) -> None:
    cfg = make_config(policy(NEVER), classifier={"pretrained": str(tmp_path / "missing" / "weights.bin")})
    client = await start(aiohttp_client, cfg, ready=False)
    with pytest.raises(ClassifierNotReady, match="does not exist"):
        await services(client).scorer.wait_ready()
    health = await client.get("/healthz")
    body = await health.json()
    assert health.status == 503 and body["classifier"]["state"] == "failed"
    assert "does not exist" in body["classifier"]["reason"]
    resp = await client.post("/api/v1/validate", data=photo("coffee"))
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert (await resp.json())["error_kind"] == "not_ready"


async def test_fail_open_is_configured_logged_and_counted(
    aiohttp_client: Client, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(policy(NEVER, on_error="accept"), classifier={"pretrained": str(tmp_path / "nope" / "w.bin")})
    client = await start(aiohttp_client, cfg, ready=False)
    with pytest.raises(ClassifierNotReady, match="does not exist"):
        await services(client).scorer.wait_ready()
    with caplog.at_level(logging.WARNING, logger="proxy.pipeline"):
        status, body = await post_media(client, photo("coffee"))
    assert status == 200 and body["decided_by"] == "error" and body["error_kind"] == "not_ready"
    assert any("on_error=accept" in r.getMessage() for r in caplog.records)
    assert await metric(client, "ffp_fail_open_total", reason="not_ready") == 1


async def test_timeout_applies_on_error(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(NEVER, timeout_ms=1)))
    status, body = await post_media(client, photo("coffee"))
    assert status == 503 and body["error_kind"] == "timeout"


async def test_overload_answers_503_with_retry_after_and_counts(aiohttp_client: Client) -> None:
    cfg = make_config(policy(NEVER), classifier={"max_queue": 1, "max_batch": 1, "max_wait_ms": 0})
    client = await start(aiohttp_client, cfg)
    gif = animated_gif(["coffee", "rocket", "camera", "moon"] * 2)  # 8 frames against a queue of 1
    results = await asyncio.gather(*(post_media(client, gif) for _ in range(3)))
    statuses = [s for s, _ in results]
    assert 503 in statuses
    assert all(b["error_kind"] == "overloaded" for s, b in results if s == 503)
    assert await metric(client, "ffp_overload_total", where="classifier") >= 1
    while await metric(client, "ffp_classifier_queue_depth", model="clip"):
        await asyncio.sleep(0.01)
    assert (await post_media(client, photo("rocket")))[0] == 200  # recovers once the queue drains


async def test_instance_selection(aiohttp_client: Client) -> None:
    cfg = make_config(
        policy(NEVER),
        policies={"main": policy(NEVER), "strict": policy(ALWAYS)},
        instances=[
            {"name": "pictrs", "policy": "main", "upstream": "http://127.0.0.1:9"},
            {"name": "other", "policy": "strict", "hosts": ["strict.example"], "upstream": "http://127.0.0.1:9"},
        ],
    )
    client = await start(aiohttp_client, cfg)
    assert (await post_media(client, photo("coffee")))[0] == 200
    assert (await post_media(client, photo("coffee"), params={"instance": "other"}))[0] == 406
    resp = await client.post("/api/v1/validate?instance=nope", data=b"x")
    assert resp.status == 404


async def test_admin_scan_needs_the_token(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(ALWAYS)))
    assert (await client.post("/api/v1/scan", data=photo("coffee"))).status == 401
    assert (await client.post("/api/v1/scan", data=photo("coffee"), headers={"Authorization": "Bearer wrong"})).status == 401
    resp = await client.post("/api/v1/scan", data=photo("coffee"), headers={"Authorization": "Bearer secret"})
    body = await resp.json()
    assert resp.status == 200 and body["action"] == "reject" and "a photo of a cat" in body["scores"]["clip"]
    cfg = make_config(policy(NEVER), server={"admin_token": ""})
    client2 = await start(aiohttp_client, cfg)
    assert (await client2.post("/api/v1/scan", data=b"x", headers={"Authorization": "Bearer "})).status == 403


async def test_pictrs_safety_url_form(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(ALWAYS)))
    assert (await post_media(client, photo("coffee"), path="/api/v1/scan/IPADDR"))[0] == 406
    client2 = await start(aiohttp_client, make_config(policy(NEVER), server={"known_pictrs_ids": ["abc"]}))
    assert (await post_media(client2, photo("coffee"), path="/api/v1/scan/abc"))[0] == 200
    assert (await post_media(client2, photo("coffee"), path="/api/v1/scan/zzz"))[0] == 401


async def test_healthz_and_metrics(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(policy(NEVER)))
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 200 and body["classifier"]["ready"] is True
    assert body["classifier"]["sources"]["clip"]["pretrained"] == "random"
    await asyncio.gather(*(post_media(client, photo(n)) for n in ("coffee", "rocket", "camera", "moon")))
    assert await metric(client, "ffp_classifier_ready") == 1
    assert await metric(client, "ffp_classifier_batch_size_count", model="clip") >= 1
    assert await metric(client, "ffp_classifier_batch_size_sum", model="clip") == 4
    assert await metric(client, "ffp_verdict_latency_seconds_count", source="validate") == 4
    assert await metric(client, "ffp_requests_total", route="/api/v1/validate", status="200") == 4


async def test_quarantine_keeps_a_private_copy(aiohttp_client: Client, tmp_path) -> None:
    qdir = tmp_path / "q"
    pol = policy(ALWAYS, quarantine_dir=str(qdir))
    pol["actions"]["flagged"] = "quarantine"
    client = await start(aiohttp_client, make_config(pol))
    data = photo("coffee")
    status, body = await post_media(client, data)
    assert status == 406 and body["action"] == "quarantine"
    kept = qdir / hashlib.sha256(data).hexdigest()
    assert kept.read_bytes() == data and (kept.stat().st_mode & 0o777) == 0o600


def test_app_builds_without_a_loop() -> None:
    assert isinstance(build_app(make_config()), web.Application)
