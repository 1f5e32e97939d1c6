"""The backends' own moderation APIs, answered from the one verdict pipeline.

- **Misskey's detector API** (``POST /v1/detect-images``, misskey-dev/sensitive-detector's contract): Misskey
  sends each image (and sampled video frames) as a 299x299 PNG, one multipart part per image (``image0``,
  ``image1``, ...), optionally with ``Authorization: Bearer``; it reads back five class probabilities per
  image and decides itself: sensitive when Sexy, Hentai or Porn is over its sensitivity threshold (0.1 to
  0.9), porn when Porn is over 0.75. Misskey treats any failure as "not sensitive", so every part we can
  read gets a judgement: a refused verdict is ``native_apis.refused_class`` with probability 1.0.
- **Pleroma's NsfwApiPolicy** (``GET <url>/?url=<media URL>``): the URL is fetched SSRF-safe and judged;
  the answer is ``{"score": s}``, and Pleroma acts when ``s >= threshold`` (0.7 by default). Pleroma treats
  any failure as safe, so a refused verdict (whatever the reason) scores 1.0.

Both answer on hosts no instance claims. Any path ending in ``/v1/detect-images`` (POST) or ``/nsfw_score``
(GET, trailing slash optional: Pleroma always adds one) reaches them, so the admin may keep a path prefix.
The instance whose policy judges: the first path segment when it names an instance, else the first
instance of the API's backend kind, else the first instance.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .app import SERVICES
from .config import Config, DetectorClass, Instance, NativeApisConfig
from .content import Unreadable
from .intercept import CONTEXT, BodyTooLarge, judgeable_body
from .multipart import MultipartError, parse
from .verdict import Verdict

log = logging.getLogger(__name__)

DETECTOR_SOURCE = "misskey_detector"
NSFW_API_SOURCE = "nsfw_api"
DETECTOR_KINDS = ("misskey",)
NSFW_API_KINDS = ("akkoma",)


def instance_for(config: Config, head: str, kinds: Sequence[str]) -> Instance:
    """The first path segment when it names an instance, else the first instance of these kinds, else the first."""
    first = head.strip("/").split("/", 1)[0]
    named = config.instance_named(first) if first else None
    if named is not None:
        return named
    return next((i for i in config.instances if i.kind in kinds), config.instances[0])


def predictions(verdict: Verdict, native: NativeApisConfig) -> list[dict[str, Any]]:
    """The five classes Misskey reads, the one our verdict stands for at 1.0, most probable first."""
    if not verdict.accepted:
        chosen = native.refused_class
    elif set(verdict.labels) & set(native.sensitive_labels):
        chosen = native.sensitive_class
    else:
        chosen = DetectorClass.NEUTRAL
    order = [chosen, *(c for c in DetectorClass if c is not chosen)]
    return [{"className": str(c), "probability": 1.0 if c is chosen else 0.0} for c in order]


def nsfw_score(verdict: Verdict, native: NativeApisConfig) -> float:
    if not verdict.accepted:
        return 1.0
    return native.sensitive_score if set(verdict.labels) & set(native.sensitive_labels) else 0.0


def detector_error(status: int, code: str, message: str) -> web.Response:
    """sensitive-detector's whole-request failure: ``{"success": false, "error": {code, message}}``."""
    return web.json_response({"success": False, "error": {"code": code, "message": message}}, status=status)


def _part_error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message}}


async def detect_images(request: web.Request) -> web.Response:
    """POST [.../]v1/detect-images: Misskey's sensitive-media detector API."""
    services = request.app[SERVICES]
    config = services.config
    native = config.native_apis
    if native.detector_api_key:
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), native.detector_api_key.encode()):
            return detector_error(401, "AUTHENTICATION_REQUIRED", "missing or invalid bearer token")
    instance = instance_for(config, request.match_info.get("head", ""), DETECTOR_KINDS)
    try:
        async with judgeable_body(request.app[CONTEXT], request, instance) as body:
            return await _detect(request, body, instance)
    except BodyTooLarge as exc:
        return detector_error(413, "REQUEST_TOO_LARGE", str(exc))
    except Unreadable as exc:
        return detector_error(400, "INVALID_REQUEST", str(exc))


async def _detect(request: web.Request, body: bytes, instance: Instance) -> web.Response:
    services = request.app[SERVICES]
    native = services.config.native_apis
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        return detector_error(415, "UNSUPPORTED_MEDIA_TYPE", "content-type must be multipart/form-data")
    try:
        form = parse(body, content_type)
    except MultipartError as exc:
        return detector_error(400, "INVALID_REQUEST", f"failed to parse multipart body: {exc}")
    if not form.parts:
        return detector_error(400, "INVALID_REQUEST", "no parts in multipart body")
    if len(form.parts) > native.detector_max_parts:
        return detector_error(413, "REQUEST_TOO_LARGE",
                              f"too many parts: {len(form.parts)} exceeds limit of {native.detector_max_parts}")

    async def one(index: int) -> dict[str, Any]:
        part = form.parts[index]
        if part.filename is None:
            return _part_error("INVALID_REQUEST", "part is not a file")
        data = part.content(body)
        if not data:
            return _part_error("INVALID_REQUEST", "part body is empty")
        verdict = await services.pipeline.judge(data, instance, DETECTOR_SOURCE)
        return {"success": True, "predictions": predictions(verdict, native)}

    results = await asyncio.gather(*(one(i) for i in range(len(form.parts))))
    return web.json_response({"success": True, "result": {"results": results}})


def media_url(raw_query: str) -> str | None:
    """The URL of ``?url=``. Pleroma writes it unencoded (``?url=https://host/a.jpg?x=1&y=2``: everything after
    ``url=`` is the URL); an encoded one (``url=https%3A%2F%2F...``) is decoded up to the next ``&``."""
    found = re.search(r"(?:^|&)url=", raw_query)
    if found is None:
        return None
    value = raw_query[found.end():]
    if value[:8].lower().startswith(("http://", "https://")):
        return value
    return unquote(value.split("&", 1)[0]) or None


async def nsfw_score_api(request: web.Request) -> web.Response:
    """GET [.../]nsfw_score[/]?url=: Pleroma/Akkoma NsfwApiPolicy (``{"score": 0..1}``; 1 is NSFW)."""
    services = request.app[SERVICES]
    url = media_url(request.rel_url.raw_query_string)
    if url is None:
        return web.json_response({"error": "expected ?url=<media URL>"}, status=400)
    instance = instance_for(services.config, request.match_info.get("head", ""), NSFW_API_KINDS)
    verdict = await services.pipeline.judge_url(url, instance, NSFW_API_SOURCE)
    return web.json_response({"score": nsfw_score(verdict, services.config.native_apis), "url": url,
                              "action": str(verdict.action), "labels": list(verdict.labels)})


def add_native_routes(app: web.Application) -> None:
    head = "{head:(?:[^/]+/)*}"
    app.router.add_post(f"/{head}v1/detect-images", detect_images)
    app.router.add_get(f"/{head}nsfw_score{{slash:/?}}", nsfw_score_api)
