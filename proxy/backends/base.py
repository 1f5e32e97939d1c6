"""The shape of a backend kind: one :class:`BackendKind` record per server, in a module of its own.

A record says what routes alone can tell: the refusal shape and status its clients read, which routes
carry uploads (and which take several files, so ``strip`` can drop some), which parameters are URLs the
backend will fetch (URL ingestion), and which paths are inboxes. Adding a kind is one module here that
defines its record, plus its config and example; :data:`proxy.backends.KINDS` collects them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web


class Interception(StrEnum):
    """What an intercepted route carries."""

    UPLOAD = "upload"
    INGEST = "ingest"
    INBOX = "inbox"


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    interception: Interception
    multi: bool = False
    """upload: several files per request, so `strip` can drop some and forward the rest."""
    url_param: str | None = None
    """ingest: query parameter holding the URL (GET routes)."""
    url_json_key: str | None = None
    """ingest: JSON body key holding the URL (POST routes)."""
    error_body: ErrorBody | None = None
    """A refusal shape of this route's own (Lemmy 0.19's /pictrs/image passes pict-rs's through)."""


def route(method: str, path: str, interception: Interception, **kw: Any) -> Route:
    """A route matching ``path``: a regex over the whole normalised path (lower case, no trailing slash)."""
    return Route(method, re.compile(path), interception, **kw)


def upload(method: str, path: str, *, multi: bool = False, error_body: ErrorBody | None = None) -> Route:
    """An upload route: bodies are judged on every route; this names the refusal shape and whether the
    route takes several files (so ``strip`` can drop some and forward the rest)."""
    return route(method, path, Interception.UPLOAD, multi=multi, error_body=error_body)


def ingest(method: str, path: str, *, param: str | None = None, json_key: str | None = None) -> Route:
    return route(method, path, Interception.INGEST, url_param=param, url_json_key=json_key)


INBOX_PATHS = (r"/inbox", r"/users/[^/]+/inbox", r"/u/[^/]+/inbox", r"/c/[^/]+/inbox", r"/site_inbox",
               r"/actor/inbox", r"/ap/users/-?\d+/inbox", r"/relay/inbox", r"/internal/fetch/inbox", r"/f/inbox",
               r"/i/actor/inbox")
"""Inbox paths of every ActivityPub server kind here (a body with an ActivityStreams type is an inbox
delivery on any path; these catch deliveries sent with another Content-Type)."""

INBOXES = tuple(route("POST", p, Interception.INBOX) for p in INBOX_PATHS)

ErrorBody = Callable[[str, str], Mapping[str, Any]]
"""(message, code) -> the JSON body of a refusal; code is ``media-refused``, ``media-unavailable``, ...."""


@dataclass(frozen=True)
class BackendKind:
    name: str
    refusal_status: int
    """The status its clients read as 'this upload is refused' (Mastodon 422, Lemmy/pict-rs 400, ...)."""
    error_body: ErrorBody
    routes: tuple[Route, ...] = ()
    doc: str = ""
    codes: Mapping[str, str] = field(default_factory=dict)
    """Extra data per refusal code the error shape needs (Misskey's fixed error ids)."""
    any_method: bool = False
    """The router serves POST routes on every method but GET (Misskey's API)."""

    def match(self, methods: str | tuple[str, ...], paths: str | tuple[str, ...]) -> Route | None:
        """The route any of these methods and path spellings reach (see :mod:`proxy.paths`), or None."""
        methods = (methods,) if isinstance(methods, str) else methods
        paths = (paths,) if isinstance(paths, str) else paths
        for r in self.routes:
            if (r.method in methods or (r.method == "POST" and self.any_method)) and any(
                    r.pattern.fullmatch(p) for p in paths):
                return r
        return None

    def refusal(self, message: str, *, status: int | None = None, code: str = "media-refused",
                headers: Mapping[str, str] | None = None, route: Route | None = None) -> web.Response:
        """The error a client of this backend (of this route, where it differs) understands."""
        shape = route.error_body if route is not None and route.error_body is not None else self.error_body
        resp = web.json_response(dict(shape(message, code)), status=status or self.refusal_status)
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp


def msg_code_error(message: str, code: str) -> Mapping[str, Any]:
    """pict-rs (and Lemmy's image routes): ``{"msg", "code"}``."""
    return {"msg": message, "code": code}


def error_key(message: str, code: str) -> Mapping[str, Any]:
    """Mastodon-style ``{"error": message}`` (Mastodon, Akkoma/Pleroma, most REST clients read it)."""
    return {"error": message}
