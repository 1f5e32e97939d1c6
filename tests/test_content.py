"""What a request body carries: pure functions over bytes (the content gate's eyes)."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import pytest

from proxy.content import Unreadable, data_uris, decode_content, find_media, load_json, media_type_of, streamable
from tests.support.photos import photo


def uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def test_data_uris_in_any_text() -> None:
    jpg = photo("coffee")
    text = f'x <img src="{uri(jpg)}"> y'.encode()
    assert list(data_uris(text)) == [jpg]
    wrapped = uri(jpg)[:40] + "\n" + uri(jpg)[40:]  # whitespace inside the base64: skipped as decoders do
    assert list(data_uris(wrapped.encode())) == [jpg]
    assert list(data_uris(b"data:text/plain,hello")) == []  # not base64: nothing a backend stores as a file


def test_find_media_by_body_type() -> None:
    jpg = photo("rocket")
    assert [p.data for p in find_media(jpg, "application/octet-stream", None, "")] == [jpg]
    doc = json.dumps({"a": {"b": [uri(jpg)]}}).encode()
    assert [p.data for p in find_media(doc, "application/json", "application/json", "")] == [jpg]
    form = b"avatar=" + uri(jpg).replace("+", "%2B").replace("/", "%2F").encode()
    assert [p.data for p in find_media(form, "application/x-www-form-urlencoded", None, "")] == [jpg]
    assert [p.data for p in find_media(b"", "", None, "thumbnail=" + uri(jpg).replace("+", "%2B"))] == [jpg]
    assert find_media(b'{"status": "hello"}', "application/json", "application/json", "") == []


def test_unreadable_bodies() -> None:
    for body in (b'{"a": 1, "a": 2}', b'{"a": NaN}', b"[" * 200 + b"]" * 200, b"\xff{}"):
        with pytest.raises(Unreadable):
            load_json(body)
    with pytest.raises(Unreadable):
        find_media(b"--x\r\nbroken", "multipart/form-data", "multipart/form-data; boundary=x", "")


def test_content_encodings_bounded() -> None:
    data = b"x" * 1000
    assert decode_content(gzip.compress(data), "gzip", 2000) == data
    assert decode_content(zlib.compress(data), "deflate", 2000) == data
    assert decode_content(data, "identity", 2000) == data
    with pytest.raises(Unreadable) as info:
        decode_content(gzip.compress(b"\0" * 10_000), "gzip", 5000)
    assert info.value.status == 413
    with pytest.raises(Unreadable) as info:
        decode_content(data, "compress", 2000)
    assert info.value.status == 415


def test_only_plain_octet_streams_of_no_media_stream_unread() -> None:
    assert streamable("application/octet-stream", bytes(range(64)))
    assert not streamable("application/octet-stream", photo("coffee")[:64])
    for header in ("multipart/form-data; boundary=x", "multipart/form-data, text/plain; boundary=x", "application/json",
                   None, "", "text/plain", "text/x-json", "application/octet-stream, text/plain",
                   "application/x-www-form-urlencoded, text/plain", "image/png"):
        assert not streamable(header, bytes(range(64))), header


def test_media_type_is_cut_as_the_strictest_parser_cuts_it() -> None:
    assert media_type_of("Application/JSON , x") == "application/json"
    assert media_type_of("application/x-www-form-urlencoded,text/plain") == "application/x-www-form-urlencoded"
    assert media_type_of("text/x-json; charset=utf-8") == "text/x-json"
    assert media_type_of(None) == ""


@pytest.mark.parametrize("prefix,suffix", [(".", ""), ("%", ""), ("", "A"), ("", "=garbage"), ("\n", "")])
def test_data_uri_payloads_read_as_lenient_decoders_read_them(prefix: str, suffix: str) -> None:
    """Ruby's unpack('m') (Paperclip) skips characters outside the alphabet, stops at '=', drops a lone
    last character: whatever it reads out of a value, we judge."""
    jpg = photo("coffee")
    b64 = base64.b64encode(jpg).decode().rstrip("=")
    value = ("data:image/jpeg;base64," + prefix + b64 + suffix).encode()
    assert any(p.startswith(jpg) for p in data_uris(value, whole=True))  # a stray last byte changes no pixel
