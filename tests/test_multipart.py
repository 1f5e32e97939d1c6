import pytest
from aiohttp import FormData

from proxy.multipart import MAX_PARTS, MultipartError, parse


def form(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    fd = FormData()
    for name, data, filename in parts:
        if filename:
            fd.add_field(name, data, filename=filename, content_type="image/jpeg")
        else:
            fd.add_field(name, data.decode())
    payload = fd()
    chunks: list[bytes] = []

    class W:
        async def write(self, b: bytes) -> None:
            chunks.append(bytes(b))

    import asyncio

    asyncio.run(payload.write(W()))
    return b"".join(chunks), payload.content_type


def test_parts_and_contents() -> None:
    body, ctype = form(("images[]", b"\xff\xd8one", "a.jpg"), ("description", b"hi", None), ("images[]", b"\r\n--two\r\n", "b.jpg"))
    mp = parse(body, ctype)
    assert [(p.name, p.filename) for p in mp.parts] == [("images[]", "a.jpg"), ("description", None), ("images[]", "b.jpg")]
    assert [p.content(body) for p in mp.parts] == [b"\xff\xd8one", b"hi", b"\r\n--two\r\n"]
    assert mp.without(set()) == body


def test_without_cuts_only_the_dropped_parts() -> None:
    body, ctype = form(("images[]", b"first", "a.jpg"), ("images[]", b"second", "b.jpg"), ("images[]", b"third", "c.jpg"))
    mp = parse(body, ctype)
    stripped = mp.without({1})
    again = parse(stripped, ctype)
    assert [p.content(stripped) for p in again.parts] == [b"first", b"third"]
    assert stripped == body[: mp.parts[1].start] + body[mp.parts[2].start :]


def test_empty_part_content() -> None:
    body, ctype = form(("file", b"", "empty.jpg"))
    assert parse(body, ctype).parts[0].content(body) == b""


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nabc", "multipart/form-data; boundary=b"),  # truncated
        (b"no boundary here", "multipart/form-data; boundary=b"),
        (b"--b\r\n\r\nx\r\n--b--", "multipart/form-data"),  # no boundary parameter
        (b"--b\r\n\r\nx\r\n--b--", "application/json"),
        (b"--bXX", "multipart/form-data; boundary=b"),
        (b"--b\r\nbroken header line\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),
    ],
)
def test_malformed_bodies_raise(body: bytes, ctype: str) -> None:
    with pytest.raises(MultipartError):
        parse(body, ctype)


