"""The backends' own moderation APIs, asked exactly as the backends ask them.

- Misskey's detector API: the request Misskey's SensitiveMediaDetectionService builds (misskey-dev/misskey
  packages/backend/src/core/SensitiveMediaDetectionService.ts: Node's FormData serialised by undici, parts
  ``image<i>`` named ``<i>.png`` of type image/png, 299x299 PNGs made as FileInfoService makes them), and
  the answer read as FileInfoService's judgePrediction reads it.
- Pleroma's NsfwApiPolicy: the request build_request_url makes (``<url>/?url=<media URL>``, the media URL
  unencoded) and the answer read as check_url_nsfw reads it (``score >= threshold``, 0.7 by default).

The flag path uses the benign stand-in only: NudeNet's real weights flag photos of faces.
"""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from PIL import Image, ImageOps

from tests.support.configs import FACES, make_config
from tests.support.hosts import media_app
from tests.support.photos import photo_image
from tests.support.servers import raw_request, sample, services, start

BOUNDARY = "----formdata-undici-012345678901"
SENSITIVITY = {"veryHigh": 0.1, "high": 0.3, "medium": 0.5, "low": 0.7, "veryLow": 0.9}
"""DriveService: sensitiveMediaDetectionSensitivity -> sensitiveThreshold; the porn threshold is 0.75."""
PORN_THRESHOLD = 0.75
PLEROMA_THRESHOLD = 0.7


