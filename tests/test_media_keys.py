"""Transparency as a browser applies it (found by attackers' reviews): a PNG colour key at every bit depth,
and the tRNS of a PNG inside an icon, draw what a viewer sees; a face drawn that way must be found. The
flagged content is the benign stand-in: a human face (NudeNet's FACE_FEMALE / FACE_MALE, FACES policy).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.support.configs import FACES, make_config
from tests.support.photos import photo_image
from tests.support.servers import Client
from tests.support.servers import post_media as _post_media
from tests.support.servers import start

FACE = "astronaut"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(rows: np.ndarray, color_type: int, bit_depth: int, trns: bytes | None) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): ``rows`` is (height, width[, channels])."""
    h, w = rows.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\0" + rows[y].astype(dtype).tobytes() for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _dithered_face(size: int = 1024) -> np.ndarray:
    """True where the face photo is dark: a Floyd-Steinberg dither, black on white, of the stand-in (large
    enough that shrinking it to the model's input greys the dots back into a photo)."""
    grey = photo_image(FACE).convert("L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(grey.convert("1")) == 0


def _on_white(dark: np.ndarray) -> bytes:
    """What a viewer shows on a light page: the dark pixels black, the keyed ones the page's white."""
    img = Image.fromarray(np.where(dark, 0, 255).astype(np.uint8)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _face_drawn_by_a_16_bit_rgb_key() -> bytes:
    """48-bit RGB: the key is 16-bit black (0x0000); the face's dark pixels are 0x00FF, 1/257 above it.
    Every viewer (libpng compares all 16 bits) draws the key transparent and 0x00FF black: a black on
    white face on a light page. Pillow keeps the high byte of each sample (0 for both) and compares the
    key's LOW byte with it (``r & 0xff`` in convert_transparent): every pixel goes transparent."""
    dark = _dithered_face()
    rows = np.where(dark[..., None], 0x00FF, 0x0000).repeat(3, axis=2)
    return _png(rows, 2, 16, struct.pack(">HHH", 0, 0, 0))


async def _judge(aiohttp_client: Client, *bodies: bytes) -> list[tuple[int, dict]]:
    """Each body judged by a server of its own (a refusal teaches the own bank, which would judge the next)."""
    out = []
    for body in bodies:
        client = await start(aiohttp_client, make_config(FACES))
        out.append(await _post_media(client, io.BytesIO(body)))
    return out


def _refused_as_face(status: int, body: dict) -> bool:
    return status == 406 and body["decided_by"] in ("model", "bank") and body["labels"] == ["portrait"]


async def test_a_face_drawn_by_a_16_bit_rgb_colour_key_is_found(aiohttp_client: Client) -> None:
    """Found: _normalise hands a 48-bit PNG's key (16-bit samples) to Pillow's convert('RGBA'), which
    matches the key's low byte against 8-bit pixels: the pixels a viewer shows opaque are judged transparent,
    the picture they draw is judged a flat square on light and on dark, and accepted."""
    shown, crafted = await _judge(aiohttp_client, _on_white(_dithered_face()), _face_drawn_by_a_16_bit_rgb_key())
    assert _refused_as_face(*shown), shown  # what a viewer sees is flagged
    assert _refused_as_face(*crafted), crafted


def _ico(png: bytes, side: int = 256) -> bytes:
    """An icon holding one PNG entry, as browsers draw it (a PNG entry is decoded as a PNG, tRNS and all)."""
    entry = struct.pack("<BBBBHHII", side % 256, side % 256, 0, 0, 1, 8, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def _ink_matte(side: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Black ink whose opacity draws the face (dark where the photo is dark): 256 palette entries, all black,
    entry i of opacity i; and the same as RGBA."""
    lum = np.asarray(photo_image(FACE).convert("L").resize((side, side), Image.Resampling.BICUBIC))
    alpha = (255 - lum).astype(np.uint8)
    rgba = np.dstack([np.zeros((side, side, 3), np.uint8), alpha])
    return alpha, rgba


def _palette_png_with_trns(indices: np.ndarray) -> bytes:
    img = Image.fromarray(indices, "P")
    img.putpalette([0, 0, 0] * 256)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=bytes(range(256)))  # tRNS: entry i has alpha i
    return buf.getvalue()


async def test_a_face_drawn_by_the_trns_of_a_png_inside_an_icon_is_found(aiohttp_client: Client) -> None:
    """Found: Pillow's ICO plugin loads a PNG entry's pixels but not its info, so ``transparency`` (the tRNS
    chunk: a palette's alphas, an RGB or grey colour key) never reaches _normalise: the colour-key handling
    of this commit, and the palette handling before it, are skipped for image/x-icon. A palette PNG whose
    entries are all black and whose tRNS gives the face is judged a black square; browsers draw the PNG
    entry with its tRNS (a face on the page)."""
    alpha, rgba = _ink_matte()
    plain = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(plain, "PNG")
    icon = _ico(_palette_png_with_trns(alpha))
    loaded = Image.open(io.BytesIO(icon))
    loaded.load()
    assert loaded.format == "ICO" and loaded.mode == "P" and "transparency" not in loaded.info  # the fault
    shown, crafted = await _judge(aiohttp_client, plain.getvalue(), icon)
    assert _refused_as_face(*shown), shown  # the same picture as a PNG is flagged
    assert _refused_as_face(*crafted), crafted


async def test_a_face_drawn_by_a_4_bit_grey_colour_key_is_found(aiohttp_client: Client) -> None:
    """Found: Pillow reads a 1-, 2- or 4-bit grey PNG scaled to 8 bits (4-bit sample s is 17 s) but keeps
    the tRNS key unscaled (1), so no pixel matches it and _normalise judges the image opaque; libpng (and so
    every browser) scales the key as it scales the samples. The face in 16 greys, its highlights (samples
    10 and up, a third of the picture) made the key: a viewer shows them as the page's white, the proxy as
    the key's own 17/255, nearly black, and the face is gone."""
    lum = np.asarray(photo_image(FACE).convert("L").resize((512, 512), Image.Resampling.BICUBIC)).astype(int)
    level = np.clip(np.round(lum / 17), 0, 15)
    keyed = level >= 10
    samples = np.where(keyed, 1, np.where(level == 1, 2, level)).astype(np.uint8)  # sample 1 is the key's only
    shown = np.where(keyed, 255, samples * 17).astype(np.uint8)
    h, w = samples.shape
    rows = samples[:, 0::2] << 4 | samples[:, 1::2]
    raw = b"".join(b"\0" + rows[y].tobytes() for y in range(h))
    crafted = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 4, 0, 0, 0, 0))
               + _chunk(b"tRNS", struct.pack(">H", 1)) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    img = Image.open(io.BytesIO(crafted))
    assert img.mode == "L" and img.info["transparency"] == 1 and 17 in np.asarray(img)  # the key, unscaled
    plain = io.BytesIO()
    Image.fromarray(shown).save(plain, "PNG")
    on_light, judged = await _judge(aiohttp_client, plain.getvalue(), crafted)
    assert _refused_as_face(*on_light), on_light  # what a viewer shows on a light page is flagged
    assert _refused_as_face(*judged), judged


def _bmp_entry(rgb: np.ndarray) -> bytes:
    """A 24-bit bitmap icon entry: BITMAPINFOHEADER (height doubled for the AND mask), rows bottom-up in BGR,
    then an all-opaque AND mask."""
    h, w = rgb.shape[:2]
    row = (w * 3 + 3) // 4 * 4
    pixels = b"".join(rgb[y, :, ::-1].tobytes().ljust(row, b"\0") for y in range(h - 1, -1, -1))
    mask_row = ((w + 31) // 32) * 4
    header = struct.pack("<IiiHHIIiiII", 40, w, 2 * h, 1, 24, 0, len(pixels), 0, 0, 0, 0)
    return header + pixels + b"\0" * mask_row * h


def _icon(entries: list[tuple[int, bytes]]) -> bytes:
    """An icon of (side, picture) entries, in the order given."""
    offset = 6 + 16 * len(entries)
    head, body = struct.pack("<HHH", 0, 1, len(entries)), b""
    for side, blob in entries:
        head += struct.pack("<BBBBHHII", side % 256, side % 256, 0, 0, 1, 24, len(blob), offset + len(body))
        body += blob
    return head + body


async def test_every_picture_of_an_icon_is_judged(aiohttp_client: Client) -> None:
    """A browser shows whichever picture of an icon fits: a face in the smaller bitmap entry, beside a larger
    clean one (the one Pillow alone would load), is found; an icon of clean pictures passes."""
    face = np.asarray(photo_image(FACE).convert("RGB").resize((128, 128)))
    clean = np.asarray(photo_image("coffee").convert("RGB").resize((256, 256)))
    both = _icon([(256, _bmp_entry(clean)), (128, _bmp_entry(face))])
    only_clean = _icon([(256, _bmp_entry(clean)), (128, _bmp_entry(np.asarray(photo_image("rocket").convert("RGB").resize((128, 128)))))])
    (flagged, verdict), (passed, clean_verdict) = await _judge(aiohttp_client, both, only_clean)
    assert _refused_as_face(flagged, verdict), verdict
    assert passed == 200 and clean_verdict["frames"] == 2, clean_verdict


def test_an_icon_bitmap_claiming_a_huge_size_is_refused_before_it_is_read() -> None:
    from proxy.config import MediaLimits
    from proxy.media import MediaError, decode

    header = struct.pack("<IiiHHIIiiII", 40, 100_000, 200_000, 1, 24, 0, 0, 0, 0, 0, 0)
    try:
        decode(_icon([(16, header + b"\0" * 64)]), MediaLimits())
    except MediaError as exc:
        assert exc.kind == "too_many_pixels", exc
    else:
        raise AssertionError("a bitmap claiming 100,000 x 100,000 pixels was decoded")
