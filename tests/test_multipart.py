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
