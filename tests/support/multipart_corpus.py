"""Tricky multipart/form-data bodies, each carrying benign photos as would-be files, and the harnesses that
run them through the parsers the backends use (tests/parsers/). Shared by tests/test_multipart_differential.py
and ``python -m tests.support.multipart_corpus`` (which prints which parsers disagree on what).

A parser's report is ``{"ok": bool, "parts": [{"name", "filename", "sha256", "size", "file"}], "error"}``:
``filename`` is None for a part the parser gives the application as a plain field, ``file`` is whether the
application gets it as an uploaded file.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
from urllib.parse import unquote
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .photos import photo

PARSERS_DIR = Path(__file__).resolve().parent.parent / "parsers"
BUILD_DIR = PARSERS_DIR / ".build"
INSTALL_HINT = "run scripts/install-test-tools.sh"

B = b"----fediFilterX7MA4YWxkTrZu0gW"
CRLF = b"\r\n"


@dataclass(frozen=True)
class Case:
    id: str
    label: str
    content_type: str
    body: bytes

    def as_json(self) -> str:
        return json.dumps({"id": self.id, "content_type": self.content_type, "body_b64": base64.b64encode(self.body).decode()})


def ct(boundary: bytes = B, extra: str = "") -> str:
    return f"multipart/form-data; boundary={boundary.decode('latin-1')}{extra}"


def part(disposition: bytes | None, content: bytes, *, ctype: bytes | None = None, headers: tuple[bytes, ...] = (), boundary: bytes = B) -> bytes:
    lines = [b"--" + boundary]
    if disposition is not None:
        lines.append(b"Content-Disposition: " + disposition)
    if ctype is not None:
        lines.append(b"Content-Type: " + ctype)
    lines.extend(headers)
    return CRLF.join(lines) + CRLF + CRLF + content + CRLF


def close(boundary: bytes = B) -> bytes:
    return b"--" + boundary + b"--" + CRLF


def file_part(content: bytes, filename: bytes = b'"coffee.jpg"', name: bytes = b'"file"', **kw: object) -> bytes:
    kw.setdefault("ctype", b"image/jpeg")
    return part(b"form-data; name=" + name + b"; filename=" + filename, content, **kw)  # type: ignore[arg-type]


def field(name: bytes, value: bytes, boundary: bytes = B) -> bytes:
    return part(b'form-data; name="' + name + b'"', value, boundary=boundary)


def cases() -> list[Case]:
    """Every case carries at least one photo that some parser could hand to the backend as a file."""
    jpg = photo("coffee")
    jpg2 = photo("camera")
    png = photo("moon", "PNG")
    desc = field(b"description", b"a cup of coffee")
    out: list[Case] = []

    def add(id: str, label: str, body: bytes, content_type: str | None = None) -> None:
        out.append(Case(id, label, content_type if content_type is not None else ct(), body))

    std = file_part(jpg) + desc + close()
    add("baseline", "one file and one field, as a browser sends them", std)
    add("baseline_multi", "two files under images[] (pict-rs)", file_part(jpg, name=b'"images[]"') + file_part(png, b'"moon.png"', b'"images[]"', ctype=b"image/png") + close())
    add("empty_file_input", 'filename="" with no content: an unfilled file input', file_part(b"", b'""', ctype=b"application/octet-stream") + desc + close())
    add("empty_filename_with_content", 'filename="" but photo bytes', file_part(jpg, b'""') + close())
    add("no_filename_ctype_jpeg", "no filename, Content-Type image/jpeg", part(b'form-data; name="file"', jpg, ctype=b"image/jpeg") + close())
    add("no_filename_no_ctype", "photo bytes as a plain field", part(b'form-data; name="file"', jpg) + close())
    add("no_filename_octet", "no filename, Content-Type application/octet-stream", part(b'form-data; name="file"', jpg, ctype=b"application/octet-stream") + close())
    add("file_without_part_ctype", "filename but no part Content-Type", part(b'form-data; name="file"; filename="coffee.jpg"', jpg) + close())

    # the outer Content-Type and its boundary
    add("ctype_no_space", "';boundary=' without a space", std, f"multipart/form-data;boundary={B.decode()}")
    add("boundary_quoted", "boundary in quotes", std, f'multipart/form-data; boundary="{B.decode()}"')
    sp = b"fedi filter boundary"
    add("boundary_quoted_space", "quoted boundary with spaces", file_part(jpg, boundary=sp) + close(sp), 'multipart/form-data; boundary="fedi filter boundary"')
    add("boundary_trailing_space", "boundary followed by a space", std, ct(extra=" "))
    add("boundary_quoted_trailing_space", "quoted boundary with a trailing space inside the quotes", file_part(jpg, boundary=B + b" ") + close(B + b" "), f'multipart/form-data; boundary="{B.decode()} "')
    other = b"OtherBoundary42"
    add("boundary_twice_first", "two boundary params, body uses the first", std, ct(extra=f"; boundary={other.decode()}"))
    add("boundary_twice_second", "two boundary params, body uses the second", file_part(jpg, boundary=other) + close(other), ct(extra=f"; boundary={other.decode()}"))
    add("boundary_param_upper", "BOUNDARY= in capitals", std, f"multipart/form-data; BOUNDARY={B.decode()}")
    add("boundary_param_prefix", "xboundary= before boundary=, body uses xboundary's value", file_part(jpg, boundary=other) + close(other), f"multipart/form-data; xboundary={other.decode()}; boundary={B.decode()}")
    add("boundary_param_prefix_real", "xboundary= before boundary=, body uses boundary's value", std, f"multipart/form-data; xboundary={other.decode()}; boundary={B.decode()}")
    add("boundary_rfc2231", "boundary*=utf-8''...", std, f"multipart/form-data; boundary*=utf-8''{B.decode()}")
    add("boundary_space_around_eq", "boundary = value", std, f"multipart/form-data; boundary = {B.decode()}")
    add("boundary_71_chars", "a 71-character boundary", file_part(jpg, boundary=b"b" * 71) + close(b"b" * 71), ct(b"b" * 71))
    colon = b"a:b=c?d"
    add("boundary_tspecials_unquoted", "unquoted boundary with ':', '=', '?'", file_part(jpg, boundary=colon) + close(colon), ct(colon))
    semi = b"abc;def"
    add("boundary_semicolon_quoted", "quoted boundary containing ';'", file_part(jpg, boundary=semi) + close(semi), 'multipart/form-data; boundary="abc;def"')
    add("boundary_dashes", "boundary made of dashes only", file_part(jpg, boundary=b"--") + close(b"--"), ct(b"--"))
    dart = b"dart-http-boundary-" + b"a1B2c3D4e5" * 4 + b"+_.x-"
    add("boundary_trailing_dash", "boundary ending in one dash (Dart's package:http)", file_part(jpg, boundary=dart) + close(dart), ct(dart))
    add("boundary_trailing_dashes", "boundary ending in two dashes", file_part(jpg, boundary=b"ab--") + close(b"ab--"), ct(b"ab--"))
    add("ctype_upper", "Multipart/Form-Data", std, f"Multipart/Form-Data; boundary={B.decode()}")
    add("ctype_charset", "charset param on the outer Content-Type", std, ct(extra="; charset=utf-8"))
    add("ctype_extra_param", "an unknown extra param", std, ct(extra="; foo=bar"))
    add("ctype_leading_space", "a space before the media type", std, " " + ct())
    add("ctype_space_before_semicolon", "a space between the media type and ';'", std, f"multipart/form-data ; boundary={B.decode()}")
    add("ctype_list", "a second media type after a comma", std, f"text/plain, multipart/form-data; boundary={B.decode()}")
    add("ctype_list_first", "multipart first in a comma list", std, f"multipart/form-data, text/plain; boundary={B.decode()}")
    add("ctype_x_prefix", "multipart/x-form-data", std, f"multipart/x-form-data; boundary={B.decode()}")
    add("ctype_text_with_boundary", "text/plain with a boundary param", std, f"text/plain; boundary={B.decode()}")
    add("ctype_form_data_only", "form-data; boundary=.. without multipart/", std, f"form-data; boundary={B.decode()}")
    add("ctype_octet_with_boundary", "application/octet-stream with a boundary param", std, f"application/octet-stream; boundary={B.decode()}")
    add("ctype_mixed", "multipart/mixed outer type", std, f"multipart/mixed; boundary={B.decode()}")
    add("ctype_related", "multipart/related outer type", std, f"multipart/related; boundary={B.decode()}")

    # preamble, epilogue, delimiters
    add("preamble_text", "text preamble before the first delimiter", b"this is a preamble\r\n" + std)
    add("preamble_crlf", "a lone CRLF before the first delimiter", CRLF + std)
    add("preamble_no_crlf", "body not starting with the delimiter, no CRLF before it", b"xx" + std)
    add("preamble_fake_delimiter", "preamble holds the delimiter without a preceding CRLF",
        b"junk--" + B + CRLF + b'Content-Disposition: form-data; name="file"; filename="coffee.jpg"\r\n\r\n' + jpg + CRLF + desc + close())
    add("epilogue_text", "text after the closing delimiter", std + b"epilogue text\r\n")
    add("epilogue_part", "a file part after the closing delimiter", desc + close() + file_part(jpg) + close())
    add("no_closing_delimiter", "body ends after the last part", file_part(jpg) + desc)
    add("close_no_crlf", "closing delimiter without trailing CRLF", std[:-2])
    add("close_trailing_space", "closing delimiter followed by a space", file_part(jpg) + desc + b"--" + B + b"-- \r\n")
    add("close_only", "only a closing delimiter", close())
    add("empty_body", "an empty body", b"")
    add("lf_only", "LF line endings throughout", file_part(jpg).replace(CRLF, b"\n")[:-1] + b"\n" + desc.replace(CRLF, b"\n") + close().replace(CRLF, b"\n"))
    add("lf_headers", "LF-only header lines, CRLF delimiters",
        b"--" + B + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"coffee.jpg\"\nContent-Type: image/jpeg\n\n" + jpg + CRLF + close())
    add("first_delimiter_lf", "first delimiter line ends in LF, the rest CRLF", b"--" + B + b"\n" + file_part(jpg)[len(B) + 4 :] + desc + close())
    add("missing_crlf_before_delimiter", "content runs straight into the next delimiter", file_part(jpg)[:-2] + desc + close())
    add("delimiter_trailing_space", "delimiter line with trailing spaces (transport padding)", file_part(jpg).replace(b"--" + B + CRLF, b"--" + B + b"  " + CRLF) + desc + close())
    add("delimiter_trailing_tab", "delimiter line with a trailing tab", desc + file_part(jpg).replace(b"--" + B + CRLF, b"--" + B + b"\t" + CRLF) + close())
    add("delimiter_suffix_in_content", "content holds CRLF--boundary followed by other bytes", file_part(b"\xff\xd8\xff" + jpg[3:1000] + CRLF + b"--" + B + b"X" + jpg[1000:]) + close())
    add("delimiter_in_content_no_crlf", "content holds --boundary CRLF without a CRLF before it",
        file_part(jpg[:2000] + b"--" + B + CRLF + b'Content-Disposition: form-data; name="file"; filename="camera.jpg"\r\n\r\n' + jpg2) + close())
    add("boundary_prefix_in_content", "content holds CRLF-- and most of the boundary", file_part(jpg[:500] + CRLF + b"--" + B[:-1] + jpg[500:]) + close())
    add("lf_delimiter_in_content", "content holds LF--boundary CRLF", file_part(jpg[:500] + b"\n--" + B + CRLF + b'Content-Disposition: form-data; name="x"\r\n\r\n' + jpg[500:]) + close())
    add("dash_dash_in_content_close", "content holds CRLF--boundary-- (a false close)", file_part(jpg[:500] + CRLF + b"--" + B + b"--" + jpg[500:]) + close())

    # part headers
    add("header_folding", "Content-Disposition folded onto a second line",
        part(b'form-data; name="file";\r\n filename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("header_folding_tab", "folded with a tab", part(b'form-data; name="file";\r\n\tfilename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("dup_disposition_file_second", "two Content-Disposition headers, the second names a file",
        part(b'form-data; name="description"', jpg, ctype=b"image/jpeg", headers=(b'Content-Disposition: form-data; name="file"; filename="coffee.jpg"',)) + close())
    add("dup_disposition_file_first", "two Content-Disposition headers, the first names a file",
        part(b'form-data; name="file"; filename="coffee.jpg"', jpg, ctype=b"image/jpeg", headers=(b'Content-Disposition: form-data; name="description"',)) + close())
    add("dup_content_type", "two Content-Type headers", file_part(jpg, headers=(b"Content-Type: text/plain",)) + close())
    add("header_lowercase", "header names in lower case",
        b"--" + B + b'\r\ncontent-disposition: form-data; name="file"; filename="coffee.jpg"\r\ncontent-type: image/jpeg\r\n\r\n' + jpg + CRLF + close())
    add("header_uppercase", "header names in capitals",
        b"--" + B + b'\r\nCONTENT-DISPOSITION: form-data; name="file"; filename="coffee.jpg"\r\nCONTENT-TYPE: image/jpeg\r\n\r\n' + jpg + CRLF + close())
    add("header_no_colon", "a header line without a colon", file_part(jpg, headers=(b"X-Broken header line",)) + close())
    add("header_space_before_colon", "whitespace between header name and colon",
        b"--" + B + b'\r\nContent-Disposition : form-data; name="file"; filename="coffee.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + jpg + CRLF + close())
    add("header_no_space_after_colon", "no space after the colon",
        b"--" + B + b'\r\nContent-Disposition:form-data; name="file"; filename="coffee.jpg"\r\nContent-Type:image/jpeg\r\n\r\n' + jpg + CRLF + close())
    add("header_long_line", "a 10 KB extra header line", file_part(jpg, headers=(b"X-Pad: " + b"a" * 10240,)) + close())
    add("header_huge", "100 KB of extra headers", file_part(jpg, headers=tuple(b"X-Pad%d: " % i + b"a" * 1000 for i in range(100))) + close())
    add("header_nul_in_filename", "NUL byte inside the filename", file_part(jpg, b'"coffee.jpg\x00.txt"') + close())
    add("header_nul_line", "NUL byte in an extra header", file_part(jpg, headers=(b"X-Nul: a\x00b",)) + close())
    add("header_unknown", "an unknown extra header", file_part(jpg, headers=(b"X-Foo: bar",)) + close())
    add("header_content_length", "a part Content-Length header", file_part(jpg, headers=(b"Content-Length: %d" % len(jpg),)) + close())
    add("part_no_headers", "a part with no headers at all", b"--" + B + CRLF + CRLF + jpg + CRLF + close())
    add("part_no_disposition", "a part with only a Content-Type", part(None, jpg, ctype=b"image/jpeg") + close())
    add("part_header_cr_only", "header lines separated by bare CR", b"--" + B + b'\r\nContent-Disposition: form-data; name="file"; filename="coffee.jpg"\rContent-Type: image/jpeg\r\n\r\n' + jpg + CRLF + close())
    add("header_x_disposition_first", "an X- header holding a Content-Disposition before the real one",
        part(b'form-data; name="file"; filename="coffee.jpg"', jpg, ctype=b"image/jpeg").replace(b"Content-Disposition:", b'X-Content-Disposition: form-data; name="description"\r\nContent-Disposition:', 1) + close())
    add("header_value_holds_disposition", "an unknown header whose value holds 'Content-Disposition: ...; name='",
        part(b'form-data; name="file"; filename="coffee.jpg"', jpg, ctype=b"image/jpeg").replace(b"Content-Disposition:", b'X-Note: Content-Disposition: x; name="description"\r\nContent-Disposition:', 1) + close())
    add("header_x_content_type_first", "an X-Content-Type header before the part's Content-Type",
        part(b'form-data; name="file"', jpg, ctype=b"image/jpeg").replace(b"Content-Type:", b"X-Content-Type: text/plain\r\nContent-Type:", 1) + close())
    add("filename_colon_before_name", "filename holding ':' before name", part(b'form-data; filename="a:b.jpg"; name="file"', jpg, ctype=b"image/jpeg") + close())
    add("filename_colon", "filename holding ':'", file_part(jpg, b'"a:b.jpg"') + close())
    add("header_tab_after_colon", "a tab after the header colon",
        part(b'form-data; name="file"; filename="coffee.jpg"', jpg, ctype=b"image/jpeg").replace(b"Content-Disposition: ", b"Content-Disposition:\t", 1) + close())
    add("disposition_tab_after_semicolon", "tabs after the semicolons", part(b'form-data;\tname="file";\tfilename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("cte_8bit_upper", "Content-Transfer-Encoding: 8BIT", file_part(jpg, headers=(b"Content-Transfer-Encoding: 8BIT",)) + close())
    add("cte_7bit", "Content-Transfer-Encoding: 7bit on a binary file", file_part(jpg, headers=(b"Content-Transfer-Encoding: 7bit",)) + close())
    add("part_ctype_charset_utf16", "a photo field declared text/plain; charset=utf-16", part(b'form-data; name="file"', jpg, ctype=b"text/plain; charset=utf-16") + close())
    add("part_ctype_charset_latin1", "a photo field and a text field declared charset=ISO-8859-1 (Apache HttpMime)",
        part(b'form-data; name="file"', jpg, ctype=b"text/plain; charset=ISO-8859-1", headers=(b"Content-Transfer-Encoding: 8bit",))
        + part(b'form-data; name="description"', "café".encode("latin-1"), ctype=b"text/plain; charset=ISO-8859-1") + close())
    add("part_ctype_charset_utf8", "a text field declared charset=UTF-8", part(b'form-data; name="description"', "café ☕".encode(), ctype=b"text/plain; charset=UTF-8") + file_part(jpg) + close())
    add("cte_base64", "Content-Transfer-Encoding: base64", file_part(base64.encodebytes(jpg), headers=(b"Content-Transfer-Encoding: base64",)) + close())
    import quopri
    add("cte_quoted_printable", "Content-Transfer-Encoding: quoted-printable", file_part(quopri.encodestring(jpg), headers=(b"Content-Transfer-Encoding: quoted-printable",)) + close())
    add("cte_binary", "Content-Transfer-Encoding: binary (Apache HttpClient)", file_part(jpg, headers=(b"Content-Transfer-Encoding: binary",)) + close())
    inner = b"innerBoundary99"
    nested = file_part(jpg, b'"coffee.jpg"', b'"file"', boundary=inner).replace(b'form-data; name="file"; ', b"attachment; ") + close(inner)
    add("nested_mixed", "RFC 2388 multipart/mixed part holding a file",
        part(b'form-data; name="files"', nested, ctype=b"multipart/mixed; boundary=" + inner) + close())

    # Content-Disposition parameters
    add("filename_star", "filename*=UTF-8''... only", file_part(jpg, b"x; filename*=UTF-8''coffee.jpg").replace(b"; filename=x", b"") + close())
    add("filename_star_and_filename", "filename= and filename*= with different names", file_part(jpg, b"\"a.jpg\"; filename*=UTF-8''b.jpg") + close())
    add("filename_star_first", "filename*= before filename=", part(b"form-data; name=\"file\"; filename*=UTF-8''b.jpg; filename=\"a.jpg\"", jpg, ctype=b"image/jpeg") + close())
    add("filename_star_latin1", "filename*=ISO-8859-1''caf%E9.jpg", part(b"form-data; name=\"file\"; filename*=ISO-8859-1''caf%E9.jpg", jpg, ctype=b"image/jpeg") + close())
    add("filename_star_continuation", "filename*0*= / filename*1*= continuations", part(b"form-data; name=\"file\"; filename*0*=UTF-8''cof; filename*1*=fee.jpg", jpg, ctype=b"image/jpeg") + close())
    add("filename_continuation_plain", 'filename*0="cof"; filename*1="fee.jpg"', part(b'form-data; name="file"; filename*0="cof"; filename*1="fee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("filename_star_dotnet", ".NET's form: unquoted name and filename, filename* repeating it",
        part(b"form-data; name=file; filename=coffee.jpg; filename*=utf-8''coffee.jpg", jpg, ctype=b"image/jpeg") + close())
    add("filename_star_dotnet_utf8", "filename and filename* saying the same UTF-8 name",
        part("form-data; name=\"file\"; filename=\"café.jpg\"; filename*=utf-8''caf%C3%A9.jpg".encode(), jpg, ctype=b"image/jpeg") + close())
    add("name_star", "name*=UTF-8''file", part(b"form-data; name*=UTF-8''file; filename=\"coffee.jpg\"", jpg, ctype=b"image/jpeg") + close())
    add("filename_escaped_quote", 'filename="a\\".jpg"', file_part(jpg, b'"a\\".jpg"') + close())
    add("filename_backslash_path", "a Windows path as filename", file_part(jpg, b'"C:\\\\photos\\\\coffee.jpg"') + close())
    add("filename_single_backslash", "a single backslash in the filename", file_part(jpg, b'"photos\\coffee.jpg"') + close())
    add("filename_path", "a relative path as filename", file_part(jpg, b'"../photos/coffee.jpg"') + close())
    add("filename_percent", "percent-escapes in the filename", file_part(jpg, b'"coffee%2Ejpg"') + close())
    add("filename_semicolon_in_quotes", "a semicolon inside the quoted filename", file_part(jpg, b'"a;b.jpg"') + close())
    add("name_holds_filename", 'name="x; filename=coffee.jpg" and no filename param', part(b'form-data; name="x; filename=coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("name_holds_quoted_filename", 'name holds filename="..." after an escaped quote', part(b'form-data; name="x\\"; filename=\\"coffee.jpg"', jpg) + close())
    add("filename_unquoted", "filename=coffee.jpg unquoted", file_part(jpg, b"coffee.jpg", b"file") + close())
    add("filename_unquoted_space", "unquoted filename with a space", file_part(jpg, b"my coffee.jpg") + close())
    add("filename_unquoted_empty", "filename= with nothing after it", part(b'form-data; name="file"; filename=', jpg, ctype=b"image/jpeg") + close())
    add("filename_utf8", "UTF-8 filename", file_part(jpg, '"café ☕.jpg"'.encode()) + close())
    add("filename_latin1", "Latin-1 (invalid UTF-8) filename bytes", file_part(jpg, b'"caf\xe9.jpg"') + close())
    add("name_utf8", "UTF-8 field name", file_part(jpg, name='"fichier_é"'.encode()) + close())
    add("filename_twice", "filename given twice", file_part(jpg, b'"a.jpg"; filename="b.jpg"') + close())
    add("name_twice", "name given twice", file_part(jpg, name=b'"file"; name="other"') + close())
    add("disposition_param_upper", "NAME= and FILENAME= in capitals", part(b'form-data; NAME="file"; FILENAME="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("disposition_attachment", "Content-Disposition: attachment", part(b'attachment; name="file"; filename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("disposition_no_type", "Content-Disposition without form-data", part(b'name="file"; filename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("disposition_form_data_upper", "FORM-DATA in capitals", part(b'FORM-DATA; name="file"; filename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("disposition_spaces_around_eq", "name = \"file\"", part(b'form-data; name = "file"; filename = "coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("disposition_no_space", 'form-data;name="file";filename="coffee.jpg"', part(b'form-data;name="file";filename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("disposition_trailing_semicolon", "a trailing semicolon", part(b'form-data; name="file"; filename="coffee.jpg";', jpg, ctype=b"image/jpeg") + close())
    add("disposition_filename_first", "filename before name", part(b'form-data; filename="coffee.jpg"; name="file"', jpg, ctype=b"image/jpeg") + close())
    add("disposition_extra_param", "an extra size= param", part(b'form-data; name="file"; filename="coffee.jpg"; size=41606', jpg, ctype=b"image/jpeg") + close())
    add("disposition_xfilename", "xfilename= before the real (absent) filename", part(b'form-data; name="file"; xfilename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("disposition_no_name", "filename but no name", part(b'form-data; filename="coffee.jpg"', jpg, ctype=b"image/jpeg") + close())
    add("part_ctype_params", "part Content-Type with params", file_part(jpg, ctype=b'image/jpeg; charset=binary; name="x.jpg"') + close())

    # names
    add("same_name_two_files", "two files under one plain name", file_part(jpg) + file_part(jpg2, b'"camera.jpg"') + close())
    add("same_name_field_then_file", "a field and a file under one name", field(b"file", b"hello") + file_part(jpg) + close())
    add("same_name_file_then_field", "a file and a field under one name", file_part(jpg) + field(b"file", b"hello") + close())
    add("nested_name", "a[b][c] style name", file_part(jpg, name=b'"media[file][0]"') + close())
    add("name_with_dot", "a dot in the name", file_part(jpg, name=b'"media.file"') + close())
    add("name_with_space", "a space in the name", file_part(jpg, name=b'"media file"') + close())
    add("name_odd_brackets", "unbalanced brackets in the name", file_part(jpg, name=b'"a]b[c"') + close())
    add("name_empty", 'name=""', file_part(jpg, name=b'""') + close())
    add("name_array_of_hashes", "fields_attributes[][name] pairs (Rails array of hashes) beside a file",
        field(b"fields_attributes[][name]", b"a") + field(b"fields_attributes[][value]", b"1") + field(b"fields_attributes[][name]", b"b")
        + field(b"fields_attributes[][value]", b"2") + file_part(jpg, name=b'"avatar"') + close())
    add("name_indexed_hashes", "fields_attributes[0][name] (Mastodon's documented form) beside a file",
        field(b"fields_attributes[0][name]", b"a") + field(b"fields_attributes[0][value]", b"1") + file_part(jpg, name=b'"avatar"') + close())
    add("filename_percent_literal", "a literal percent sign, no escape, in the filename", file_part(jpg, b'"100% real.jpg"') + close())
    add("filename_percent_utf8", "a UTF-8 filename percent-escaped, as aiohttp sends it", file_part(jpg, b'"caf%C3%A9.jpg"') + close())
    add("filename_percent_slash", "a percent-escaped slash in the filename", file_part(jpg, b'"photos%2Fcoffee.jpg"') + close())
    add("filename_browser_escaped_quote", 'a browser\'s escape of a quote, %22, in the filename', file_part(jpg, b'"say %22hi%22.jpg"') + close())
    add("array_then_plain", "images[] then images", file_part(jpg, name=b'"images[]"') + file_part(jpg2, b'"camera.jpg"', b'"images"') + close())
    return out


def mutations(count: int, seed: int = 1) -> list[Case]:
    """Seeded random edits of a plain two-part body outside the photo's bytes: inserted whitespace, quotes,
    separators, line breaks and delimiters, deleted bytes. Finds what the hand-written cases missed."""
    import random

    jpg = photo("moon")
    base = file_part(jpg) + field(b"description", b"a cup of coffee") + close()
    alphabet = [b" ", b"\t", b"\r", b"\n", b"\r\n", b";", b"=", b'"', b"\\", b":", b"-", b"--", b"\x00", b"*", b"%", b"'",
                b",", b"/", b"a", b"\xc3\xa9", b"\xff"]
    inserts = [b"\r\n", b"\r\n\r\n", b"--" + B, b"\r\n--" + B + b"\r\n"]
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        body = base
        for _ in range(rnd.randint(1, 2)):
            start = body.find(jpg[:64])
            end = start + len(jpg) if start >= 0 else -1
            at = rnd.choice([p for p in range(len(body) + 1) if not start < p < end])
            op = rnd.random()
            if op < 0.6:
                body = body[:at] + rnd.choice(alphabet) + body[at:]
            elif op < 0.9:
                body = body[:at] + body[at + 1 :]
            else:
                body = body[:at] + rnd.choice(inserts) + body[at:]
        out.append(Case(f"mutation{seed}_{i}", "random edit of a plain body", ct(), body))
    return out


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- harnesses -----------------------------------------------------------------------------------------------


class Unavailable(Exception):
    """A parser that cannot run here; the message says why and how to install it."""


def _pipe(argv: list[str], corpus: list[Case], cwd: Path | None = None) -> dict[str, dict]:
    stdin = "".join(c.as_json() + "\n" for c in corpus)
    proc = subprocess.run(argv, input=stdin.encode(), capture_output=True, cwd=cwd, timeout=300)
    if proc.returncode != 0:
        raise Unavailable(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    results = {}
    for line in proc.stdout.decode().splitlines():
        if line.strip():
            r = json.loads(line)
            results[r["id"]] = r
    return results


def run_rack(corpus: list[Case]) -> dict[str, dict]:
    ruby = shutil.which("ruby")
    if ruby is None:
        raise Unavailable(f"no ruby: {INSTALL_HINT} (apt-get install ruby-rack)")
    probe = subprocess.run([ruby, "-e", 'require "rack"; print Rack.release'], capture_output=True)
    if probe.returncode != 0:
        raise Unavailable(f"ruby has no rack gem: {INSTALL_HINT} (apt-get install ruby-rack)")
    return _pipe([ruby, str(PARSERS_DIR / "ruby" / "parse.rb")], corpus)


def _node(which: str, corpus: list[Case]) -> dict[str, dict]:
    node = shutil.which("node")
    if node is None:
        raise Unavailable(f"no node: {INSTALL_HINT} (apt-get install nodejs npm)")
    module = {"busboy": "busboy", "fastify": "@fastify/busboy"}.get(which)
    if module and not (PARSERS_DIR / "node" / "node_modules" / module).is_dir():
        raise Unavailable(f"{module} not installed: {INSTALL_HINT} (npm ci in tests/parsers/node)")
    return _pipe([node, str(PARSERS_DIR / "node" / "parse.js"), which], corpus, cwd=PARSERS_DIR / "node")


def run_busboy(corpus: list[Case]) -> dict[str, dict]:
    return _node("busboy", corpus)


def run_fastify_busboy(corpus: list[Case]) -> dict[str, dict]:
    return _node("fastify", corpus)


def run_undici(corpus: list[Case]) -> dict[str, dict]:
    return _node("undici", corpus)


def run_go(corpus: list[Case]) -> dict[str, dict]:
    go = shutil.which("go")
    if go is None:
        raise Unavailable(f"no go toolchain: {INSTALL_HINT} (apt-get install golang-go)")
    binary = BUILD_DIR / "go-multipart"
    source = PARSERS_DIR / "go" / "main.go"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD_DIR.mkdir(exist_ok=True)
        env = {**os.environ, "GOCACHE": str(BUILD_DIR / "gocache"), "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
        build = subprocess.run([go, "build", "-o", str(binary), "."], cwd=source.parent, env=env, capture_output=True, timeout=300)
        if build.returncode != 0:
            raise Unavailable(f"go build failed: {build.stderr.decode(errors='replace')[-500:]}")
    return _pipe([str(binary)], corpus)


def run_php(corpus: list[Case]) -> dict[str, dict]:
    php = shutil.which("php")
    if php is None:
        raise Unavailable(f"no php: {INSTALL_HINT} (apt-get install php-cli)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ini = ["-d", "upload_max_filesize=64M", "-d", "post_max_size=64M", "-d", "max_file_uploads=200",
           "-d", "file_uploads=On", "-d", "display_errors=0", "-d", "log_errors=0", "-d", "html_errors=0"]
    server = subprocess.Popen([php, *ini, "-S", f"127.0.0.1:{port}", str(PARSERS_DIR / "php" / "parse.php")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise Unavailable("php -S did not start") from None
                time.sleep(0.05)
        results = {}
        for c in corpus:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.putrequest("POST", "/upload", skip_accept_encoding=True)
            conn.putheader("Content-Type", c.content_type)
            conn.putheader("Content-Length", str(len(c.body)))
            conn.endheaders(c.body)
            resp = conn.getresponse()
            raw = resp.read()
            conn.close()
            try:
                r = json.loads(raw)
            except ValueError:
                r = {"ok": False, "parts": [], "error": f"HTTP {resp.status}: {raw[:200]!r}"}
            results[c.id] = {"id": c.id, **r}
        return results
    finally:
        server.terminate()
        server.wait(10)


PARSERS: dict[str, Callable[[list[Case]], dict[str, dict]]] = {
    "rack": run_rack,
    "busboy": run_busboy,
    "fastify-busboy": run_fastify_busboy,
    "undici": run_undici,
    "go": run_go,
    "php": run_php,
}
"""Rack (Mastodon), busboy (multer, Express), @fastify/busboy (Misskey, via @fastify/multipart), Node's
Request.formData (undici),
Go mime/multipart via Request.ParseMultipartForm (GoToSocial, gin), PHP (Pixelfed)."""


def _name(name: str | None) -> str | None:
    return None if name is None else re.sub(r"\[\d+\]", "[]", name)


def visible(parts: list[dict]) -> list[tuple[str | None, str | None, str | None]]:
    """What a report hands the application, as a sorted multiset of (name, filename, sha256). Parts with no
    content and no (or an empty) filename carry nothing and are left out: parsers differ only in whether they
    list them (an unfilled file input, an empty field). ``[0]`` in a name reads as ``[]`` (PHP's arrays
    do not say which one was sent)."""
    kept = [(_name(p.get("name")), p.get("filename"), p.get("sha256")) for p in parts if p.get("size") or p.get("filename")]
    return sorted(kept, key=repr)


def ours(body: bytes, content_type: str, *, text_fields: bool = False) -> dict:
    """Our parser's report, in the harnesses' shape. ``text_fields``: digest plain fields as UTF-8 text
    decoded with replacement, as undici hands them over."""
    from proxy.multipart import MultipartError, parse

    try:
        mp = parse(body, content_type)
    except MultipartError as exc:
        return {"ok": False, "parts": [], "error": str(exc)}
    parts = []
    for p in mp.parts:
        data = p.content(body)
        if text_fields and p.filename is None:
            data = data.decode("utf-8", "replace").encode()
        parts.append({"name": p.name, "filename": p.filename, "sha256": digest(data), "size": len(data), "file": p.is_file,
                      "sha256_text": digest(p.content(body).decode("utf-8", "replace").encode())})
    return {"ok": True, "parts": parts}


def _as_ours(theirs: dict, mine: list[dict]) -> dict:
    """busboy hands a field over as text decoded with the part's charset: a field whose UTF-8 reading
    matches one of ours is that part."""
    alt = theirs.get("sha256_utf8")
    if alt is None or theirs.get("file"):
        return theirs
    for p in mine:
        if p["name"] == theirs.get("name") and p["filename"] is None and p.get("sha256_text") == alt:
            return {**theirs, "sha256": p["sha256"], "size": p["size"]}
    return theirs


def rack_filename(filename: str | None) -> str | None:
    """The filename as Rack 2.2-3.x hands it over: percent-decoded when every '%' starts a valid escape."""
    if filename and all(re.fullmatch(r"%[0-9A-Fa-f]{2}", s) for s in re.findall(r"%.?.?", filename)):
        return unquote(filename)
    return filename


def conflicts(case: Case, report: dict, parser: str = "") -> list[str]:
    """Why a parser's report breaks the rule (empty when it holds): where we accept a body, the parser either
    refuses it or hands the application exactly our parts, and every part it gives as a file we judge."""
    mine = ours(case.body, case.content_type, text_fields=any(p.get("text") for p in report.get("parts") or []))
    if not mine["ok"] or not report["ok"]:
        return []
    problems = []
    if parser == "rack":
        mine["parts"] = [{**p, "filename": rack_filename(p["filename"])} for p in mine["parts"]]
    if parser == "undici":  # undici undoes the WHATWG escapes of '"', CR and LF in filenames
        mine["parts"] = [{**p, "filename": p["filename"] and p["filename"].replace("%22", '"')} for p in mine["parts"]]
    theirs = [_as_ours(p, mine["parts"]) for p in report["parts"]]
    if visible(mine["parts"]) != visible(theirs):
        problems.append(f"parts differ: ours {visible(mine['parts'])} theirs {visible(theirs)}")
    judged = {(_name(p["name"]), p["sha256"]) for p in mine["parts"] if p["file"]}
    for p in report["parts"]:
        if p.get("file") and (p.get("size") or p.get("filename")) and (_name(p.get("name")), p.get("sha256")) not in judged:
            problems.append(f"file {p.get('name')!r} ({p.get('filename')!r}) is not judged by us")
    return problems


def files(parts: list[dict]) -> list[tuple[str | None, str | None]]:
    """The (name, sha256) of what the application gets as an uploaded file."""
    return sorted(((p.get("name"), p.get("sha256")) for p in parts if p.get("file") and (p.get("size") or p.get("filename"))), key=repr)


def summary(report: dict) -> str:
    """One line: each part the application gets as name:filename:sha256-prefix, '*' marking files."""
    if not report["ok"]:
        return "error: " + str(report.get("error"))[:60]
    files = {(_name(p.get("name")), p.get("sha256")) for p in report["parts"] if p.get("file")}
    return "; ".join(f"{n}:{f!r}:{(s or '')[:6]}{'*' if (n, s) in files else ''}" for n, f, s in visible(report["parts"])) or "(nothing)"


def run_all(corpus: list[Case]) -> tuple[dict[str, dict[str, dict]], dict[str, str]]:
    ran: dict[str, dict[str, dict]] = {}
    skipped: dict[str, str] = {}
    for name, runner in PARSERS.items():
        try:
            ran[name] = runner(corpus)
        except Unavailable as exc:
            skipped[name] = str(exc)
    return ran, skipped


def disagreements(corpus: list[Case], ran: dict[str, dict[str, dict]]) -> Iterator[tuple[Case, dict[str, str]]]:
    """Cases on which two parsers that ran hand the application different parts."""
    for c in corpus:
        views = {name: summary(results[c.id]) for name, results in ran.items()}
        if len(set(views.values())) > 1:
            yield c, views


if __name__ == "__main__":
    # Prints every case on which two installed parsers disagree, parsers grouped by what they read, and
    # whether ours accepts it: the measured table behind proxy/multipart.py's rules.
    corpus = cases()
    ran, skipped = run_all(corpus)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    for c, views in disagreements(corpus, ran):
        groups: dict[str, list[str]] = {}
        for name, view in views.items():
            groups.setdefault("error" if view.startswith("error") else view, []).append(name)
        verdict = "accepts" if ours(c.body, c.content_type)["ok"] else "refuses"
        print(f"{c.id} ({c.label}): ours {verdict}; " + " | ".join(f"{'/'.join(ps)}: {v}" for v, ps in groups.items()))


# -- real clients' bodies: what the strict parser must keep accepting -------------------------------------


def encode_node(photo_bytes: bytes) -> tuple[bytes, str]:
    """Node's fetch FormData (undici) serialisation."""
    node = shutil.which("node")
    if node is None:
        raise Unavailable(f"no node: {INSTALL_HINT}")
    return _encoded([node, str(PARSERS_DIR / "node" / "encode.js")], photo_bytes)


