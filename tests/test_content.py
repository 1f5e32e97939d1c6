"""What a request body carries: pure functions over bytes (the content gate's eyes)."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import pytest

from proxy.content import Unreadable, data_uris, decode_content, find_media, load_json, may_carry_media
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


def test_which_bodies_must_be_read_before_forwarding() -> None:
    assert may_carry_media("multipart/form-data", "multipart/form-data; boundary=x", b"")
    assert may_carry_media("text/plain", "multipart/form-data, text/plain; boundary=x", b"")  # Rack reads it
    assert may_carry_media("application/json", "application/json", b"{}")
    assert may_carry_media("", None, b"a=b")  # no Content-Type: Rack reads a form
    assert may_carry_media("application/octet-stream", None, photo("coffee")[:64])
    assert not may_carry_media("application/octet-stream", None, bytes(range(64)))
