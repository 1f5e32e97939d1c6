"""Find every media URL in an ActivityPub delivery that a backend would fetch and store.

Pure functions over parsed JSON. Covered: ``attachment[]`` (Image, Document, Video, Audio, Link; ``url``
as a string, a Link, or a list of either; Link ``href``), ``image`` (headers, banners, post thumbnails),
``icon`` (avatars, community icons, emoji), ``preview``, Emoji ``tag[].icon``, and ``<img src>`` in
``content``/``summary``/``contentMap``. Nested ``object``s (Create, Update, Announce, arrays) are walked,
with bounds on depth and size so a hostile document cannot make the walk expensive.

An object's own ``url`` (the page of a post, a PeerTube video's stream files) is not media the backend
stores, so it is not collected.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

MEDIA_KEYS = ("attachment", "image", "icon", "preview")
HTML_KEYS = ("content", "summary")
MAX_DEPTH = 12
MAX_NODES = 5000


class _ImgSrc(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            for key, value in attrs:
                if key == "src" and value:
                    self.srcs.append(value)


def img_sources(html: str) -> list[str]:
    parser = _ImgSrc()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # html.parser's complaints about broken markup
        pass
    return parser.srcs


def _links(value: Any, depth: int = 0) -> Iterator[str]:
    """URLs of a media field: a string, a Link/Image object (url or href), or a list of those."""
    if depth > 4:
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


def media_urls(activity: Any, limit: int = 64) -> list[str]:
    """Every http(s) media URL in ``activity``, first seen first, at most ``limit``."""
    found: dict[str, None] = {}
    nodes = 0

    def add(url: str) -> None:
        url = url.strip()
        if url.startswith(("https://", "http://")) and len(url) <= 4096:
            found.setdefault(url, None)

    def walk(node: Any, depth: int) -> None:
        nonlocal nodes
        nodes += 1
        if depth > MAX_DEPTH or nodes > MAX_NODES or len(found) >= limit:
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
        for key, value in node.items():
            if key != "@context" and isinstance(value, (dict, list)):
                walk(value, depth + 1)

    walk(activity, 0)
    return list(found)[:limit]
