"""Colour management (found by an attacker's review): browsers show a tagged picture through its embedded ICC
profile, which can move every sample anywhere; the proxy judges it as shown, and its raw samples too when
they differ materially. The flagged content is the benign stand-in: a human face (FACES policy).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageCms

from proxy.config import MediaLimits
from proxy.media import decode
from tests.support.photos import photo_image
from tests.support.servers import Client
from tests.test_media_keys import _judge, _refused_as_face

FACE = "astronaut"


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _stretch_profile(lo: int, hi: int) -> bytes:
    """An ICC v2 RGB display profile with sRGB's (D50-adapted) primaries and white point whose tone curves
    make stored samples lo..hi span black to white (sRGB-encoded), everything below lo black: a colour-managed
    viewer (Chromium's skcms, Firefox's qcms, littleCMS) shows stored ``lo + (hi - lo) * v / 255`` as ``v``."""
    shown = np.clip((np.arange(256) - lo) / (hi - lo), 0.0, 1.0)
    linear = np.where(shown <= 0.04045, shown / 12.92, ((shown + 0.055) / 1.055) ** 2.4)
    curv = b"curv\0\0\0\0" + struct.pack(">I", 256) + np.round(linear * 65535).astype(">u2").tobytes()
    text = b"stretch\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 79
    tags = [(b"desc", desc), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", _xyz(0.4360747, 0.2225045, 0.0139322)), (b"gXYZ", _xyz(0.3850649, 0.7168786, 0.0971045)),
            (b"bXYZ", _xyz(0.1430804, 0.0606169, 0.7141733)), (b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv)]
    start = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", start + len(body), len(data))
        body += data
    header = (struct.pack(">I", start + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acspAPPL" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)).ljust(128, b"\0")
    return header + table + body


def _as_a_browser_shows_it(data: bytes) -> bytes:
    """The file colour-managed to sRGB with its embedded profile (what Chromium and Firefox draw), as a PNG."""
    src = Image.open(io.BytesIO(data))
    profile = ImageCms.ImageCmsProfile(io.BytesIO(src.info["icc_profile"]))
    shown = ImageCms.profileToProfile(src, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    assert shown is not None
    out = io.BytesIO()
    shown.save(out, "PNG")
    return out.getvalue()


def _face_in_a_narrow_range(fmt: str, lo: int = 240, hi: int = 255) -> bytes:
    face = np.asarray(photo_image(FACE).convert("RGB")).astype(np.float64)
    stored = np.round(lo + face / 255.0 * (hi - lo)).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(stored).save(out, fmt, icc_profile=_stretch_profile(lo, hi), **({} if fmt == "PNG" else {"quality": 100}))
    return out.getvalue()


async def test_a_face_stretched_to_full_contrast_by_an_icc_profile_is_found(aiohttp_client: Client) -> None:
    """Found by an attacker's review: the proxy judged a picture's stored samples and ignored its embedded ICC profile (PNG iCCP,
    JPEG APP2, WebP ICCP); browsers colour-manage tagged images (Chromium always, Firefox's default mode 2
    for every tagged image). A profile whose tone curves map samples 240..255 to black..white turns a
    near-white, washed-out square (all the proxy judges) into the full-contrast face every viewer shows."""
    crafted = _face_in_a_narrow_range("PNG")
    assert np.asarray(Image.open(io.BytesIO(crafted)).convert("RGB")).min() >= 240  # stored: a nearly white square
    shown = _as_a_browser_shows_it(crafted)
    assert np.asarray(Image.open(io.BytesIO(shown))).min() < 10  # a viewer shows full contrast
    decoded = decode(crafted, MediaLimits())
    assert decoded.views == ["image", "image (raw samples, its colour profile ignored)"], decoded.views
    assert np.asarray(decoded.frames[0]).min() < 10  # judged as shown
    on_screen, accepted = await _judge(aiohttp_client, shown, crafted)
    assert _refused_as_face(*on_screen), on_screen  # what a viewer shows is flagged
    assert _refused_as_face(*accepted), accepted


async def test_a_face_stretched_by_an_icc_profile_in_a_jpeg_is_found(aiohttp_client: Client) -> None:
    """The same with the profile in a JPEG's APP2 ICC_PROFILE segments (the commonest tagged format)."""
    crafted = _face_in_a_narrow_range("JPEG")
    on_screen, accepted = await _judge(aiohttp_client, _as_a_browser_shows_it(crafted), crafted)
    assert _refused_as_face(*on_screen), on_screen
    assert _refused_as_face(*accepted), accepted


