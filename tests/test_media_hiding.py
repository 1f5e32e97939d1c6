"""Media that hides flagged content from the decoder, judged end to end with REAL weights.

The flagged content is always the benign stand-in: a human face (NudeNet's FACE_FEMALE/FACE_MALE, the
``FACES`` policy of test_semantic). Each test hides a face photo the way an uploader could hide other
content: one frame in many, one second of a video, a second video stream, an alpha matte, 16 bits, a
strip or a grid, a format the decoder did not read, an SVG.
"""

from __future__ import annotations

import base64
import gzip
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.configs import FACES, make_config
from tests.support.photos import photo, photo_image
from tests.support.servers import post_media as _post_media
from tests.support.servers import start

FACE = "astronaut"
CLEAN = ("coffee", "rocket", "chelsea", "china", "flower")


def _frames(names: list[str], size: tuple[int, int] = (160, 160)) -> list[Image.Image]:
    cache = {n: photo_image(n).resize(size) for n in set(names)}
    return [cache[n] for n in names]


def animation(fmt: str, names: list[str]) -> bytes:
    frames = _frames(names)
    if fmt == "GIF":  # one palette for all, each picture quantised once: Pillow's per-frame work is slow
        pictures = list({id(f): f for f in frames}.values())
        sheet = Image.new("RGB", (160 * len(pictures), 160))
        for i, f in enumerate(pictures):
            sheet.paste(f, (160 * i, 0))
        palette = sheet.quantize(256)
        quantised = {id(f): f.quantize(palette=palette, dither=Image.Dither.NONE) for f in pictures}
        frames = [quantised[id(f)] for f in frames]
    buf = io.BytesIO()
    extra: dict[str, Any] = {"method": 0, "quality": 80} if fmt == "WEBP" else {}
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **extra)
    return buf.getvalue()


