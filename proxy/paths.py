"""How backends' routers read a request's path and method, so a spelling cannot change which route a
request reaches without changing which route we think it reaches.

Routes only decide refusal shapes, which parameters are URLs to ingest, and which paths are inboxes
(bodies are judged whatever the route); but for those, match every spelling the backends accept:
percent-decoding of unreserved characters (actix, find-my-way, Plug), ``//`` squeezed and a trailing
``/`` dropped (Rails, Plug), ``.``/``..`` segments resolved (Kestrel), case folded (ASP.NET), a format
suffix stripped (Rails ``(.:format)``, Akkoma's TrailingFormatPlug), and method overrides
(``X-HTTP-Method-Override``, ``X-HTTP-Method``, ``_method``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_KEEP_ENCODED = frozenset({"2f", "5c", "00", "25"})  # '/', '\\', NUL, '%': no router decodes these into the path
_PCT = re.compile(r"%([0-9a-fA-F]{2})")
_FORMAT = re.compile(r"\.[A-Za-z0-9]{1,8}$")
OVERRIDE_HEADERS = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


def _decode(path: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1).lower()
        return m.group(0) if code in _KEEP_ENCODED else chr(int(code, 16))

    previous = None
    while previous != path:  # double encoding: decode until nothing changes
        previous, path = path, _PCT.sub(one, path)
    return path


def _resolve(segments: list[str]) -> list[str]:
    out: list[str] = []
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg not in (".", ""):
            out.append(seg)
    return out


def spellings(raw_path: str) -> tuple[str, ...]:
    """Every path a backend's router could read ``raw_path`` (no query) as, canonical first: decoded,
    squeezed, resolved, lower-cased, with and without a trailing format suffix."""
    path = _decode(raw_path.split("?", 1)[0])
    canonical = "/" + "/".join(_resolve(path.replace("\\", "/").split("/"))).lower()
    out = [canonical]
    stripped = _FORMAT.sub("", canonical)
    if stripped != canonical and stripped not in out:
        out.append(stripped)
    return tuple(out)


def methods(method: str, headers: Mapping[str, str], form: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The method on the wire and every method an override could turn it into."""
    out = [method.upper()]
    candidates = [headers.get(h, "") for h in OVERRIDE_HEADERS]
    if form is not None:
        candidates.append(form.get("_method", ""))
    for value in candidates:
        value = value.strip().upper()
        if value and value not in out:
            out.append(value)
    return tuple(out)