def encode_go(photo_bytes: bytes) -> tuple[bytes, str]:
    """Go's mime/multipart.Writer."""
    run_go([])  # builds the binary
    return _encoded([str(BUILD_DIR / "go-multipart"), "encode"], photo_bytes)


def _encoded(argv: list[str], photo_bytes: bytes) -> tuple[bytes, str]:
    proc = subprocess.run(argv, input=photo_bytes, capture_output=True, timeout=60, check=True)
    out = json.loads(proc.stdout)
    return base64.b64decode(out["body_b64"]), out["content_type"]


def encode_curl(photo_bytes: bytes, tmp: Path) -> tuple[bytes, str]:
    """curl -F, caught by a one-request server on loopback."""
    import threading

    curl = shutil.which("curl")
    if curl is None:
        raise Unavailable("no curl: apt-get install curl")
    (tmp / "coffee.jpg").write_bytes(photo_bytes)
    got: dict[str, bytes] = {}
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += conn.recv(65536)
            got["head"], got["body"] = head, body
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        subprocess.run([curl, "-sS", "-H", "Expect:", "-F", "description=a cup of coffee",
                        "-F", "file=@coffee.jpg;type=image/jpeg;filename=café (1).jpg", f"http://127.0.0.1:{port}/upload"],
                       cwd=tmp, capture_output=True, timeout=30, check=True)
        thread.join(10)
    finally:
        server.close()
    ctype = re.search(rb"(?im)^content-type:\s*(.+?)\r?$", got["head"]).group(1).decode()  # type: ignore[union-attr]
    return got["body"], ctype