def test_a_picture_tagged_srgb_or_an_unfitting_profile_is_judged_once() -> None:
    """The cost stays where it was for ordinary tagged photos: a profile that barely moves the picture gives
    one view; a profile of another colour space than the picture (viewers ignore it) changes nothing."""
    from PIL import ImageCms

    photo = photo_image("coffee").convert("RGB")
    for profile in (ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")):
        out = io.BytesIO()
        photo.save(out, "PNG", icc_profile=ImageCms.ImageCmsProfile(profile).tobytes())
        decoded = decode(out.getvalue(), MediaLimits())
        assert decoded.views == ["image"], decoded.views
        assert np.abs(np.asarray(decoded.frames[0], np.int16)
                      - np.asarray(decode(photo_png(photo), MediaLimits()).frames[0], np.int16)).mean() < 2


def photo_png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_a_profile_that_cannot_be_applied_is_refused_as_corrupt() -> None:
    from proxy.media import MediaError

    out = io.BytesIO()
    photo_image("coffee").convert("RGB").save(out, "PNG", icc_profile=_stretch_profile(240, 255)[:100] + b"\0" * 60)
    try:
        decode(out.getvalue(), MediaLimits())
    except MediaError as exc:
        assert exc.kind == "corrupt" and "ICC" in str(exc), exc
    else:
        raise AssertionError("a picture whose profile cannot be read was judged as its raw samples")



def test_a_colour_key_survives_colour_management() -> None:
    """Transparency is applied before the profile and kept: a keyed half of a tagged picture is still judged
    as the page showing through it (on light and on dark), in the managed view and in the raw one."""
    stored = np.asarray(photo_image(FACE).convert("RGB")).astype(np.float64)
    stored = np.round(240 + stored / 255.0 * 15).astype(np.uint8) | 1  # odd: no pixel has the even key
    stored[:, : stored.shape[1] // 2] = (2, 4, 6)
    out = io.BytesIO()
    Image.fromarray(stored).save(out, "PNG", transparency=(2, 4, 6), icc_profile=_stretch_profile(240, 255))
    decoded = decode(out.getvalue(), MediaLimits())
    assert decoded.views == ["image on light", "image on dark", "image (raw samples, its colour profile ignored) on light",
                             "image (raw samples, its colour profile ignored) on dark"], decoded.views
    light, dark = (np.asarray(f).astype(int) for f in decoded.frames[:2])
    left = slice(0, light.shape[1] // 2 - 2)
    assert light[:, left].min() >= 250 and dark[:, left].max() <= 5
    assert np.asarray(decoded.frames[0])[:, light.shape[1] // 2 + 2:].min() < 40  # the managed half: full contrast


def _png_with_gamma(stored: np.ndarray, gamma: float) -> bytes:
    """An RGB PNG with a gAMA chunk (Pillow cannot write one) and no iCCP or sRGB chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = stored.shape[:2]
    raw = b"".join(b"\0" + stored[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"gAMA", struct.pack(">I", round(gamma * 100000))) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


async def test_a_face_washed_out_under_a_png_gamma_is_found(aiohttp_client: Client) -> None:
    """A PNG's gAMA (without iCCP or sRGB) is applied by browsers: samples stored as light ** 0.05 look
    near-white raw and show the full-contrast face. Judged as shown (and raw); sRGB's own gamma changes
    nothing and gives one view."""
    face = np.asarray(photo_image(FACE).convert("RGB")).astype(np.float64) / 255
    light = np.where(face <= 0.04045, face / 12.92, ((face + 0.055) / 1.055) ** 2.4)
    crafted = _png_with_gamma(np.round(255 * light ** 0.05).astype(np.uint8), 0.05)
    assert np.asarray(Image.open(io.BytesIO(crafted))).mean() > 200  # stored: washed out
    decoded = decode(crafted, MediaLimits())
    assert decoded.views == ["image", "image (raw samples, its gamma ignored)"], decoded.views
    ((status, verdict),) = await _judge(aiohttp_client, crafted)
    assert _refused_as_face(status, verdict), verdict
    plain = np.asarray(photo_image("coffee").convert("RGB"))
    decoded = decode(_png_with_gamma(plain, 1 / 2.2), MediaLimits())
    assert decoded.views == ["image"] and np.array_equal(np.asarray(decoded.frames[0]),
                                                         np.asarray(decode(photo_png(Image.fromarray(plain)), MediaLimits()).frames[0]))
