"""Transparency as a browser applies it (found by attackers' reviews): a PNG colour key at every bit depth,
and the tRNS of a PNG inside an icon, draw what a viewer sees; a face drawn that way must be found. The
flagged content is the benign stand-in: a human face (NudeNet's FACE_FEMALE / FACE_MALE, FACES policy).
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from proxy.config import MediaLimits
from proxy.media import decode
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
    # each bitmap entry, masked (as Pillow reads it) and unmasked (what any reading of its mask can show)
    assert passed == 200 and clean_verdict["frames"] == 4, clean_verdict


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


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 8
    while i < len(png):
        n = struct.unpack(">I", png[i:i + 4])[0]
        out.append((png[i + 4:i + 8], png[i + 8:i + 8 + n]))
        i += 12 + n
    return out


def _refused_as_corrupt(status: int, body: dict) -> bool:
    """Refused as a file no viewer reads as Pillow does (on_invalid: reject)."""
    return status == 406 and body["decided_by"] == "invalid" and body.get("error_kind") == "corrupt"


def _flat(data: bytes) -> bool:
    """Every view the proxy judges is one flat colour (nothing to see)."""
    return all(float(np.asarray(f).std()) == 0.0 for f in decode(data, MediaLimits()).frames)


# --- a tRNS chunk that libpng (Firefox, ImageMagick, OpenCV) ignores, which Pillow applies (third review) -----

def _grey_face_palette_png() -> bytes:
    """The face in 256 greys as a palette PNG: entry i is grey i, no tRNS (opaque)."""
    grey = np.asarray(photo_image(FACE).convert("L").resize((512, 512), Image.Resampling.BICUBIC))
    img = Image.fromarray(grey, "P")
    img.putpalette([v for i in range(256) for v in (i, i, i)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _with_a_trns_libpng_ignores(png: bytes, where: str) -> bytes:
    """``png`` plus a tRNS chunk giving every palette entry alpha 0, where libpng ignores it ("out of place",
    "duplicate"): after IDAT; before PLTE; or as a second tRNS after a first, all-opaque one."""
    out = b"\x89PNG\r\n\x1a\n"
    clear = _chunk(b"tRNS", b"\0" * 256)
    for kind, data in _chunks(png):
        if kind == b"PLTE" and where == "before PLTE":
            out += clear
        if kind == b"IEND" and where == "after IDAT":
            out += clear
        out += _chunk(kind, data)
        if kind == b"PLTE" and where == "duplicate":
            out += _chunk(b"tRNS", b"\xff" * 256) + clear
    return out


@pytest.mark.parametrize("where", ["after IDAT", "before PLTE", "duplicate"])
async def test_a_trns_chunk_libpng_ignores_does_not_hide_a_face(aiohttp_client: Client, where: str) -> None:
    """Found by a third review: libpng takes one tRNS only, after PLTE and before IDAT (a late one is "out of place", a second
    one a "duplicate", one before PLTE is out of place too: all ignored, with a warning), so libpng's users
    (Firefox, ImageMagick, OpenCV: checked here) draw this palette PNG opaque: a grey face. Pillow applies
    whichever tRNS it read last, anywhere in the file (a late one through load_end, after
    ``_png_colour_key`` looked), so the proxy judges every pixel transparent: a white square on light, a black
    one on dark, and accepts. The same holds for a grey or RGB key (Pillow's raw key, unscaled and unmasked,
    comes back for the pixels the commit's scaling fixed). Such a file is refused as corrupt now."""
    plain = _grey_face_palette_png()
    crafted = _with_a_trns_libpng_ignores(plain, where)
    shown = cv2.imdecode(np.frombuffer(crafted, np.uint8), cv2.IMREAD_UNCHANGED)  # libpng, as a browser reads it
    assert shown is not None
    assert shown.shape[2] == 3 or int(shown[..., 3].min()) == 255, "libpng draws it opaque"
    assert np.array_equal(shown[..., :3], cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR))
    on_page, judged = await _judge(aiohttp_client, plain, crafted)
    assert _refused_as_face(*on_page), on_page  # what libpng shows is flagged
    assert _refused_as_face(*judged) or _refused_as_corrupt(*judged), (judged[0], judged[1]["action"],
                                                                        judged[1]["decided_by"])


async def test_a_late_copy_of_a_4_bit_grey_key_does_not_undo_its_scaling(aiohttp_client: Client) -> None:
    """Found by a third review: the same root, against the 2/4-bit key scaling. test_media_keys' 4-bit grey face (its highlights
    drawn by the key, tRNS 1 before IDAT) with the same tRNS chunk repeated after IDAT: libpng ignores the
    copy ("out of place") and keys sample 1 scaled (17), as before; Pillow's load_end reads the copy and sets
    ``transparency`` back to the raw 1 after ``_png_colour_key`` scaled it to 17, so no pixel is keyed and the
    proxy judges the highlights as the key's own 17/255, nearly black: the face is gone again."""
    lum = np.asarray(photo_image(FACE).convert("L").resize((512, 512), Image.Resampling.BICUBIC)).astype(int)
    level = np.clip(np.round(lum / 17), 0, 15)
    keyed = level >= 10
    samples = np.where(keyed, 1, np.where(level == 1, 2, level)).astype(np.uint8)
    shown = np.where(keyed, 255, samples * 17).astype(np.uint8)
    h, w = samples.shape
    rows = samples[:, 0::2] << 4 | samples[:, 1::2]
    raw = b"".join(b"\0" + rows[y].tobytes() for y in range(h))
    key = _chunk(b"tRNS", struct.pack(">H", 1))
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 4, 0, 0, 0, 0)) + key
    fixed = head + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")  # what test_media_keys judges
    crafted = head + _chunk(b"IDAT", zlib.compress(raw)) + key + _chunk(b"IEND", b"")
    plain = io.BytesIO()
    Image.fromarray(shown).save(plain, "PNG")
    on_light, before, judged = await _judge(aiohttp_client, plain.getvalue(), fixed, crafted)
    assert _refused_as_face(*on_light), on_light  # what a viewer shows on a light page is flagged
    assert _refused_as_face(*before), before  # the commit's fix, without the late copy
    assert _refused_as_face(*judged) or _refused_as_corrupt(*judged), (judged[0], judged[1]["decided_by"])


# --- icon bitmaps: Pillow's AND mask and alpha are not the ones browsers apply (third review) ---------------

def _mask_row(width: int) -> int:
    return (width + 31) // 32 * 4


def _bitmap(rgb: np.ndarray, bpp: int = 24, alpha: int = 0) -> bytes:
    """A bitmap icon entry as browsers read it: BITMAPINFOHEADER (height doubled), rows bottom-up in BGR(A),
    then, immediately after, an all-zero (all-opaque) AND mask."""
    h, w = rgb.shape[:2]
    if bpp == 32:
        rows = [np.concatenate([rgb[y, :, ::-1], np.full((w, 1), alpha, np.uint8)], axis=1).tobytes()
                for y in range(h - 1, -1, -1)]
    else:
        stride = (w * 3 + 3) // 4 * 4
        rows = [rgb[y, :, ::-1].tobytes().ljust(stride, b"\0") for y in range(h - 1, -1, -1)]
    pixels = b"".join(rows)
    header = struct.pack("<IiiHHIIiiII", 40, w, 2 * h, 1, bpp, 0, len(pixels), 0, 0, 0, 0)
    return header + pixels + b"\0" * _mask_row(w) * h


def _single_icon(blob: bytes, side: int, bpp: int) -> bytes:
    entry = struct.pack("<BBBBHHII", side % 256, side % 256, 0, 0, 1, bpp, len(blob), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + blob


def _face_rgb(side: int = 256) -> np.ndarray:
    return np.asarray(photo_image(FACE).convert("RGB").resize((side, side), Image.Resampling.BICUBIC))


async def test_an_icon_bitmaps_and_mask_is_read_where_browsers_read_it(aiohttp_client: Client) -> None:
    """Found by a third review: Chromium's BMPImageReader and Firefox's nsICODecoder read a bitmap entry's AND mask immediately
    after its pixels (Chromium: "ICOs store a 1bpp mask immediately after the main bitmap image data"; the
    directory's byte count is not used to place it). Pillow's IcoFile.frame, which _decode_icon hands every
    bitmap entry to, reads it from the END of the entry as the directory sizes it (offset + size - mask
    bytes). An entry whose directory size runs past its real AND mask (all opaque) into bytes of 0xFF is
    drawn opaque, a face, by browsers; the proxy judged it fully transparent (flat on light and on dark). Now
    every masked bitmap is also judged unmasked."""
    face = _face_rgb()
    real = _bitmap(face)
    honest = _single_icon(real, 256, 24)
    crafted = _single_icon(real + b"\xff" * _mask_row(256) * 256, 256, 24)  # the directory counts the trailing bytes
    on_page, judged = await _judge(aiohttp_client, honest, crafted)
    assert _refused_as_face(*on_page), on_page  # the same bitmap, its mask where browsers read it
    assert _refused_as_face(*judged), (judged[0], judged[1]["action"], judged[1]["decided_by"],
                                        "every view judged is flat" if _flat(crafted) else "")


async def test_a_32_bit_icon_bitmap_with_no_alpha_is_judged_opaque(aiohttp_client: Client) -> None:
    """Found by a third review: a 32-bit bitmap entry whose alpha bytes are all 0 is drawn opaque by Chromium (BMPImageReader:
    "decode as if images are fully opaque until we actually see a non-zero alpha value", then the AND mask
    applies) and by Windows; Pillow's IcoFile.frame takes the alpha bytes as they are whenever the
    DIRECTORY says 32 bpp (the bitmap's own bit count is not looked at), so the proxy judges the face fully
    transparent and accepts it."""
    crafted = _single_icon(_bitmap(_face_rgb(), bpp=32, alpha=0), 256, 32)
    (judged,) = await _judge(aiohttp_client, crafted)
    assert _refused_as_face(*judged), (judged[0], judged[1]["action"], judged[1]["decided_by"],
                                        "every view judged is flat" if _flat(crafted) else "")


def _top_half_face() -> tuple[np.ndarray, np.ndarray]:
    """A 256 x 256 picture, the face in its top half (white around it), the rocket (clean) in its bottom half;
    and the AND mask a viewer applies: the top half opaque, the bottom half transparent."""
    picture = np.full((256, 256, 3), 255, np.uint8)
    picture[:128, 64:192] = _face_rgb(128)
    picture[128:] = np.asarray(photo_image("rocket").convert("RGB").resize((256, 128)))
    transparent = np.zeros((256, 256), bool)
    transparent[128:] = True
    return picture, transparent


def _bmp_with_mask(rgb: np.ndarray, transparent: np.ndarray, top_down: bool) -> bytes:
    """A 24-bit bitmap entry and its AND mask (1 = transparent), rows top-down (negative height) or bottom-up."""
    h, w = rgb.shape[:2]
    order = range(h) if top_down else range(h - 1, -1, -1)
    stride = (w * 3 + 3) // 4 * 4
    pixels = b"".join(rgb[y, :, ::-1].tobytes().ljust(stride, b"\0") for y in order)
    mask = b"".join(np.packbits(transparent[y]).tobytes().ljust(_mask_row(w), b"\0") for y in order)
    header = struct.pack("<IiiHHIIiiII", 40, w, -2 * h if top_down else 2 * h, 1, 24, 0, len(pixels), 0, 0, 0, 0)
    return header + pixels + mask


async def test_a_top_down_icon_bitmaps_and_mask_is_not_flipped(aiohttp_client: Client) -> None:
    """Found by a third review: a bitmap entry may be stored top-down (negative height; Chromium's BMPImageReader: "Only Windows
    V3+ has ICOs and top-down bitmaps", and it starts the AND mask at the top row for them). Pillow reads
    the pixels top-down but its IcoFile.frame always reads the AND mask bottom-up ("1;I", stride, -1): the
    mask is flipped. A face in the top half, the bottom half masked out, is what Chromium draws; the proxy
    judges the top half transparent and the clean bottom half opaque, and accepts."""
    picture, transparent = _top_half_face()
    bottom_up = _single_icon(_bmp_with_mask(picture, transparent, top_down=False), 256, 24)
    top_down = _single_icon(_bmp_with_mask(picture, transparent, top_down=True), 256, 24)
    on_page, judged = await _judge(aiohttp_client, bottom_up, top_down)
    assert _refused_as_face(*on_page), on_page  # the same picture and mask, stored bottom-up
    assert _refused_as_face(*judged), (judged[0], judged[1]["action"], judged[1]["decided_by"])


async def test_a_cursor_is_judged_as_the_icon_it_is(aiohttp_client: Client) -> None:
    """A .cur file is an icon with hotspots (type 2), and browsers draw it in an <img>: it is judged as an
    icon, never left to on_unsupported. An uncompressed TGA, which starts with the same four bytes, is not
    taken for one."""
    from proxy.media import sniff

    face = np.asarray(photo_image(FACE).convert("RGB").resize((128, 128)))
    icon = _icon([(128, _bmp_entry(face))])
    cursor = icon[:2] + b"\x02\x00" + icon[4:]
    assert sniff(cursor) == "image/x-icon"
    tga = b"\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x00\x80\x00\x18\x20" + b"\x00" * 128 * 128 * 3
    assert sniff(tga) is None
    ((status, verdict),) = await _judge(aiohttp_client, cursor)
    assert _refused_as_face(status, verdict), verdict
