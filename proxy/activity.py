"""Find every media URL in an ActivityPub delivery that a backend would fetch and store.

Pure functions over parsed JSON. Covered: ``attachment[]`` (Image, Document, Video, Audio, Link; ``url``
as a string, a Link, or a list of either; Link ``href``), ``image`` (headers, banners, post thumbnails),
``icon`` (avatars, community icons, emoji), ``preview``, Emoji ``tag[].icon``, and ``<img src|srcset>``
in ``content``/``summary``/``contentMap``. Nested ``object``s (Create, Update, Announce, arrays) are
walked. An ``object`` given only by its URL (every Mastodon boost) is listed in
:attr:`Extraction.objects`: the backend will fetch it, and so must we.

The walk has no limit an attacker can reach before the media: it visits every node, and a document past
the node or depth bound is reported as :attr:`Extraction.problem` (the caller fails closed), never cut
short silently. An object's own ``url`` (the page of a post, a PeerTube video's stream files) is not
media the backend stores, so it is not collected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
import re
from html import unescape
from typing import Any
from urllib.parse import urlsplit

MEDIA_KEYS = ("attachment", "image", "icon", "preview")
HTML_KEYS = ("content", "summary")
OBJECT_ACTIVITIES = frozenset({"Announce", "Create", "Update", "Add"})
STUB_KEYS = frozenset({"id", "type", "@context"})
REFERENCE_KEYS = ("inReplyTo", "quoteUrl", "quoteUri", "_misskey_quote")
MAX_DEPTH = 32
MAX_NODES = 20_000


_ATTR = re.compile(r"""(?is)(?:^|\s)(src|srcset)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""")


def img_sources(html: str) -> list[str]:
    """``src`` and ``srcset`` URLs of every ``<img>`` in ``html``, in one linear pass (html.parser is
    quadratic on some inputs: one hostile delivery must not stall the proxy). Each piece between two
    ``>`` holds at most one tag start that matters: the last ``<img`` in it."""
    out: list[str] = []
    lower = html.lower()
    pos = 0
    while True:
        end = lower.find(">", pos)
        chunk_end = end if end >= 0 else len(html)
        start = lower.rfind("<img", pos, chunk_end)
        if start >= 0 and (start + 4 == chunk_end or not lower[start + 4].isalnum()):
            for m in _ATTR.finditer(html, start + 4, chunk_end):
                value = unescape(next(g for g in m.groups()[1:] if g is not None))
                if m.group(1).lower() == "src":
                    if value:
                        out.append(value)
                else:
                    out += [c.strip().split()[0] for c in value.split(",") if c.strip()]
        if end < 0:
            return out
        pos = end + 1


def _links(value: Any, depth: int = 0) -> Iterator[str]:
    """URLs of a media field: a string, a Link/Image object (url or href), or a list of those."""
    if depth > 8:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _links(item, depth + 1)
    elif isinstance(value, dict):
        for key in ("url", "href"):
            if key in value:
                yield from _links(value[key], depth + 1)


def http_url(raw: str) -> str | None:
    """``raw`` as an http(s) URL a backend would fetch (scheme case-insensitive), or None."""
    url = raw.strip()
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    if scheme not in ("http", "https"):
        return None
    return scheme + url[len(scheme):]


@dataclass
class Extraction:
    urls: list[str] = field(default_factory=list)
    """Media URLs, first seen first, each once."""
    objects: list[str] = field(default_factory=list)
    """Objects the activity names by URL only (a boost's post): their media is not in the delivery."""
    problem: str | None = None
    """Why the walk could not see everything (over the node or depth bound)."""


def extract(activity: Any) -> Extraction:
    """Every media URL (and every object named only by URL) in ``activity``."""
    out = Extraction()
    seen: dict[str, None] = {}
    nodes = 0

    def add(raw: str) -> None:
        url = http_url(raw)
        if url is not None and url not in seen:
            seen[url] = None
            out.urls.append(url)

    def name(raw: str) -> None:
        obj = http_url(raw)
        if obj is not None and obj not in out.objects:
            out.objects.append(obj)

    def walk(node: Any, depth: int) -> None:
        nonlocal nodes
        nodes += 1
        if out.problem:
            return
        if depth > MAX_DEPTH:
            out.problem = f"nested deeper than {MAX_DEPTH}"
            return
        if nodes > MAX_NODES:
            out.problem = f"more than {MAX_NODES} nodes"
            return
        if isinstance(node, list):
            for item in node:
                walk(item, depth + 1)
            return
        if not isinstance(node, dict):
            return
        for key in MEDIA_KEYS:
            if key in node:
                for url in _links(node[key]):
                    add(url)
        for key in HTML_KEYS:
            if isinstance(node.get(key), str):
                for src in img_sources(node[key]):
                    add(src)
        content_map = node.get("contentMap")
        if isinstance(content_map, dict):
            for html in content_map.values():
                if isinstance(html, str):
                    for src in img_sources(html):
                        add(src)
        kind = node.get("type")
        kinds = set(kind) if isinstance(kind, list) else {kind}
        target = node.get("object")
        if kinds & OBJECT_ACTIVITIES:
            # an object named by URL, or by a stub that carries only its id: the backend fetches it
            if isinstance(target, dict) and isinstance(target.get("id"), str) and not set(target) - STUB_KEYS:
                target = target["id"]
            if isinstance(target, str):
                name(target)
        for key in REFERENCE_KEYS:  # posts a backend fetches to show a thread or a quote
            if isinstance(node.get(key), str):
                name(node[key])
        for key, value in node.items():
            if key != "@context" and isinstance(value, (dict, list)):
                walk(value, depth + 1)

    walk(activity, 0)
    return out


def media_urls(activity: Any) -> list[str]:
    """Every http(s) media URL in ``activity``, first seen first."""
    return extract(activity).urls


def is_activity(doc: Any) -> bool:
    """A JSON document with an ActivityStreams ``@context``: an inbox delivery whatever its path."""
    if not isinstance(doc, dict):
        return False
    context = doc.get("@context")
    items = context if isinstance(context, list) else [context]
    return any(isinstance(c, str) and "activitystreams" in c for c in items)