def video(streams: list[list[str]], fmt: str = "mp4", rate: int = 4) -> bytes:
    """One video stream per list of photo names, ``rate`` frames a second."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        outs = []
        for _ in streams:
            s = out.add_stream("mpeg4", rate=rate)
            s.width, s.height, s.pix_fmt, s.bit_rate = 256, 256, "yuv420p", 4_000_000
            outs.append(s)
        for names, stream in zip(streams, outs, strict=True):
            for img in _frames(names, (256, 256)):
                for packet in stream.encode(av.VideoFrame.from_image(img)):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def post_media(client: Any, data: bytes) -> tuple[int, dict]:
    """A stream, not raw bytes: aiohttp warns (an error here) about bodies over 1 MiB sent as bytes."""
    return await _post_media(client, io.BytesIO(data))  # type: ignore[arg-type]


async def judge(aiohttp_client, data: bytes, **policy: Any) -> tuple[int, dict]:
    client = await start(aiohttp_client, make_config({**FACES, **policy}))
    return await post_media(client, data)


def refused_as_face(status: int, body: dict) -> bool:
    """Refused for the face: by the model, or by the own bank that learned it from an earlier copy (the bank
    matches the PDQ of the decoded picture, so the decoder found it there too)."""
    return status == 406 and body["decided_by"] in ("model", "bank") and body["labels"] == ["portrait"]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
async def test_one_face_frame_in_200_is_found(aiohttp_client, fmt: str) -> None:
    """The old decoder judged 8 evenly sampled frames (0, 28, 57, 85, 114, ...): frame 100 was never seen."""
    clean = [CLEAN[i % len(CLEAN)] for i in range(200)]
    client = await start(aiohttp_client, make_config(FACES))
    status, body = await post_media(client, animation(fmt, clean[:100] + [FACE] + clean[101:]))
    assert refused_as_face(status, body), body
    assert body["frames"] == len(CLEAN) + 1  # every distinct frame, each once
    status, body = await post_media(client, animation(fmt, clean))
    assert status == 200 and body["decided_by"] == "model" and body["frames"] == len(CLEAN), body


async def test_an_animation_past_max_total_frames_is_invalid_never_sampled(aiohttp_client) -> None:
    status, body = await judge(aiohttp_client, animation("GIF", list(CLEAN) * 40), limits={"max_total_frames": 150})
    assert status == 406 and body["decided_by"] == "invalid" and body["error_kind"] == "too_many_frames"


async def test_one_face_second_in_a_ten_second_video_is_found(aiohttp_client) -> None:
    """40 frames at 4 fps, the face in second 6 (frames 24-27): 8 evenly sampled frames skip 22 to 28."""
    clean = [CLEAN[(i // 4) % len(CLEAN)] for i in range(40)]  # a new clean photo every second
    client = await start(aiohttp_client, make_config(FACES))
    status, body = await post_media(client, video([clean[:24] + [FACE] * 4 + clean[28:]]))
    assert refused_as_face(status, body), body
    status, body = await post_media(client, video([clean]))
    assert status == 200 and body["decided_by"] == "model", body


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
async def test_a_face_in_the_second_video_stream_is_found(aiohttp_client, fmt: str) -> None:
    """The old decoder read streams[0] only."""
    status, body = await judge(aiohttp_client, video([["coffee"] * 8, [FACE] * 8], fmt))
    assert refused_as_face(status, body), body


def _alpha_matte(ink: int, alpha_of_face: str, mode: str = "RGBA") -> bytes:
    lum = np.asarray(photo_image(FACE).convert("L"))
    alpha = 255 - lum if alpha_of_face == "inverted" else lum
    if mode == "LA":
        return png(Image.merge("LA", [Image.new("L", (lum.shape[1], lum.shape[0]), ink), Image.fromarray(alpha)]))
    rgb = np.full((*lum.shape, 3), ink, np.uint8)
    return png(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))


@pytest.mark.parametrize(
    ("ink", "alpha", "mode", "where"),
    [(0, "inverted", "RGBA", "light"), (255, "plain", "RGBA", "dark"), (0, "inverted", "LA", "light")],
)
async def test_a_face_drawn_by_the_alpha_channel_is_found(aiohttp_client, ink: int, alpha: str, mode: str, where: str) -> None:
    """Flat ink whose transparency draws the face: it shows on one page background only. The old decoder
    dropped the alpha channel and judged a flat black or white square."""
    status, body = await judge(aiohttp_client, _alpha_matte(ink, alpha, mode))
    assert refused_as_face(status, body), body
    assert body["frames"] == 2  # the picture on light and on dark


async def test_a_16_bit_png_face_is_found(aiohttp_client) -> None:
    """The old decoder clipped 16-bit grey (mode I;16) to 8 bits: a white square."""
    lum = np.asarray(photo_image(FACE).convert("L")).astype(np.uint16) * 257
    data = png(Image.fromarray(lum))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    status, body = await judge(aiohttp_client, data)
    assert refused_as_face(status, body), body


def strip(names: list[str], height: int = 300, width: int = 4000) -> bytes:
    canvas, x = Image.new("RGB", (width, height), "white"), 0
    while x < width:
        for name in names:
            img = photo_image(name)
            img = img.resize((round(img.width * height / img.height), height))
            canvas.paste(img, (x, 0))
            x += img.width
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def grid(names: list[str], cell: int = 512) -> bytes:
    canvas = Image.new("RGB", (4 * cell, 4 * cell))
    for i, name in enumerate(names):
        canvas.paste(photo_image(name).resize((cell, cell)), ((i % 4) * cell, (i // 4) * cell))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


GRID_CLEAN = ["coffee", "rocket", "chelsea", "china", "flower", "horse", "logo", "moon", "brick", "coins",
              "clock", "colorwheel", "page", "grass", "gravel", "cell"]


@pytest.mark.parametrize(
    ("build", "flagged", "clean"),
    [
        # 4000x300: the whole view is 448x34 and NudeNet scores the face 0.0; a 448x300 tile scores 0.84
        ("strip", ["coffee", "rocket", "chelsea", FACE, "china", "flower", "horse", "logo"],
         ["coffee", "rocket", "chelsea", "china", "flower", "horse", "logo"]),
        # 4x4 cells of 512 px: the whole view scores the face cell 0.27-0.31 (under 0.5); a tile is a cell, 0.83
        ("grid", GRID_CLEAN[:5] + [FACE] + GRID_CLEAN[5:15], GRID_CLEAN),
    ],
    ids=["strip", "grid"],
)
async def test_a_face_shrunk_by_a_strip_or_a_grid_is_found_in_a_tile(
    aiohttp_client, build: str, flagged: list[str], clean: list[str]
) -> None:
    make = strip if build == "strip" else grid
    client = await start(aiohttp_client, make_config(FACES))
    status, body = await post_media(client, make(flagged))
    assert refused_as_face(status, body), body
    assert body["frames"] > 1  # the whole view and its tiles
    status, body = await post_media(client, make(clean))
    assert status == 200 and body["decided_by"] == "model", body


@pytest.mark.parametrize(("fmt", "mime"), [("HEIF", "image/heic"), ("AVIF", "image/avif"), ("JXL", "image/jxl")])
async def test_heic_avif_and_jpeg_xl_are_judged(aiohttp_client, fmt: str, mime: str) -> None:
    """iPhone photos are HEIC, which Pillow reads only with pillow-heif's opener registered (the old
    decoder relied on scikit-image registering it in tests); the old sniffer did not know JPEG XL at all
    ('unsupported'). AVIF was already read by Pillow 13: a guard."""
    client = await start(aiohttp_client, make_config(FACES))
    status, body = await post_media(client, photo(FACE, fmt))
    assert refused_as_face(status, body) and body["mime"] == mime, body
    status, body = await post_media(client, photo("coffee", fmt))
    assert status == 200 and body["decided_by"] == "model" and body["mime"] == mime, body


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def svg(*body: str, size: tuple[int, int] = (400, 300)) -> bytes:
    return (
        f'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{size[0]}" height="{size[1]}">{"".join(body)}</svg>'
    ).encode()


FACE_IMAGE = f'<image href="{data_uri(photo(FACE))}" width="300" height="300"/>'
VECTOR = '<rect x="20" y="20" width="200" height="100" fill="teal"/><circle cx="300" cy="200" r="60" fill="orange"/>'


@pytest.mark.parametrize(
    "image",
    [
        FACE_IMAGE,
        # hidden from the rasterised picture: the embedded image is still judged on its own
        f'<image xlink:href="{data_uri(photo(FACE))}" width="300" height="300" opacity="0"/>',
        # an SVG inside the SVG, the face inside that
        f'<image href="{data_uri(svg(FACE_IMAGE), "image/svg+xml")}" width="400" height="300"/>',
    ],
    ids=["visible", "transparent", "nested-svg"],
)
async def test_a_face_embedded_in_an_svg_is_found_even_when_unsupported_media_is_accepted(aiohttp_client, image: str) -> None:
    """The old sniffer did not know SVG: 'unsupported', which on_unsupported: accept waved through."""
    client = await start(aiohttp_client, make_config({**FACES, "on_unsupported": "accept"}))
    for data in (svg(VECTOR, image), gzip.compress(svg(VECTOR, image))):
        status, body = await post_media(client, data)
        assert refused_as_face(status, body) and body["mime"] == "image/svg+xml", body


async def test_svg_that_cannot_be_judged_is_invalid_never_unsupported(aiohttp_client) -> None:
    client = await start(aiohttp_client, make_config({**FACES, "on_unsupported": "accept"}))
    external = svg(VECTOR, '<image href="https://example.invalid/face.jpg" width="300" height="300"/>')
    css = svg(VECTOR, '<style>rect { fill: url("file:///etc/face.png"); }</style>')
    undecodable = svg(VECTOR, f'<image href="{data_uri(b"%PDF-1.7 not an image", "image/png")}" width="9" height="9"/>')
    bomb = (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b'<svg xmlns="http://www.w3.org/2000/svg"><text>&b;</text></svg>')
    for data, kind in ((external, "external"), (css, "external"), (undecodable, "corrupt"), (bomb, "corrupt")):
        status, body = await post_media(client, data)
        assert status == 406 and body["decided_by"] == "invalid" and body["error_kind"] == kind, body


async def test_a_plain_vector_svg_is_rasterised_and_judged(aiohttp_client) -> None:
    status, body = await judge(aiohttp_client, svg(VECTOR, '<a href="https://example.org/"><text x="9" y="9">x</text></a>'))
    assert status == 200 and body["decided_by"] == "model" and body["mime"] == "image/svg+xml", body
    assert body["frames"] == 2  # transparent background: on light and on dark