def test_too_many_parts() -> None:
    body = b"".join(b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nv\r\n" for _ in range(MAX_PARTS + 1)) + b"--b--\r\n"
    with pytest.raises(MultipartError, match="more than"):
        parse(body, "multipart/form-data; boundary=b")


# -- strictness: the body forms on which the backends' parsers disagree are refused (measured in
# tests/test_multipart_differential.py; the list is in proxy/multipart.py's docstring)

CT = "multipart/form-data; boundary=b"
FILE = b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg'


def body_of(*parts: tuple[bytes, bytes]) -> bytes:
    return b"".join(b"--b\r\n" + headers + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts) + b"--b--\r\n"


@pytest.mark.parametrize(
    ("ctype", "boundary"),
    [
        ("multipart/form-data; boundary=b", b"b"),
        ("multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW", b"----WebKitFormBoundary7MA4YWxkTrZu0gW"),
        ('multipart/form-data; boundary="a b"', b"a b"),
        ("Multipart/Form-Data; BOUNDARY=b; charset=utf-8", b"b"),
    ],
)
def test_plain_content_types(ctype: str, boundary: bytes) -> None:
    from proxy.multipart import boundary_of

    assert boundary_of(ctype) == boundary


@pytest.mark.parametrize(
    "ctype",
    [
        "multipart/form-data; boundary=b; boundary=c",  # Rack refuses, Go refuses, busboy takes the first
        "multipart/form-data; xboundary=c; boundary=b",  # PHP takes xboundary's value
        "multipart/form-data; boundary*=utf-8''b",  # only Go decodes RFC 2231 here
        "multipart/form-data; boundary = b",
        "multipart/form-data; boundary=b ",
        "multipart/form-data; boundary=a:b",  # Go refuses tspecials unquoted, the others accept
        'multipart/form-data; boundary="b "',  # Rack fails on a trailing space
        'multipart/form-data; boundary="a,b"',  # Rack's boundary ends at a comma
        "multipart/form-data; boundary=b-",
        "multipart/form-data; boundary=" + "b" * 71,
        "multipart/form-data; boundary=b; foo=bar",
        "multipart/mixed; boundary=b",  # Rack parses any multipart/*
        " multipart/form-data; boundary=b",
    ],
)
def test_ambiguous_content_types_are_refused(ctype: str) -> None:
    with pytest.raises(MultipartError):
        parse(body_of((FILE, b"\xff\xd8\xffx")), ctype)


REFUSED = {
    "preamble": b"preamble\r\n" + body_of((FILE, b"x")),
    "epilogue": body_of((FILE, b"x")) + b"epilogue",
    "part after close": body_of((FILE, b"x")) + b"--b\r\n" + FILE + b"\r\n\r\nx\r\n--b--\r\n",
    "LF only": body_of((FILE, b"x")).replace(b"\r\n", b"\n"),
    "padding after delimiter": body_of((FILE, b"x")).replace(b"--b\r\n", b"--b \r\n"),
    "no CRLF before delimiter": b"--b\r\n" + FILE + b"\r\n\r\nx--b--\r\n",
    "boundary in content": body_of((FILE, b"x--b\r\ny")),
    "boundary after bare LF": body_of((FILE, b"x\n--b\r\ny")),
    "boundary with suffix in content": body_of((FILE, b"x\r\n--bc\r\ny")),
    "folded header": body_of((b'Content-Disposition: form-data; name="file";\r\n filename="a.jpg"', b"x")),
    "two dispositions": body_of((b'Content-Disposition: form-data; name="d"\r\n' + FILE, b"x")),
    "two content types": body_of((FILE + b"\r\nContent-Type: text/plain", b"x")),
    "space before colon": body_of((b'Content-Disposition : form-data; name="file"; filename="a.jpg"', b"x")),
    "NUL in header": body_of((FILE.replace(b"a.jpg", b"a\x00.jpg"), b"x")),
    "bare CR in header": body_of((FILE.replace(b"\r\nContent-Type", b"\rContent-Type"), b"x")),
    "header too long": body_of((FILE + b"\r\nX-Pad: " + b"a" * 9000, b"x")),
    "no disposition": body_of((b"Content-Type: image/jpeg", b"x")),
    "base64 transfer encoding": body_of((FILE + b"\r\nContent-Transfer-Encoding: base64", b"eA==")),
    "quoted-printable": body_of((FILE + b"\r\nContent-Transfer-Encoding: quoted-printable", b"x")),
    "nested multipart": body_of((b'Content-Disposition: form-data; name="f"\r\nContent-Type: multipart/mixed; boundary=c', b"--c--")),
    "attachment": body_of((FILE.replace(b"form-data", b"attachment"), b"x")),
    "filename*": body_of((b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''a.jpg", b"x")),
    "name*": body_of((b"Content-Disposition: form-data; name*=UTF-8''file; filename=\"a.jpg\"", b"x")),
    "filename twice": body_of((FILE.replace(b'"a.jpg"', b'"a.jpg"; filename="b.jpg"'), b"x")),
    "capital NAME": body_of((b'Content-Disposition: form-data; NAME="file"; FILENAME="a.jpg"', b"x")),
    "escaped quote": body_of((FILE.replace(b'"a.jpg"', b'"a\\".jpg"'), b"x")),
    "path": body_of((FILE.replace(b'"a.jpg"', b'"../a.jpg"'), b"x")),
    "windows path": body_of((FILE.replace(b'"a.jpg"', b'"C:\\\\a.jpg"'), b"x")),
    "percent-escaped slash": body_of((FILE.replace(b'"a.jpg"', b'"b%2Fa.jpg"'), b"x")),  # Rack decodes, then cuts the path
    "latin-1 filename": body_of((FILE.replace(b'"a.jpg"', b'"\xe9.jpg"'), b"x")),
    "unquoted with space": body_of((FILE.replace(b'"a.jpg"', b"a b.jpg"), b"x")),
    "trailing semicolon": body_of((FILE.replace(b'"a.jpg"', b'"a.jpg";'), b"x")),
    "spaces around =": body_of((FILE.replace(b"filename=", b"filename = "), b"x")),
    "unknown parameter": body_of((FILE.replace(b'"a.jpg"', b'"a.jpg"; size=1'), b"x")),
    "no name": body_of((b'Content-Disposition: form-data; filename="a.jpg"', b"x")),
    "dot in name": body_of((FILE.replace(b'"file"', b'"a.b"'), b"x")),
    "content under empty filename": body_of((FILE.replace(b'"a.jpg"', b'""'), b"x")),
    "same name twice": body_of((FILE, b"x"), (FILE, b"y")),
    "name beside name[]": body_of((FILE, b"x"), (FILE.replace(b'"file"', b'"file[]"'), b"y")),
    "no parts": b"--b--\r\n",
    "unknown part header": body_of((FILE + b"\r\nX-Foo: bar", b"x")),
    "disposition hidden in another header": body_of((b'X-Content-Disposition: form-data; name="d"\r\n' + FILE, b"x")),
    "filename before name": body_of((b'Content-Disposition: form-data; filename="a:b.jpg"; name="file"', b"x")),
    "filename* saying another name": body_of((FILE.replace(b'"a.jpg"', b"\"a.jpg\"; filename*=utf-8''b.jpg"), b"x")),
    "filename* alone": body_of((b"Content-Disposition: form-data; name=\"file\"; filename*=utf-8''a.jpg", b"x")),
    "Content-Length that lies": body_of((FILE + b"\r\nContent-Length: 5", b"x")),
    "UTF-16 field": body_of((b'Content-Disposition: form-data; name="f"\r\nContent-Type: text/plain; charset=utf-16', b"x\x00")),
    "part Content-Type with a colon": body_of((b'Content-Disposition: form-data; name="f"\r\nContent-Type: image/jpeg; x="a:b"', b"x")),
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_ambiguous_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MultipartError):
        parse(body, CT)


def test_dotnet_filename_star_repeating_filename_is_accepted() -> None:
    body = body_of((b"Content-Disposition: form-data; name=file; filename=\"caf\xc3\xa9.jpg\"; filename*=utf-8''caf%C3%A9.jpg"
                    b"\r\nContent-Type: image/jpeg\r\nContent-Length: 1", b"x"))
    (part,) = parse(body, CT).parts
    assert (part.name, part.filename, part.is_file) == ("file", "café.jpg", True)


def test_what_is_a_file() -> None:
    from tests.support.photos import photo

    jpeg = photo("coffee")
    body = body_of(
        (FILE, b"not even an image"),  # a filename: the backend stores it, whatever it holds
        (b'Content-Disposition: form-data; name="raw"\r\nContent-Type: image/png', b"bytes"),
        (b'Content-Disposition: form-data; name="octets"\r\nContent-Type: application/octet-stream', b"bytes"),  # busboy: a file
        (b'Content-Disposition: form-data; name="sniffed"', jpeg),  # no filename, but photo bytes
        (b'Content-Disposition: form-data; name="description"', b"BMX race at dawn"),  # text that starts like a BMP
        (b'Content-Disposition: form-data; name="empty"; filename=""\r\nContent-Type: application/octet-stream', b""),
        (b'Content-Disposition: form-data; name="note"\r\nContent-Type: text/plain; charset=utf-8', "café".encode()),
    )
    mp = parse(body, CT)
    assert [(p.name, p.is_file) for p in mp.parts] == [
        ("file", True), ("raw", True), ("octets", True), ("sniffed", True), ("description", False), ("empty", False), ("note", False),
    ]
    assert mp.files() == [0, 1, 2, 3]
    assert mp.parts[3].content(body) == jpeg
    assert mp.parts[5].filename == "" and mp.without({0, 1}) == body[: mp.parts[0].start] + body[mp.parts[2].start :]


def test_real_clients_bodies_are_accepted() -> None:
    from urllib.parse import unquote

    import httpx
    import requests
    import urllib3

    from tests.support.photos import photo

    jpeg = photo("coffee")
    bodies: list[tuple[str, bytes, str]] = []
    req = httpx.Request("POST", "http://localhost/", files={"file": ("café ☕ (1).jpg", jpeg, "image/jpeg")}, data={"description": "hi"})
    bodies.append(("httpx", req.read(), req.headers["content-type"]))
    b, ctype = urllib3.encode_multipart_formdata({"file": ("café ☕ (1).jpg", jpeg, "image/jpeg"), "description": "hi"})
    bodies.append(("urllib3", b, ctype))
    prep = requests.Request("POST", "http://localhost/", files={"file": ("café ☕ (1).jpg", jpeg, "image/jpeg")},
                            data={"description": "hi"}).prepare()
    assert isinstance(prep.body, bytes)
    bodies.append(("requests", prep.body, str(prep.headers["Content-Type"])))
    b, ctype = form(("file", jpeg, "café ☕ (1).jpg"), ("description", b"hi", None))
    bodies.append(("aiohttp", b, ctype))
    for client, body, ctype in bodies:
        mp = parse(body, ctype)
        files = [mp.parts[i] for i in mp.files()]
        assert [(p.name, p.content(body)) for p in files] == [("file", jpeg)], client
        assert unquote(files[0].filename or "") == "café ☕ (1).jpg", client  # aiohttp percent-escapes it


@pytest.mark.parametrize(
    ("ctype", "expected"),
    [
        ("multipart/form-data; boundary=b", True),
        ("multipart/form-data, text/plain; boundary=b", True),  # aiohttp: application/octet-stream; Rack, PHP: multipart
        ("text/plain, multipart/form-data; boundary=b", True),  # undici parses it
        ("MULTIPART/MIXED; boundary=b", True),  # Rack parses any multipart/*
        ("application/json", False),
        ("text/plain; boundary=b", False),
        (None, False),
    ],
)
def test_is_multipart_is_wide(ctype: str | None, expected: bool) -> None:
    from proxy.multipart import is_multipart

    assert is_multipart(ctype) is expected
