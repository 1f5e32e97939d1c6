"""A byte-preserving multipart/form-data parser.

Uploads must reach the backend byte for byte, and ``strip`` must remove flagged parts without touching
the rest. So the body is parsed into spans of the original bytes: forwarding all parts reproduces the
body exactly, and dropping parts cuts their spans out and leaves every other byte as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

MAX_PARTS = 64
MAX_HEADER_BYTES = 8192


class MultipartError(ValueError):
    pass


@dataclass(frozen=True)
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    start: int
    """Offset of this part's delimiter line ('--boundary') in the body."""
    end: int
    """Offset just past this part's content (where the next '\\r\\n--boundary' begins)."""
    content_start: int

    def content(self, body: bytes) -> bytes:
        return body[self.content_start : self.end]


@dataclass(frozen=True)
class Multipart:
    body: bytes
    boundary: bytes
    parts: tuple[Part, ...]
    closing: int
    """Offset of the closing '--boundary--' delimiter."""

    def without(self, drop: set[int]) -> bytes:
        """The body with the parts at these indexes cut out; every other byte unchanged."""
        if not drop:
            return self.body
        kept = [p for i, p in enumerate(self.parts) if i not in drop]
        out = [self.body[: self.parts[0].start]]
        for p in kept:
            out.append(self.body[p.start : p.end])
            out.append(b"\r\n")
        out.append(self.body[self.closing :])
        return b"".join(out)


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise MultipartError("no Content-Type")
    msg = Message()
    msg["Content-Type"] = content_type
    if msg.get_content_type() != "multipart/form-data":
        raise MultipartError(f"not multipart/form-data: {content_type!r}")
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise MultipartError("missing or invalid boundary")
    return boundary.encode("latin-1")


def _headers(raw: bytes) -> tuple[str | None, str | None, str | None]:
    msg = Message()
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"malformed part header {line[:80]!r}")
        msg[key.strip()] = value.strip()
    name = filename = None
    if "Content-Disposition" in msg:
        name = msg.get_param("name", header="Content-Disposition")
        filename = msg.get_param("filename", header="Content-Disposition")
    ctype = msg.get("Content-Type")
    return (name if isinstance(name, str) else None, filename if isinstance(filename, str) else None, ctype)


def parse(body: bytes, content_type: str | None) -> Multipart:
    boundary = boundary_of(content_type)
    delim = b"--" + boundary
    first = body.find(delim)
    if first < 0 or (first > 0 and body[first - 2 : first] != b"\r\n"):
        raise MultipartError("no opening boundary")
    parts: list[Part] = []
    pos = first
    pattern = re.compile(rb"\r\n" + re.escape(delim))
    while True:
        after = pos + len(delim)
        if body[after : after + 2] == b"--":
            return Multipart(body, boundary, tuple(parts), pos)
        if body[after : after + 2] != b"\r\n":
            raise MultipartError("malformed boundary line")
        header_end = body.find(b"\r\n\r\n", after)
        if header_end < 0 or header_end - after > MAX_HEADER_BYTES:
            raise MultipartError("part headers missing or too long")
        content_start = header_end + 4
        nxt = pattern.search(body, content_start)
        if nxt is None:
            raise MultipartError("body ends inside a part (truncated?)")
        name, filename, ctype = _headers(body[after + 2 : header_end + 2])
        parts.append(Part(name, filename, ctype, pos, nxt.start(), content_start))
        if len(parts) > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        pos = nxt.start() + 2
