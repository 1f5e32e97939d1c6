"""What each backend kind exposes: a table of intercepted routes and the error shape its clients read.

A new backend kind is a new table and error function here, not new control flow.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

INBOX_PATHS = (r"/inbox", r"/users/[^/]+/inbox", r"/u/[^/]+/inbox", r"/c/[^/]+/inbox", r"/site_inbox")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    interceptor: str
    """upload | ingest | inbox"""
    fields: tuple[str, ...] = ()
    """upload: multipart field names holding media."""
    multi: bool = False
    """upload: several files per request, so `strip` can drop some and forward the rest."""
    url_param: str | None = None
    """ingest: query parameter holding the URL (GET routes)."""
    url_json_key: str | None = None
    """ingest: JSON body key holding the URL (POST routes)."""


def _r(method: str, path: str, interceptor: str, **kw: Any) -> Route:
    return Route(method, re.compile(path + r"/?"), interceptor, **kw)


INBOXES = tuple(_r("POST", p, "inbox") for p in INBOX_PATHS)

PICTRS_UPLOADS = (
    _r("POST", r"/image", "upload", fields=("images[]",), multi=True),
    _r("POST", r"/image/backgrounded", "upload", fields=("images[]",), multi=True),
    _r("GET", r"/image/download", "ingest", url_param="url"),
    _r("GET", r"/image/original", "ingest", url_param="proxy"),
    _r("GET", r"/image/process\.[a-z0-9]+", "ingest", url_param="proxy"),
)

MASTODON_UPLOADS = (
    _r("POST", r"/api/v1/media", "upload", fields=("file", "thumbnail")),
    _r("POST", r"/api/v2/media", "upload", fields=("file", "thumbnail")),
    _r("PUT", r"/api/v1/media/[^/]+", "upload", fields=("file", "thumbnail")),
    _r("PATCH", r"/api/v1/accounts/update_credentials", "upload", fields=("avatar", "header")),
)

ROUTES: dict[str, tuple[Route, ...]] = {
    "pictrs": PICTRS_UPLOADS,
    "lemmy": (
        _r("POST", r"/pictrs/image", "upload", fields=("images[]",), multi=True),
        _r("GET", r"/api/v3/image_proxy", "ingest", url_param="url"),
        *INBOXES,
    ),
    "mastodon": (*MASTODON_UPLOADS, *INBOXES),
    "akkoma": (*MASTODON_UPLOADS, *INBOXES),
    "misskey": (
        _r("POST", r"/api/drive/files/create", "upload", fields=("file",)),
        _r("POST", r"/api/drive/files/upload-from-url", "ingest", url_json_key="url"),
        *INBOXES,
    ),
    "generic": INBOXES,
}


def match(kind: str, method: str, path: str) -> Route | None:
    for route in ROUTES[kind]:
        if route.method == method and route.pattern.fullmatch(path):
            return route
    return None


def _pictrs_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"msg": message, "code": code}, status=status)


def _mastodon_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _misskey_error(status: int, message: str, code: str) -> web.Response:
    # Misskey's API error object; the id is fixed per error so clients can match it
    body = {"error": {"message": message, "code": code.upper().replace("-", "_"), "id": MISSKEY_ERROR_IDS.get(code, MISSKEY_ERROR_IDS["media-refused"]), "kind": "client"}}
    return web.json_response(body, status=status)


MISSKEY_ERROR_IDS = {
    "media-refused": "6f6c0ae6-2b5c-4a1c-9d2e-8f1c6a7e5b10",
    "media-unavailable": "0d1a3c5e-7b9d-4f2a-8c6e-1b3d5f7a9c20",
}

ERROR_SHAPES: dict[str, Callable[[int, str, str], web.Response]] = {
    "pictrs": _pictrs_error,
    "lemmy": _pictrs_error,
    "mastodon": _mastodon_error,
    "akkoma": _mastodon_error,
    "misskey": _misskey_error,
    "generic": _mastodon_error,
}

REFUSAL_STATUS = {"pictrs": 400, "lemmy": 400, "mastodon": 422, "akkoma": 422, "misskey": 400, "generic": 422}


def refusal(kind: str, message: str, *, status: int | None = None, code: str = "media-refused",
            headers: dict[str, str] | None = None) -> web.Response:
    """The error a client of this backend kind understands."""
    resp = ERROR_SHAPES[kind](status or REFUSAL_STATUS[kind], message, code)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp
