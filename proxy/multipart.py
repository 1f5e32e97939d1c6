"""A strict, byte-preserving multipart/form-data parser.

Uploads must reach the backend byte for byte, and ``strip`` must remove flagged parts without touching
the rest. So the body is parsed into spans of the original bytes: forwarding all parts reproduces the
body exactly, and dropping parts cuts their spans out and leaves every other byte as it was.

The backend parses the bytes we forward with its own parser (Rack, @fastify/busboy, busboy, undici,
Go's mime/multipart, PHP, Plug, multer). Where two parsers could read a body differently, an attacker
can hide a file from us that the backend stores. So ``parse`` accepts only the plain form that browsers
and HTTP libraries send, and raises ``MultipartError`` (the proxy answers 400, never forwards) on
anything else. What it refuses, and why, was measured against the real parsers
(tests/test_multipart_differential.py):

- outer Content-Type: ``multipart/form-data`` with a ``boundary`` (exactly once) and at most a
  ``charset``; no other parameter (PHP finds ``boundary=`` inside ``xboundary=``), no ``boundary*``, no
  whitespace around ``=``, no trailing whitespace; the boundary is 1-70 of ``A-Z a-z 0-9 + _ . -``
  (Go refuses unquoted ``:`` ``=`` ``?``, Rack stops at ``,``), inner spaces only when quoted (Rack fails
  on a trailing one), not ending in a dash.
- framing: the body starts with the first delimiter (no preamble) and ends at the close delimiter plus at
  most one CRLF (no epilogue; PHP reads parts after the close). Every delimiter line is exactly
  ``--boundary`` CRLF (no transport padding: Go accepts it, busboy and PHP do not), and ``--boundary``
  occurs nowhere else in the body: not in content (Rack ends a part at ``--boundary`` without a CRLF before
  it; Go and busboy split ``CRLF--boundaryX`` differently), not after a bare LF (Go switches to LF mode).
- part headers: CRLF-separated ``Name: value`` lines, no folding, no NUL or bare CR/LF, at most
  ``MAX_HEADER_BYTES``; only Content-Disposition (exactly once), Content-Type, Content-Transfer-Encoding
  and Content-Length (each at most once). Rack finds ``Content-Disposition: ..; name=`` and
  ``Content-Type:`` anywhere in a part's head, inside other headers too. Content-Transfer-Encoding only
  ``binary``, ``8bit``, ``7bit`` (undici decodes base64, Go quoted-printable, the others neither); a
  Content-Length must match the content; a Content-Type is ``type/subtype`` with plain parameters, not
  ``multipart/*``, with no charset but UTF-8, US-ASCII or ISO-8859-1 (busboy decodes fields with it;
  on UTF-16 Rack fails, busboy throws, @fastify/busboy decodes, the others ignore it).
- Content-Disposition: ``form-data``, then ``name``, then optionally ``filename``, lower case, each once;
  ``filename*`` only as ``utf-8''..`` repeating ``filename`` exactly (.NET sends both; Rack and PHP read
  filename, busboy and Go filename*), no ``name*`` or continuations; values quoted (no backslash escapes)
  or tokens. ``name`` first: Rack reads it with ``/Content-Disposition:[^:]*;\\s*name=/``, which a ``:``
  in an earlier filename defeats. The name is ``key`` or ``key[sub][]..`` of ``A-Z a-z 0-9 _ -`` (PHP
  rewrites ``.`` and spaces). The filename is valid UTF-8 without ``/``, ``\\``, ``;``, ``"`` or controls,
  nor ``/``, ``\\`` or controls ``%XX``-escaped (undici and Go keep paths the others cut; Rack
  percent-decodes the name, which aiohttp and browsers escape, so Rack's application sees ``café.jpg``
  where the others see ``caf%C3%A9.jpg``: the same bytes, which we judge); ``filename=""`` only on an
  empty part (an unfilled file input).
- names: no name twice unless it holds ``[]``, and no name that is a prefix of another in bracket terms
  (``images`` beside ``images[]``): Rack and PHP keep only the last of such parts, the others keep all.

``Part.is_file`` says which parts a backend may store as a file; those are what the proxy judges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from .media import sniff

MAX_PARTS = 64
MAX_HEADER_BYTES = 8192
MAX_BOUNDARY = 70


class MultipartError(ValueError):
    """A body we refuse: not multipart/form-data, or not in the one form every parser reads alike."""


_TOKEN = rb"[!#$&+.^_`|~0-9A-Za-z-]+"
_BOUNDARY = re.compile(r"[A-Za-z0-9+_.-]([A-Za-z0-9+_. -]{0,68}[A-Za-z0-9+_.-])?")
_CTYPE_PARAM = re.compile(r';[ \t]*([A-Za-z0-9-]+)=("[^"\\]*"|[!#$&+.^_`|~0-9A-Za-z\'*%-]+)[ \t]*')
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*)", re.DOTALL)
_DISP_PARAM = re.compile(rb';[ \t]*([A-Za-z0-9*-]+)=("[^"\\]*"|[^\s;"]+)')
_EXT_VALUE = re.compile(rb"(?i:utf-8)''([!#$&+.^_`|~0-9A-Za-z%-]+)")
_PART_HEADERS = frozenset({"content-disposition", "content-type", "content-transfer-encoding", "content-length"})
_PART_CTYPE = re.compile(rb'[!#$&+.^_`|~0-9A-Za-z-]+/[!#$&+.^_`|~0-9A-Za-z-]+'
                         rb'(;[ \t]*[!#$&+.^_`|~0-9A-Za-z-]+=("[^"\\:;]*"|[!#$&+.^_`|~0-9A-Za-z-]+))*')
_NAME = re.compile(r"[A-Za-z0-9_-]+(\[[A-Za-z0-9_-]*\])*")
_FILENAME_BAD = re.compile(r'[\x00-\x1f\x7f/\\;"]')
_DECODED_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f/\\]")
_ALLOWED_CTE = frozenset({"binary", "8bit", "7bit"})
_CHARSETS = frozenset({"utf-8", "us-ascii", "iso-8859-1"})
_FILE_TYPES = ("image/", "video/", "audio/", "application/octet-stream")


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    """The filename parameter as sent ('' for an unfilled file input), None when absent. Applications may
    see it otherwise: Rack percent-decodes it, undici turns ``%22`` back into ``"``."""
    content_type: str | None
    start: int
    """Offset of this part's delimiter line ('--boundary') in the body."""
    end: int
    """Offset just past this part's content (where the next '\\r\\n--boundary' begins)."""
    content_start: int
    is_file: bool
    """Whether some backend may store this part as a file, so the proxy must judge it: it has a
    filename, or a media or octet-stream Content-Type (busboy makes an octet-stream part a file), or its
    bytes sniff as media (and are not plain text). A part with no content is never a file: there is
    nothing to store (an unfilled file input sends ``filename=""`` and no bytes)."""

    def content(self, body: bytes) -> bytes:
        return body[self.content_start : self.end]


@dataclass(frozen=True)
class Multipart:
    body: bytes
    boundary: bytes
    parts: tuple[Part, ...]
    closing: int
    """Offset of the closing '--boundary--' delimiter."""

    def files(self) -> list[int]:
        """Indexes of the parts the proxy must judge (``Part.is_file``), in body order."""
        return [i for i, p in enumerate(self.parts) if p.is_file]

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


def is_multipart(content_type: str | None) -> bool:
    """Whether some backend parser may read a body with this Content-Type as multipart, so the proxy must
    ``parse`` it (and refuse it when that fails) rather than forward it unjudged. Deliberately wide: Rack
    and PHP parse ``multipart/form-data, text/plain; boundary=..`` (aiohttp calls it
    application/octet-stream), undici parses ``text/plain, multipart/form-data; boundary=..``, Rack parses
    any ``multipart/*``. Pass every Content-Type header of the request joined with ", "."""
    return content_type is not None and "multipart" in content_type.lower()


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type; MultipartError unless it is plain."""
    if not content_type:
        raise MultipartError("no Content-Type")
    mtype, sep, rest = content_type.partition(";")
    if mtype.strip().lower() != "multipart/form-data" or mtype != mtype.lstrip() or not sep:
        raise MultipartError(f"not multipart/form-data with parameters: {content_type[:100]!r}")
    params: dict[str, str] = {}
    pos = len(mtype)
    while pos < len(content_type):
        m = _CTYPE_PARAM.match(content_type, pos)
        if m is None:
            raise MultipartError(f"malformed Content-Type parameters: {content_type[:100]!r}")
        key = m.group(1).lower()
        if key in params or key not in ("boundary", "charset"):
            raise MultipartError(f"unexpected or repeated Content-Type parameter {m.group(1)!r}")
        params[key] = m.group(2)
        pos = m.end()
    if content_type != content_type.rstrip():
        raise MultipartError("trailing whitespace in Content-Type")
    raw = params.get("boundary")
    if raw is None:
        raise MultipartError("no boundary parameter")
    quoted = raw.startswith('"')
    boundary = raw[1:-1] if quoted else raw
    # a boundary ending in one '-' is what Dart's package:http sends 1 time in 66; only dashes, or two at
    # the end (which a close delimiter could be read into), are refused
    if (not _BOUNDARY.fullmatch(boundary) or (" " in boundary and not quoted) or not boundary.strip("-")
            or boundary.endswith("--")):
        raise MultipartError(f"unsupported boundary {boundary[:80]!r}")
    return boundary.encode("ascii")


def _disposition(value: bytes) -> tuple[str, str | None]:
    kind, _, _ = value.partition(b";")
    if kind.strip().lower() != b"form-data" or kind != kind.rstrip():
        raise MultipartError(f"Content-Disposition is not form-data: {value[:80]!r}")
    params: dict[bytes, bytes] = {}
    pos = len(kind)
    while pos < len(value):
        m = _DISP_PARAM.match(value, pos)
        if m is None:
            raise MultipartError(f"malformed Content-Disposition parameters: {value[:120]!r}")
        key = m.group(1)
        if key not in (b"name", b"filename", b"filename*") or key in params or (not params and key != b"name"):
            # name first: Rack reads the name with /Content-Disposition:[^:]*;\s*name=/, which a ':' in an
            # earlier filename defeats
            raise MultipartError(f"unexpected, repeated or misplaced Content-Disposition parameter {key[:40]!r}")
        params[key] = m.group(2)
        pos = m.end()
    name = _param_value(params[b"name"], "name") if b"name" in params else None
    if name is None or not _NAME.fullmatch(name):
        raise MultipartError(f"missing or unsupported part name {name!r}")
    filename = _param_value(params[b"filename"], "filename") if b"filename" in params else None
    if filename is not None and (_FILENAME_BAD.search(filename) or _DECODED_FILENAME_BAD.search(unquote(filename))):
        raise MultipartError(f"unsupported characters in filename {filename[:80]!r}")
    if b"filename*" in params:
        # .NET sends filename*=utf-8''.. beside the same filename: harmless only when both say the same,
        # since Rack and PHP read filename and busboy and Go read filename*
        ext = _EXT_VALUE.fullmatch(params[b"filename*"])
        try:
            same = ext is not None and unquote(ext.group(1).decode("ascii"), errors="strict") == filename
        except UnicodeDecodeError:
            same = False
        if not same:
            raise MultipartError("filename* that does not repeat filename")
    return name, filename


def _param_value(raw: bytes, what: str) -> str:
    if raw.startswith(b'"'):
        raw = raw[1:-1]
    elif not re.fullmatch(_TOKEN, raw):
        raise MultipartError(f"unquoted {what} is not a token: {raw[:80]!r}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError(f"{what} is not UTF-8") from None


def _headers(raw: bytes) -> tuple[str, str | None, str | None, int | None]:
    seen: dict[str, bytes] = {}
    for line in raw.split(b"\r\n"):
        m = _HEADER.fullmatch(line)
        if m is None:
            raise MultipartError(f"malformed part header {line[:80]!r}")
        key = m.group(1).decode().lower()
        value = m.group(2)
        if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value) or value != value.rstrip(b" \t"):
            raise MultipartError(f"control characters or trailing whitespace in part header {key!r}")
        if key not in _PART_HEADERS:
            # Rack finds "Content-Disposition:" and "Content-Type:" anywhere in the part's head, even inside
            # another header, and takes the first: only the headers we read may be there
            raise MultipartError(f"unexpected part header {key[:40]!r}")
        if key in seen:
            raise MultipartError(f"repeated part header {key!r}")
        seen[key] = value
    if "content-disposition" not in seen:
        raise MultipartError("part without Content-Disposition")
    name, filename = _disposition(seen["content-disposition"])
    cte = seen.get("content-transfer-encoding")
    if cte is not None and cte.decode("latin-1").lower() not in _ALLOWED_CTE:
        raise MultipartError(f"unsupported Content-Transfer-Encoding {cte[:40]!r}")
    length = seen.get("content-length")
    if length is not None and not re.fullmatch(rb"[0-9]{1,12}", length):
        raise MultipartError("malformed part Content-Length")
    ctype = None
    if "content-type" in seen:
        if not _PART_CTYPE.fullmatch(seen["content-type"]):
            raise MultipartError(f"unsupported part Content-Type {seen['content-type'][:80]!r}")
        ctype = seen["content-type"].decode("ascii")
        if ctype.lower().startswith("multipart/"):
            raise MultipartError("nested multipart part")
        charset = re.search(r';[ \t]*charset=("?)([^";]*)\1', ctype, re.IGNORECASE)
        if charset and charset.group(2).lower() not in _CHARSETS:
            # busboy decodes a field with it, Rack and busboy fail on some, the others ignore it
            raise MultipartError(f"unsupported part charset {charset.group(2)[:40]!r}")
    return name, filename, ctype, None if length is None else int(length)


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not re.search(r"[\x00-\x08\x0e-\x1f\x7f]", text)


def _possible_file(filename: str | None, ctype: str | None, content: bytes) -> bool:
    if not content:
        return False
    if filename:
        return True
    if ctype is not None and ctype.strip().lower().startswith(_FILE_TYPES):
        return True
    return sniff(content) is not None and not _is_text(content)


def _segments(name: str) -> tuple[str, ...]:
    head, _, rest = name.partition("[")
    return (head, *rest.rstrip("]").split("][")) if rest else (head,)


def _check_names(parts: list[Part]) -> None:
    names = {p.name for p in parts}
    if len(names) != len(parts):
        seen: set[str] = set()
        for p in parts:
            if p.name in seen and "[]" not in p.name:
                raise MultipartError(f"part name {p.name!r} used twice")
            seen.add(p.name)
    paths = {_segments(n): n for n in names}
    for path, name in paths.items():
        for cut in range(1, len(path)):
            prefix = path[:cut]
            if prefix in paths or (path[cut] != "" and prefix + ("",) in paths):
                raise MultipartError(f"part name {name!r} clashes with another part's name")


def parse(body: bytes, content_type: str | None) -> Multipart:
    """Parse a multipart/form-data body; MultipartError unless every backend parser reads it as we do."""
    boundary = boundary_of(content_type)
    delim = b"--" + boundary
    if not body.startswith(delim + b"\r\n"):
        raise MultipartError("body does not start with the boundary")
    # every occurrence of the delimiter, overlapping ones included, must be one of ours: each is checked
    # as it is found (a body of delimiters is refused at the second one, in linear time)
    parts: list[Part] = []
    pos = 0
    while True:
        after = pos + len(delim)
        nxt = body.find(delim, pos + 1)
        if nxt >= 0 and body[nxt - 2 : nxt] != b"\r\n":
            raise MultipartError("boundary string inside a part")
        if body[after : after + 2] == b"--":
            if nxt >= 0 or body[after + 2 :] not in (b"", b"\r\n"):
                raise MultipartError("data after the closing boundary")
            if not parts:
                raise MultipartError("no parts")
            _check_names(parts)
            return Multipart(body, boundary, tuple(parts), pos)
        if body[after : after + 2] != b"\r\n":
            raise MultipartError("malformed boundary line")
        if nxt < 0:
            raise MultipartError("body ends inside a part (truncated?)")
        end = nxt - 2
        header_end = body.find(b"\r\n\r\n", after, end + 2)
        if header_end < 0 or header_end - after > MAX_HEADER_BYTES:
            raise MultipartError("part headers missing or too long")
        content_start = header_end + 4
        if content_start > end:
            raise MultipartError("part headers run into the next boundary")
        name, filename, ctype, length = _headers(body[after + 2 : header_end])
        content = body[content_start:end]
        if length is not None and length != len(content):
            raise MultipartError("part Content-Length does not match its content")
        if filename == "" and content:
            raise MultipartError("content under an empty filename")
        parts.append(Part(name, filename, ctype, pos, end, content_start, _possible_file(filename, ctype, content)))
        if len(parts) > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        pos = nxt