def normalised_png(name: str) -> bytes:
    """What FileInfoService sends: sharp resize(299, 299) (fit cover, centred), rotate, flatten, png."""
    img = ImageOps.fit(photo_image(name), (299, 299), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def misskey_form(images: list[bytes]) -> bytes:
    """``form.append(`image${i}`, new Blob([image], {type: 'image/png'}), `${i}.png`)`` as undici serialises it."""
    out = b""
    for i, data in enumerate(images):
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image{i}\"; filename=\"{i}.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def misskey_headers(api_key: str | None = None) -> dict[str, str]:
    """Misskey sets User-Agent and, with a key, Authorization; undici adds the rest."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "User-Agent": "Misskey/2026.1.0 (https://misskey.example/)",
               "Accept": "*/*", "Accept-Language": "*", "Sec-Fetch-Mode": "cors", "Accept-Encoding": "gzip, deflate"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def judge_prediction(predictions: list[dict[str, Any]], sensitivity: str) -> tuple[bool, bool]:
    """FileInfoService.detectSensitivity's judgePrediction: (sensitive, porn)."""
    def p(cls: str) -> float:
        return next((x["probability"] for x in predictions if x["className"] == cls), 0.0)

    threshold = SENSITIVITY[sensitivity]
    sensitive = any(p(c) > threshold for c in ("Sexy", "Hentai", "Porn"))
    return sensitive, p("Porn") > PORN_THRESHOLD


def config(native: dict[str, Any] | None = None, lenient: bool = False) -> Any:
    """One API-only instance of kind misskey judged by the face stand-in; ``lenient`` adds one of kind akkoma
    whose policy labels faces but accepts them."""
    policies = {"strict": copy.deepcopy(FACES)}
    instances = [{"name": "misskey", "kind": "misskey", "policy": "strict"}]
    if lenient:
        policies["lenient"] = {**copy.deepcopy(FACES), "actions": {"portrait": "accept"}}
        instances.append({"name": "lenient", "kind": "akkoma", "policy": "lenient"})
    return make_config(copy.deepcopy(FACES), policies=policies, instances=instances, native_apis=native or {},
                       fetch={"allow_networks": ["127.0.0.1/32"], "timeout_ms": 3000})


async def detect(client: Any, body: bytes, headers: dict[str, str], path: str = "/v1/detect-images") -> tuple[int, dict]:
    resp = await client.post(path, data=body, headers=headers)
    return resp.status, await resp.json()


# --- Misskey's detector API -------------------------------------------------------------------------


async def test_misskey_detector_answers_what_misskey_sends(aiohttp_client) -> None:
    client = await start(aiohttp_client, config())
    images = [normalised_png("astronaut"), normalised_png("coffee"), normalised_png("grace_hopper")]
    status, body = await detect(client, misskey_form(images), misskey_headers())
    assert status == 200 and body["success"] is True
    results = body["result"]["results"]
    assert len(results) == 3 and all(r["success"] for r in results)
    for r in results:
        assert sorted(p["className"] for p in r["predictions"]) == ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"]
        assert r["predictions"][0]["probability"] == max(p["probability"] for p in r["predictions"])
    for sensitivity in SENSITIVITY:  # whatever sensitivity the admin chose
        assert judge_prediction(results[0]["predictions"], sensitivity) == (True, True)  # refused face: porn
        assert judge_prediction(results[1]["predictions"], sensitivity) == (False, False)  # coffee: clean
        assert judge_prediction(results[2]["predictions"], sensitivity) == (True, True)
    svc = services(client)
    assert sample(svc, "ffp_verdicts_total", instance="misskey", source="misskey_detector", action="reject",
                  decided_by="model") == 2


async def test_misskey_detector_bearer_token(aiohttp_client) -> None:
    client = await start(aiohttp_client, config({"detector_api_key": "s3cret"}))
    form = misskey_form([normalised_png("coffee")])
    for headers in (misskey_headers(), misskey_headers("wrong")):
        status, body = await detect(client, form, headers)
        assert status == 401 and body == {"success": False, "error": {"code": "AUTHENTICATION_REQUIRED",
                                                                        "message": "missing or invalid bearer token"}}
    status, body = await detect(client, form, misskey_headers("s3cret"))
    assert status == 200 and body["result"]["results"][0]["predictions"][0]["className"] == "Neutral"


async def test_misskey_detector_request_errors_in_its_shape(aiohttp_client) -> None:
    client = await start(aiohttp_client, config({"detector_max_parts": 3}))
    status, body = await detect(client, normalised_png("coffee"), {"Content-Type": "image/png"})
    assert status == 415 and body["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    status, body = await detect(client, misskey_form([normalised_png("coffee")] * 4), misskey_headers())
    assert status == 413 and body["error"]["code"] == "REQUEST_TOO_LARGE"
    status, body = await detect(client, f"--{BOUNDARY}--\r\n".encode(), misskey_headers())
    assert status == 400 and body["error"]["code"] == "INVALID_REQUEST"
    # a part that is no file, and an empty one: only those parts fail, the rest is judged
    text_part = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n".encode()
    empty = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image1\"; filename=\"1.png\"\r\n"
             f"Content-Type: image/png\r\n\r\n\r\n").encode()
    status, body = await detect(client, text_part + empty + misskey_form([normalised_png("astronaut")]), misskey_headers())
    codes = [r.get("error", {}).get("code") for r in body["result"]["results"]]
    assert status == 200 and codes[:2] == ["INVALID_REQUEST", "INVALID_REQUEST"]
    assert judge_prediction(body["result"]["results"][2]["predictions"], "medium") == (True, True)


async def test_misskey_detector_class_mapping_is_config(aiohttp_client) -> None:
    """An accepted label listed in sensitive_labels is sensitive to Misskey, never porn; the refused class is
    configurable; the first path segment names the instance whose policy judges."""
    client = await start(aiohttp_client, config({"sensitive_labels": ["portrait"], "refused_class": "Hentai"}, lenient=True))
    form = misskey_form([normalised_png("astronaut")])
    status, body = await detect(client, form, misskey_headers(), path="/lenient/v1/detect-images")
    prediction = body["result"]["results"][0]["predictions"]
    assert status == 200 and prediction[0] == {"className": "Sexy", "probability": 1.0}
    assert judge_prediction(prediction, "veryLow") == (True, False)
    status, body = await detect(client, form, misskey_headers())  # no prefix: the first misskey instance (strict)
    prediction = body["result"]["results"][0]["predictions"]
    assert prediction[0] == {"className": "Hentai", "probability": 1.0}
    assert judge_prediction(prediction, "medium") == (True, False)  # Hentai is sensitive, not porn, to Misskey


def test_native_config_is_checked() -> None:
    from proxy.config import ConfigError

    with pytest.raises(ConfigError) as info:
        config({"sensitive_labels": ["nosuch"]})
    assert info.value.path == "native_apis.sensitive_labels[0]"
    with pytest.raises(ConfigError) as info:
        config({"refused_class": "Spicy"})
    assert info.value.path == "native_apis.refused_class"


# --- Pleroma/Akkoma NsfwApiPolicy -------------------------------------------------------------------


async def pleroma_get(client: Any, target: str) -> tuple[int, dict]:
    """GET with the request target exactly as Pleroma's build_request_url writes it (the URL unencoded)."""
    status, payload = await raw_request(client.port, "GET", target,
                                        {"Host": f"fedi-filter:{client.port}", "User-Agent": "Pleroma 2.9.1; https://akkoma.example"})
    return status, json.loads(payload)


async def test_nsfw_api_policy_scores_what_pleroma_asks(aiohttp_client, aiohttp_server) -> None:
    media = await aiohttp_server(media_app())
    client = await start(aiohttp_client, config())
    base = f"http://127.0.0.1:{media.port}"
    # url: "http://fedi-filter:8090/api/v1/nsfw_score" -> fix_path adds "/" -> "/api/v1/nsfw_score/?url=..."
    status, body = await pleroma_get(client, f"/api/v1/nsfw_score/?url={base}/img/astronaut.jpg")
    assert status == 200 and body["score"] == 1.0 and body["score"] >= PLEROMA_THRESHOLD
    status, body = await pleroma_get(client, f"/api/v1/nsfw_score/?url={base}/img/coffee.jpg?size=large&v=2")
    assert status == 200 and body["score"] == 0.0 < PLEROMA_THRESHOLD
    assert body["url"] == f"{base}/img/coffee.jpg?size=large&v=2"  # everything after url= is the URL
    # another prefix, no trailing slash, and a percent-encoded URL work too
    status, body = await pleroma_get(client, f"/filter/nsfw_score?url=http%3A%2F%2F127.0.0.1%3A{media.port}%2Fimg%2Fgrace_hopper.jpg")
    assert status == 200 and body["score"] == 1.0
    assert sample(services(client), "ffp_verdicts_total", instance="misskey", source="nsfw_api", action="reject",
                  decided_by="model") == 2


async def test_nsfw_api_policy_fetches_safely_and_fails_closed(aiohttp_client) -> None:
    """The URL is fetched SSRF-safe: a metadata address is never fetched and scores 1.0 (Pleroma reads any
    failure as safe, so a refusal must be a score); an unreachable host gets the policy's on_error."""
    client = await start(aiohttp_client, config())
    status, body = await pleroma_get(client, "/api/v1/nsfw_score/?url=http://169.254.169.254/latest/meta-data/x.jpg")
    assert status == 200 and body["score"] == 1.0
    assert sample(services(client), "ffp_fetch_errors_total", kind="blocked") == 1
    status, body = await pleroma_get(client, "/api/v1/nsfw_score/?url=http://127.0.0.1:9/gone.jpg")
    assert status == 200 and body["score"] == 1.0  # on_error: reject (fail closed)
    status, body = await pleroma_get(client, "/api/v1/nsfw_score/")
    assert status == 400
