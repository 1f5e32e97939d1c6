"""What a request body carries, found by content rather than by route.

Pure functions over bytes. :func:`find_media` returns every piece of a body a backend could store as a
file: multipart parts that are or may be files (any field name; a filename, or bytes that sniff as media),
a raw media body, and ``data:`` URIs in JSON, form or raw bodies and in the query string (Paperclip, which
Mastodon registers, stores any string parameter that starts with ``data:...;base64,``). A body we cannot
read exactly as a backend would raises :class:`Unreadable`; the caller refuses it, never forwards it.

``Content-Encoding`` bodies are decoded (bounded) before they are read; the caller forwards the original.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .media import sniff
from .multipart import MultipartError, is_multipart, parse

MAX_PIECES = 64
"""More pieces of media than this in one body: refused (we would not judge them all in time)."""
MAX_JSON_DEPTH = 64

_DATA_URI = re.compile(rb"data:[^;,\s\"'&]{0,100}(?:;[^;,\s\"'&]{0,100}){0,8};base64,", re.I)


class Unreadable(ValueError):
    """A body we cannot read exactly as the backend would (malformed, ambiguous, over a bound)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "malformed-upload") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Piece:
    """One would-be file in a request."""

    where: str
    """For logs: ``part 2 'file'``, ``body``, ``json $.avatar``, ``query thumbnail``."""
    data: bytes
    part: int | None = None
    """Index of the multipart part it came from."""
    whole: bool = True
    """The piece is that whole part (so ``strip`` can cut the part out); False for a data: URI inside one."""


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body with its ``Content-Encoding`` undone, at most ``limit`` bytes; Unreadable otherwise."""
    if not encoding:
        return body
    data = body
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip", "deflate"):
            wbits = 47 if coding != "deflate" else 15
            try:
                d = zlib.decompressobj(wbits)
                out = d.decompress(data, limit + 1)
                if not d.eof and len(out) <= limit and d.unconsumed_tail:
                    raise Unreadable(f"{coding} body does not end")
                if d.eof and d.unused_data:
                    # a second gzip member: decoders disagree on reading it (Python reads all, actix one)
                    raise Unreadable(f"{coding} body has bytes after its end")
            except zlib.error as exc:
                if coding == "deflate":  # raw deflate, as some clients send it
                    try:
                        out = zlib.decompressobj(-15).decompress(data, limit + 1)
                    except zlib.error:
                        raise Unreadable(f"body is not valid {coding}: {exc}") from None
                else:
                    raise Unreadable(f"body is not valid {coding}: {exc}") from None
        else:  # br among them: its decoder here cannot bound its output, so a small bomb would inflate whole
            raise Unreadable(f"Content-Encoding {coding!r} cannot be checked", status=415, code="unsupported-encoding")
        if len(out) > limit:
            raise Unreadable(f"decoded body is over the limit of {limit} bytes", status=413, code="too-large")
        data = out
    return data


def _b64(raw: bytes) -> set[bytes]:
    """The bytes lenient decoders read out of ``raw``: Ruby's ``unpack('m')`` (Paperclip) and Node's
    ``Buffer.from`` skip every character outside the alphabet, stop at ``=``, and drop a lone last
    character; Node also reads the URL-safe letters. One result per distinct reading."""
    head = raw.split(b"=", 1)[0]
    out = set()
    for alphabet in (rb"[^A-Za-z0-9+/]", rb"[^A-Za-z0-9+/_\-]"):
        cleaned = re.sub(alphabet, b"", head).replace(b"-", b"+").replace(b"_", b"/")
        if len(cleaned) % 4 == 1:
            cleaned = cleaned[:-1]
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            out.add(base64.b64decode(cleaned))
        except (binascii.Error, ValueError):  # pragma: no cover - cleaned is canonical by construction
            out.add(b"")
    return out


_VALUE_END = re.compile(rb"[\"'<>&\x00]")
"""Where a data: URI ends in bytes no parser split into values for us (raw bodies, text parts)."""


def data_uris(text: bytes, start: int = 0, end: int | None = None, *, whole: bool = False) -> Iterator[bytes]:
    """The payload of every ``data:...;base64,`` URI in ``text[start:end]``. ``whole``: ``text`` is one
    value as the backend's parser hands it over (a JSON string, a form or query value), so the payload
    runs to its end, as Paperclip's ``(.*)`` reads it; else it runs to a quote, ``<``, ``>`` or ``&``.
    Every prefix found yields what the decoders would read, even nothing: never skipped silently."""
    end = len(text) if end is None else end
    for m in _DATA_URI.finditer(text, start, end):
        stop = end
        if not whole:
            found = _VALUE_END.search(text, m.end(), end)
            stop = found.start() if found else end
        yield from _b64(text[m.end():stop])


def _json_strings(node: object, depth: int = 0) -> Iterator[str]:
    if depth > MAX_JSON_DEPTH:
        raise Unreadable(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _json_strings(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _json_strings(value, depth + 1)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise Unreadable(f"JSON object has the key {key!r} twice (backends disagree on which one wins)")
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise Unreadable(f"JSON constant {name} is not JSON")


def load_json(body: bytes) -> object:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, bounded depth; Unreadable otherwise."""
    try:
        text = body.decode("utf-8-sig" if body.startswith(b"\xef\xbb\xbf") else "utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except Unreadable:
        raise
    except RecursionError:
        raise Unreadable("JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unreadable(f"not valid JSON: {exc}") from None
    for _ in _json_strings(doc):  # depth check
        pass
    return doc


def media_type_of(header: str | None) -> str:
    """The media type as the strictest backend reads it: cut at ``;``, ``,`` or white space (Rack splits on
    ``;`` and ``,``, Rails' mime lookup stops at either), lower case; "" when there is none."""
    return re.split(r"[;,\s]", (header or "").strip(), maxsplit=1)[0].lower()


def is_json_type(content_type: str) -> bool:
    """JSON as some backend parses it: ``application/json``, every ``+json``, and Rails' and Laravel's
    synonyms (``text/x-json``, ``application/jsonrequest``: any type naming json)."""
    return "json" in content_type


def find_media(body: bytes, content_type: str, content_type_header: str | None, query: str) -> list[Piece]:
    """Every would-be file in a request body (already content-decoded) and its query string."""
    pieces: list[Piece] = []

    def add(piece: Piece) -> None:
        pieces.append(piece)
        if len(pieces) > MAX_PIECES:
            raise Unreadable(f"more than {MAX_PIECES} files or data: URIs in one request", code="too-many-files")

    for key, value in parse_qsl(query, keep_blank_values=True):
        for text in (key, value):
            for payload in data_uris(text.encode("utf-8", "replace"), whole=True):
                add(Piece("query data: URI", payload))
    if not body:
        return pieces
    if is_multipart(content_type_header):
        try:
            form = parse(body, content_type_header)
        except MultipartError as exc:
            raise Unreadable(f"malformed multipart body: {exc}") from None
        for i, part in enumerate(form.parts):
            if part.is_file:
                add(Piece(f"part {i} {part.name!r}", part.content(body), part=i))
            else:  # a text field: scanned in place, never copied
                for payload in data_uris(body, part.content_start, part.end, whole=True):
                    add(Piece(f"part {i} {part.name!r} data: URI", payload, part=i, whole=False))
        return pieces
    if sniff(body) is not None:
        add(Piece("body", body))
        return pieces
    if is_json_type(content_type):
        doc = load_json(body)
        for text in _json_strings(doc):
            for payload in data_uris(text.encode("utf-8", "surrogatepass"), whole=True):
                add(Piece("json data: URI", payload))
        return pieces
    if content_type in ("application/x-www-form-urlencoded", ""):
        # a POST without a Content-Type is read as a form by Rack
        for key, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True):
            for text in (key, value):
                for payload in data_uris(text.encode("latin-1", "replace"), whole=True):
                    add(Piece("form data: URI", payload))
        return pieces
    for payload in data_uris(body):  # any other type: a data: URI wherever it sits in the bytes
        add(Piece("data: URI", payload))
    return pieces


def query_may_carry_media(query: str) -> bool:
    return "data:" in query.lower() or "data%3a" in query.lower()


STREAMED_TYPES = frozenset({"application/octet-stream"})
"""Body types no backend here parses into fields or files: these alone may stream through unread (when
they do not start like media). Every other body is read whole and judged."""


def streamable(content_type_header: str | None, head: bytes) -> bool:
    """Whether a body may stream through without being read: its type is one no backend parses, named
    plainly (no list, no second type), and its first bytes are not media."""
    header = (content_type_header or "").strip()
    return (media_type_of(header) in STREAMED_TYPES and "," not in header and not is_multipart(header)
            and sniff(head) is None)
