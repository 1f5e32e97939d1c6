"""Sniffing and bounded decoding of untrusted media into the views a model judges.

The type comes from the bytes, never from a Content-Type. Decoding is bounded before any pixel is
allocated (byte size, pixel count from the header, frame count) and by a deadline checked inside every
loop. Media hides flagged content in many ways, so :func:`decode` judges what a viewer can see, all of it:

- animations (GIF, WebP, APNG, AVIF sequences, multi-page TIFF): every distinct composited frame; near
  duplicates are dropped by comparing tiny thumbnails; more than ``max_total_frames`` frames is refused;
- videos and audio cover art: every video stream, see :func:`_decode_video` for the sampling;
- transparency: an image with any non-opaque pixel is judged composited on white AND on black;
- high bit depth, CMYK, palettes and EXIF orientation are normalised to what a viewer shows;
- scale: a strip or a large image is also judged as model-size tiles, so small content is not shrunk away;
- SVG: rasterised (resvg) AND every embedded raster image judged on its own; an SVG that refers to
  anything outside itself cannot be judged (``external``).

Every view is a frame of :attr:`Decoded.frames`; the pipeline scores each and the worst decides. Frames
are produced at about the models' input size (JPEG decodes straight to it), which keeps memory per frame
small. Past any bound the media is invalid (:class:`MediaError`), never accepted unjudged.
These functions block: run them in an executor, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import math
import re
import struct
import time
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from .config import MediaLimits
from .hashing import PdqHash
from .verdict import InvalidKind

import pillow_heif  # HEIC/HEIF (iPhone photos); AVIF is Pillow's own
import pillow_jxl  # noqa: F401  (registers JPEG XL with Pillow)

pillow_heif.register_heif_opener()
cv2.setNumThreads(1)  # our decode and preprocess pools are the parallelism; OpenCV's own threads would oversubscribe

# Our per-policy pixel limit, checked from the header before decoding, replaces Pillow's global
# decompression-bomb check (whose warning would be the only signal below 2x its limit).
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_INPUT_SIZE = 448
"""The long side of a judged frame when the caller does not say which size its models need."""
FAST_FIT_MIN_SCALE = 0.75
"""Shrinking by this much or less, bilinear without antialiasing loses no more of a thin line than Pillow's
antialiased bilinear (a 1-px line keeps >= 94/255 against Pillow's 107 at 0.75; 56 against 81 at 0.64)."""
THUMB = 32
"""Side of the thumbnails that find duplicate frames and scene changes."""
DUPLICATE_MAX_DIFF = 10
"""Two frames are the same when no thumbnail pixel differs by more than this (0-255). The max, not the
mean: a flagged region of 1/1000 of the frame moves the max but vanishes in a mean."""
VIDEO_DUPLICATE_MAX_DIFF = 32
"""The same for video frames, whose lossy coding moves thumbnail pixels of a still scene by up to ~28."""
SCENE_MEAN_DIFF = 24.0
"""A video frame whose thumbnail differs from the previous frame's by this on average starts a scene."""
VIDEO_HEAD_S = 120.0
"""Videos: one frame per second (plus scene changes) for this long, then evenly spaced frames."""
SVG_MAX_DEPTH = 3
ZIP_TYPE = "application/zip"
"""SVG in SVG in SVG: deeper nesting is refused."""


class MediaError(Exception):
    """Media we refuse to judge: ``kind`` says why (:class:`InvalidKind`); the message is safe to show to a client.

    ``unsupported`` (no media we know) maps to the policy's ``on_unsupported``; every other kind to
    ``on_invalid``. ``external``: an SVG that loads something from outside itself, which we cannot judge.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = InvalidKind(kind)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (PNG_MAGIC, 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"\x00\x00\x01\x00", 0, "image/x-icon"),
    (b"\xff\x0a", 0, "image/jxl"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", 0, "image/jxl"),
)
_FTYP_IMAGE = {
    b"avif": "image/avif", b"avis": "image/avif",
    b"heic": "image/heic", b"heix": "image/heic", b"hevc": "image/heic", b"hevx": "image/heic",
    b"heim": "image/heic", b"heis": "image/heic", b"hevm": "image/heic", b"hevs": "image/heic",
    b"mif1": "image/heif", b"msf1": "image/heif",
}
_PIL_FORMATS = {
    "image/jpeg": ["JPEG"], "image/png": ["PNG"], "image/gif": ["GIF"], "image/bmp": ["BMP"],
    "image/tiff": ["TIFF"], "image/x-icon": ["ICO"], "image/webp": ["WEBP"], "image/jxl": ["JXL"],
    "image/avif": ["AVIF"], "image/heic": ["HEIF"], "image/heif": ["HEIF", "AVIF"],
}
VIDEO_TYPES = frozenset({"video/mp4", "video/quicktime", "video/webm"})
AUDIO_TYPES = frozenset({"audio/mpeg", "audio/ogg", "audio/flac", "audio/wav", "audio/mp4"})
"""Audio goes through FFmpeg too: cover art (ID3 APIC, FLAC PICTURE, MP4 covr) is a video stream there,
and backends store it as the file's thumbnail."""
SVG_TYPE = "image/svg+xml"

# what may precede an SVG's root element: BOM, whitespace, XML declaration, comments, PIs, a doctype
_XML_PROLOG = re.compile(rb"\A(?:\xef\xbb\xbf)?(?:\s+|<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)*", re.S)
_SVG_ROOT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?svg[\s>/]")


def _is_svg(head: bytes) -> bool:
    prolog = _XML_PROLOG.match(head)
    return bool(_SVG_ROOT.match(head, prolog.end() if prolog else 0))


def _svg_past_the_window(data: bytes, window: int = 8192) -> bool:
    """An XML prolog (white space, comments, processing instructions, a DOCTYPE) that runs past the first
    ``window`` bytes hides where the root is: look for an SVG root in the whole file (a linear search),
    as is-svg (Misskey) and librsvg read it."""
    head = data[:window]
    prolog = _XML_PROLOG.match(head)
    rest = head[prolog.end() if prolog else 0:]
    unfinished = not rest.strip() or rest.lstrip().startswith((b"<!--", b"<?", b"<!DOCTYPE", b"<!doctype"))
    return len(data) > window and unfinished and _SVG_ROOT.search(data) is not None


_DIB_HEADERS = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
"""BITMAPINFOHEADER sizes: a file that starts with ``BM`` is a bitmap only if one follows (a text file
starting "BMW" is not)."""


def _is_bmp(data: bytes) -> bool:
    return data[:2] == b"BM" and len(data) >= 18 and int.from_bytes(data[14:18], "little") in _DIB_HEADERS


def _is_mp3_frame(data: bytes) -> bool:
    """An MPEG audio frame header: sync, a real version, layer II or III (layer I files do not exist in
    practice, and its bits are a UTF-16 byte-order mark's), a valid bitrate and sample rate."""
    if len(data) < 3 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version, layer = (data[1] >> 3) & 3, (data[1] >> 1) & 3
    bitrate, rate = data[2] >> 4, (data[2] >> 2) & 3
    return version != 1 and layer in (1, 2) and bitrate not in (0, 15) and rate != 3


def _ftyp_image(data: bytes) -> str | None:
    major = bytes(data[8:12])
    box = int.from_bytes(data[:4], "big")
    compatible = [data[i : i + 4] for i in range(16, min(box, 64, len(data)) - 3, 4)]
    if major in (b"mif1", b"msf1") and any(b in (b"avif", b"avis") for b in compatible):
        return "image/avif"
    if major in _FTYP_IMAGE:
        return _FTYP_IMAGE[major]
    return None


def _is_cursor(data: bytes) -> bool:
    """A .cur file (00 00 02 00, then its picture count and directory): told from an uncompressed TGA, which
    starts the same way, by a count of at least one and the first picture right after the directory."""
    if data[:4] != b"\x00\x00\x02\x00" or len(data) < 22:
        return False
    count = int.from_bytes(data[4:6], "little")
    return count >= 1 and int.from_bytes(data[18:22], "little") == 6 + 16 * count


def sniff(data: bytes) -> str | None:
    """The media type from magic bytes, or None when the bytes are no media we know."""
    for magic, offset, mime in _IMAGE_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data[4:8] == b"ftyp":
        image = _ftyp_image(data)
        if image:
            return image
        brand = data[8:12]
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") and _is_svg(data[:8192].decode("utf-16", "ignore").encode()):
        return SVG_TYPE  # before MP3: its frame sync matches a UTF-16 byte-order mark
    if _is_cursor(data):
        return ICO_TYPE  # a cursor: an icon with hotspots, drawn by browsers as one
    if _is_bmp(data):
        return "image/bmp"
    if data[:3] == b"ID3" or _is_mp3_frame(data):
        return "audio/mpeg"
    if data[:4] == b"PK\x03\x04":
        return ZIP_TYPE
    if data[:4] == b"OggS":
        return "audio/ogg"
    if data[:4] == b"fLaC":
        return "audio/flac"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm"
    if data[:1] in (b"<", b"\xef", b" ", b"\t", b"\r", b"\n") and (_is_svg(data[:8192]) or _svg_past_the_window(data)):
        return SVG_TYPE
    if data[:2] == b"\x1f\x8b":  # svgz: look at the start of the inflated text only
        try:
            head = zlib.decompressobj(wbits=31).decompress(data[:8192], 8192)
        except zlib.error:
            return None
        if _is_svg(head):
            return SVG_TYPE
    return None


@dataclass
class Decoded:
    mime: str
    width: int
    height: int
    total_frames: int
    """Frames in the source: animation frames, or video frames decoded (all streams)."""
    frames: list[Image.Image]
    """The views judged, RGB, long side at most the input size: distinct frames, their tiles, their light
    and dark composites, embedded images. The worst one decides."""
    views: list[str] = field(default_factory=list)
    """What each frame is, for logs and tests: ``frame 3``, ``frame 3 tile 2/9``, ``... on light``,
    ``stream 1 at 12.0s``, ``svg image 1: ...``."""
    pdq: tuple[PdqHash, ...] = ()
    """PDQ hashes of the whole views (set by the pipeline's decode worker: :func:`proxy.hashing.pdq_frames`)."""


class _Collector:
    """The judged views of one file: bounded in number (``max_judged_frames``) and free of duplicates."""

    def __init__(self, limits: MediaLimits, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline
        self.frames: list[Image.Image] = []
        self.views: list[str] = []
        self._thumbs: dict[str, np.ndarray] = {}

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise MediaError("timeout", "decoding took too long")

    def is_duplicate(self, thumb: np.ndarray, max_diff: int = DUPLICATE_MAX_DIFF, where: str = "") -> bool:
        """True when a view with this thumbnail was kept already at ``where`` (the whole frame, or one
        tile's box); else remember it. The last one kept is compared first: repeats are mostly adjacent."""
        flat = thumb.reshape(1, -1)
        kept = self._thumbs.get(where)
        if kept is not None:
            if int(np.abs(kept[-1:] - flat).max()) <= max_diff:
                return True
            if int(np.abs(kept - flat).max(axis=1).min()) <= max_diff:
                return True
            self._thumbs[where] = np.concatenate([kept, flat])
        else:
            self._thumbs[where] = flat
        return False

    def add(self, views: list[tuple[Image.Image, str]]) -> None:
        if len(self.frames) + len(views) > self.limits.max_judged_frames:
            raise MediaError(
                "too_many_frames", f"more than {self.limits.max_judged_frames} distinct views to judge"
            )
        for img, name in views:
            self.frames.append(img)
            self.views.append(name)


def _thumb(img: Image.Image) -> np.ndarray:
    small = img.convert("RGBA").resize((THUMB, THUMB), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(small, dtype=np.int16)


def _normalise(img: Image.Image) -> Image.Image:
    """RGB, or RGBA when some pixel is not opaque: what a viewer's screen shows, 8 bits a channel."""
    mode = img.mode
    # a colour key (PNG tRNS on a grey, RGB or palette image): pixels of that value are fully transparent
    key = img.info.get("transparency")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raw = np.asarray(img)
        arr = raw.astype(np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # a viewer shows the high byte: content in the low byte is invisible
        elif mode == "F" and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        elif arr.size and float(arr.max()) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if isinstance(key, int) and mode != "F" and bool((raw == key).any()):  # 16-bit keys: Pillow drops them
            alpha = Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8))
            img = Image.merge("LA", (img, alpha)).convert("RGBA")
    elif key is not None and mode in ("P", "1", "L", "RGB") or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA" and img.getchannel("A").getextrema() != (255, 255):
        return img
    return img.convert("RGB")


def _fit(img: Image.Image, size: int) -> Image.Image:
    """At most ``size`` on the long side. An opaque picture shrunk by no more than FAST_FIT_MIN_SCALE (most
    tiles: 512 px for a 448-px input) goes through OpenCV's SIMD bilinear, ~10x faster than Pillow's here;
    a one-pixel line keeps at least 3/8 of its contrast, as with Pillow. Deeper shrinks, and pictures with
    transparency (which Pillow premultiplies, so colours under alpha 0 cannot bleed in), stay with Pillow's
    antialiased filter."""
    w, h = img.size
    if max(w, h) <= size:
        return img
    scale = size / max(w, h)
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale >= FAST_FIT_MIN_SCALE and img.mode == "RGB":
        return Image.fromarray(cv2.resize(np.asarray(img), target, interpolation=cv2.INTER_LINEAR))
    return img.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)


def tile_plan(width: int, height: int, size: int, max_tiles: int) -> list[tuple[int, int, int, int]]:
    """Boxes of square tiles (clipped to the image) that cover it, or [] when the whole view suffices.

    Tiles are used when the long side is over twice the short side (a strip) or over 4x the model input
    (a large image or a grid), where content the whole view shrinks below what a model sees hides.
    The tile side is the smallest that covers the image with at most ``max_tiles`` tiles, never below the
    input size; tiles overlap where the sides do not divide evenly.
    """
    long, short = max(width, height), min(width, height)
    if long <= 2 * short and long <= 4 * size:
        return []
    best = long
    for n in range(1, max_tiles + 1):
        for side in (math.ceil(width / n), math.ceil(height / n)):
            if side > 0 and math.ceil(width / side) * math.ceil(height / side) <= max_tiles:
                best = min(best, side)
    side = max(best, size)
    if side >= long:
        return []

    def starts(length: int) -> list[int]:
        span = min(side, length)
        n = math.ceil(length / span)
        return [0] if n == 1 else [round(i * (length - span) / (n - 1)) for i in range(n)]

    return [(x, y, min(x + side, width), min(y + side, height)) for y in starts(height) for x in starts(width)]


def _views(
    img: Image.Image, name: str, size: int, limits: MediaLimits, c: _Collector, *, animated: bool = False
) -> list[tuple[Image.Image, str]]:
    """The whole picture at model size, its tiles when needed, each on light and dark when transparent.
    In an animation a tile that repeats one kept from an earlier frame (same box) is not judged again."""
    img = _normalise(img)
    boxes = tile_plan(img.width, img.height, size, limits.max_tiles)
    out: list[tuple[Image.Image, str]] = []
    for i, box in enumerate([None, *boxes]):
        c.check_deadline()
        if box is None:
            part, part_name = img, name
        else:
            part, part_name = img.crop(box), f"{name} tile {i}/{len(boxes)}"
            if animated and c.is_duplicate(_thumb(part), where=str(box)):
                continue
        part = _fit(part, size)
        if part.mode != "RGBA":
            out.append((part, part_name))
            continue
        for bg_name, bg in (("light", (255, 255, 255)), ("dark", (0, 0, 0))):
            base = Image.new("RGB", part.size, bg)
            base.paste(part, mask=part.getchannel("A"))
            out.append((base, f"{part_name} on {bg_name}"))
    return out


def _check_pixels(width: int, height: int, limits: MediaLimits) -> None:
    if width <= 0 or height <= 0:
        raise MediaError("corrupt", f"invalid dimensions {width}x{height}")
    if width * height > limits.max_pixels:
        raise MediaError(
            "too_many_pixels", f"{width}x{height} is over the limit of {limits.max_pixels} pixels (decompression bomb?)"
        )


MATERIAL_DIFF = 12.0
"""Mean difference (0-255) between a picture as its ICC profile or gamma shows it and its raw samples past
which the raw samples are judged too (a viewer that manages no colour shows those)."""


@functools.lru_cache(maxsize=64)
def _icc_transform(profile: bytes, space: str, mode: str) -> Any:
    """littleCMS's transform from an embedded profile to sRGB for pictures of ``mode`` (RGB, RGBA, L or
    CMYK), when the profile's colour space is ``space``; None when it is another one (viewers then ignore
    the profile). Raises ``PyCMSError`` (or OSError) for a profile littleCMS cannot read."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    if source.profile.xcolor_space.strip() != space:
        return None
    return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGBA" if mode == "RGBA" else "RGB")


def _gamma_lut(gamma: float) -> list[int]:
    """A PNG gAMA (no iCCP or sRGB chunk) as a browser applies it: a sample ``s`` is light ``s ** (1/gamma)``,
    shown sRGB-encoded."""
    out = []
    for v in range(256):
        light = (v / 255) ** (1 / gamma)
        encoded = 12.92 * light if light <= 0.0031308 else 1.055 * light ** (1 / 2.4) - 0.055
        out.append(min(255, max(0, round(encoded * 255))))
    return out


def _as_shown(frame: Image.Image, profile: bytes | None, size: int, limits: MediaLimits,
              gamma: float | None = None) -> list[tuple[Image.Image, str]]:
    """The picture as a colour-managed viewer (every browser) shows it: converted to sRGB through its
    embedded ICC profile, which can move every sample anywhere (a profile that stretches samples 240..255
    to black..white shows a face the raw samples hide), or through a PNG's gAMA when it has no profile. The
    raw samples are judged too when they look materially different. A profile littleCMS cannot apply is
    refused: the picture cannot be judged as shown. Transparency (alpha, colour keys) is applied first and
    kept."""
    apply: Callable[[Image.Image], Image.Image]
    into = None
    try:
        if profile:
            what = "colour profile"
            if frame.mode == "CMYK":
                source, space, into = frame, "CMYK", "CMYK"
            else:
                source = _normalise(frame)  # RGB or RGBA, keys applied, 8 bits
                grey = frame.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
                space, into = ("GRAY", "L") if grey else ("RGB", source.mode)
            transform = _icc_transform(bytes(profile), space, into)
            if transform is None:
                return [(frame, "")]

            def apply(img: Image.Image) -> Image.Image:
                out = ImageCms.applyTransform(img.convert("L") if into == "L" else img, transform)
                assert out is not None
                if into == "L" and img.mode == "RGBA":  # a grey profile: the alpha goes around it
                    out = out.convert("RGBA")
                    out.putalpha(img.getchannel("A"))
                return out
        elif gamma and 0.01 <= float(gamma) <= 100 and abs(float(gamma) - 1 / 2.2) >= 0.005 and frame.mode != "CMYK":
            what = "gamma"  # (none, sRGB's own, or one libpng and browsers refuse: the raw samples are shown)
            source = _normalise(frame)
            table = _gamma_lut(float(gamma)) * 3 + (list(range(256)) if source.mode == "RGBA" else [])

            def apply(img: Image.Image) -> Image.Image:
                return img.point(table)
        else:
            return [(frame, "")]
        if source.mode != "CMYK" and not tile_plan(source.width, source.height, size, limits.max_tiles):
            source = _fit(source, size)  # judged as one view: managed at the size it is judged (4x cheaper)
        shown = apply(source)
        thumb = source.resize((64, 64), Image.Resampling.BOX)
        thumb_shown = apply(thumb)
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        kind = "an ICC colour profile" if profile else "a PNG gamma"
        raise MediaError("corrupt", f"{kind} that cannot be applied: {exc}") from None
    # compared with the alpha when it went through the transform, without it when it went around one
    mode = "RGBA" if thumb_shown.mode == "RGBA" and into != "L" else "RGB"
    diff = np.abs(np.asarray(thumb_shown.convert(mode), np.int16) - np.asarray(thumb.convert(mode), np.int16)).mean()
    if float(diff) > MATERIAL_DIFF:
        return [(shown, ""), (source if source.mode != "CMYK" else frame, f" (raw samples, its {what} ignored)")]
    return [(shown, "")]


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
"""EXIF orientation -> the transpose that shows the picture upright (what ``ImageOps.exif_transpose`` does)."""


def _check_png_chunks(data: bytes) -> None:
    """Refuse a tRNS chunk that libpng (browsers) ignores and Pillow applies: a second one, one after the
    image data (Pillow reads it while loading and takes the last), one before a palette. Benign encoders
    write none of these; judging such a file as Pillow reads it would judge a picture no viewer shows."""
    pos, seen_palette, seen_data, seen_trns = 8, False, False, False
    colour = data[25] if len(data) > 25 else -1
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"tRNS":
            if seen_trns or seen_data or (colour == 3 and not seen_palette):
                raise MediaError("corrupt", "png: a transparency chunk out of place (viewers ignore it, Pillow does not)")
            seen_trns = True
        elif kind == b"PLTE":
            seen_palette = True
        elif kind in (b"IDAT", b"fdAT"):
            seen_data = True
        elif kind == b"IEND":
            return
        pos += 12 + length


def _png_colour_key(data: bytes, img: Image.Image, frames: int) -> np.ndarray | None:
    """A PNG colour key (tRNS on a grey or RGB image) as libpng, and so browsers, apply it. Pillow scales
    2- and 4-bit grey samples to 8 bits but not the key, and compares a 16-bit RGB key with the 8-bit
    samples it keeps: here the key is masked to the bit depth and scaled as the samples are (in
    ``img.info``), and a 16-bit RGB key becomes a mask of the keyed pixels read at 16 bits by OpenCV's
    libpng (returned; ``transparency`` dropped from ``img.info``)."""
    key = img.info.get("transparency")
    if key is None or len(data) < 26 or data[12:16] != b"IHDR":
        return None
    depth, colour = data[24], data[25]
    if colour == 0 and depth < 16 and isinstance(key, int):
        top = (1 << depth) - 1
        img.info["transparency"] = (key & top) * (255 // top)
    elif colour == 2 and depth == 8 and isinstance(key, tuple):
        img.info["transparency"] = tuple(v & 0xFF for v in key)
    elif colour == 2 and depth == 16:
        if frames > 1:
            raise MediaError("corrupt", "png: a 16-bit RGB animation with a colour key cannot be judged as shown")
        read = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if read is None or read.ndim != 3 or read.shape[2] != 4 or read.shape[:2] != (img.height, img.width):
            raise MediaError("corrupt", "png: a 16-bit colour key that cannot be read")
        del img.info["transparency"]
        mask: np.ndarray = read[..., 3] == 0
        return mask
    return None


def _decode_image(data: bytes, mime: str, limits: MediaLimits, size: int, c: _Collector) -> Decoded:
    try:
        img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS.get(mime))
    except UnidentifiedImageError:
        raise MediaError("corrupt", f"bytes look like {mime} but cannot be read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError("corrupt", f"{mime}: {exc}") from None
    with img:
        width, height = img.size
        _check_pixels(width, height, limits)
        total = getattr(img, "n_frames", 1)
        if total > limits.max_total_frames:
            raise MediaError("too_many_frames", f"{total} frames is over the limit of {limits.max_total_frames}")
        if img.format == "JPEG":
            # decode straight to the scale the views need: 2x the input for the whole view, enough for the
            # tiles to be input-sized when there are tiles
            boxes = tile_plan(width, height, size, limits.max_tiles)
            tile = max((max(b[2] - b[0], b[3] - b[1]) for b in boxes), default=max(width, height))
            scale = min(1.0, max(2 * size / max(width, height), size / tile))
            img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        key_mask, gamma = None, None
        if img.format == "PNG":
            _check_png_chunks(data)
            key_mask = _png_colour_key(data, img, total)
            gamma = img.info.get("gamma") if "srgb" not in img.info else None
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block is no reason to refuse; the pixels are what we judge
            orientation = 1
        try:
            for index in range(total):
                c.check_deadline()
                if index:
                    img.seek(index)
                img.load()
                frame: Image.Image = img
                if key_mask is not None:  # one frame: the colour key read at 16 bits
                    frame = img.convert("RGBA")
                    frame.putalpha(Image.fromarray(np.where(key_mask, np.uint8(0), np.uint8(255))))
                    if orientation in _TRANSPOSE:
                        frame = frame.transpose(_TRANSPOSE[orientation])
                elif orientation != 1:
                    frame = ImageOps.exif_transpose(img)
                if total > 1 and c.is_duplicate(_thumb(frame)):
                    continue
                name = f"frame {index}" if total > 1 else "image"
                for shown, how in _as_shown(frame, img.info.get("icc_profile"), size, limits, gamma):
                    c.add(_views(shown, name + how, size, limits, c, animated=total > 1))
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise MediaError("corrupt", f"{mime}: {exc}") from None
    return Decoded(mime, width, height, total, c.frames, c.views)


class _StreamSampler:
    """Which frames of one video stream are judged, in one pass, with bounded memory."""

    def __init__(self, index: int, budget: int) -> None:
        self.index = index
        self.budget = budget
        self.last_second = -1
        self.prev: np.ndarray | None = None
        self.head: list[tuple[Image.Image, str]] = []
        self.tail: list[tuple[Image.Image, str]] = []
        self.stride = 1
        self.candidates = 0

    def wants(self, t: float, thumb: np.ndarray) -> bool:
        scene = self.prev is not None and float(np.abs(thumb - self.prev).mean()) > SCENE_MEAN_DIFF
        self.prev = thumb
        second = int(t)
        new_second = second > self.last_second
        self.last_second = max(self.last_second, second)
        return new_second or scene

    def keep(self, t: float, view: tuple[Image.Image, str]) -> None:
        if t < VIDEO_HEAD_S and len(self.head) < self.budget // 2:
            self.head.append(view)
            return
        # after the head: keep every stride-th candidate, doubling the stride whenever the budget fills,
        # so the kept frames stay evenly spread over the rest of the stream
        self.candidates += 1
        if (self.candidates - 1) % self.stride:
            return
        self.tail.append(view)
        if len(self.head) + len(self.tail) > self.budget:
            self.tail, self.stride = self.tail[::2], self.stride * 2


def _decode_video(data: bytes, mime: str, limits: MediaLimits, size: int, c: _Collector) -> Decoded:
    """Every video stream (cover art included), in one pass, at most ``max_video_frames`` frames each:

    - the first 120 s: one frame per second and every scene change, up to half the budget;
    - the rest: the same candidates, thinned evenly by a stride that doubles whenever the budget fills,
      so a 10-minute video is judged about every 4-8 s after its first two minutes;
    - a frame that repeats one already kept (tiny thumbnails) is dropped, in any stream.

    A long video is decoded in full, so it is judged only as far as ``decode_timeout_ms`` allows: past
    that it is refused (``timeout``, the policy's on_invalid), never accepted unjudged. All streams
    together keep at most ``max_judged_frames``; more is ``too_many_frames``.
    """
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError("corrupt", f"{mime}: {exc}") from None
    with container:
        streams = list(container.streams.video)
        if not streams:
            if mime in AUDIO_TYPES:
                return Decoded(mime, 0, 0, 0, [])  # audio without cover art: nothing to look at
            raise MediaError("unsupported", f"{mime} has no video stream")
        for stream in streams:
            _check_pixels(stream.codec_context.width, stream.codec_context.height, limits)
            stream.thread_type = "AUTO"
        samplers = {s.index: _StreamSampler(n, limits.max_video_frames) for n, s in enumerate(streams)}
        counts = {s.index: 0 for s in streams}
        try:
            for packet in container.demux(*streams):
                sampler = samplers[packet.stream.index]
                for frame in packet.decode():
                    c.check_deadline()
                    if not isinstance(frame, av.VideoFrame):
                        continue
                    _check_pixels(frame.width, frame.height, limits)  # a stream may change size mid-way
                    n = counts[packet.stream.index]
                    counts[packet.stream.index] = n + 1
                    t = frame.time if frame.time is not None else float(n)
                    thumb = frame.to_ndarray(width=THUMB, height=THUMB, format="rgba").astype(np.int16)
                    if not sampler.wants(t, thumb) or c.is_duplicate(thumb, VIDEO_DUPLICATE_MAX_DIFF):
                        continue
                    w, h = frame.width, frame.height
                    scale = min(1.0, size / max(w, h))
                    img = frame.to_image(width=max(1, round(w * scale)), height=max(1, round(h * scale)))
                    for view in _views(img, f"stream {sampler.index} at {t:.1f}s", size, limits, c):
                        sampler.keep(t, view)
                    if sum(len(s.head) + len(s.tail) for s in samplers.values()) > limits.max_judged_frames:
                        raise MediaError("too_many_frames", f"more than {limits.max_judged_frames} frames to judge")
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError("corrupt", f"{mime}: {exc}") from None
        for sampler in samplers.values():
            c.add(sampler.head + sampler.tail)
        if not c.frames:
            raise MediaError("corrupt", f"{mime}: no decodable frame")
        first = streams[0].codec_context
        return Decoded(mime, first.width, first.height, sum(counts.values()), c.frames, c.views)


_RESOURCE_ATTRS = frozenset({"href", "src", "poster", "data", "srcset", "background"})
_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)|@import\s+(['"])(.*?)\3""", re.I | re.S)


def _data_uri(uri: str) -> tuple[str, bytes]:
    """(declared type, bytes) of a data: URI."""
    head, sep, payload = uri[5:].partition(",")
    if not sep:
        raise MediaError("corrupt", "svg: malformed data: URI")
    params = [p.strip().lower() for p in head.split(";")]
    if "base64" in params:
        try:
            body = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("corrupt", "svg: bad base64 in a data: URI") from None
    else:
        body = urllib.parse.unquote_to_bytes(payload)
    return params[0], body


def _svg_refs(root: Any) -> tuple[list[str], list[str]]:
    """(data: URIs, external references) anywhere an SVG (or HTML in a foreignObject) loads a resource."""
    data: list[str] = []
    external: list[str] = []

    def ref(value: str) -> None:
        value = value.strip()
        if not value or value.startswith("#"):
            return
        (data if value[:5].lower() == "data:" else external).append(value)

    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""
        for key, value in el.attrib.items():
            local = key.rsplit("}", 1)[-1].lower()
            if local == "href" and tag == "a":
                continue  # a hyperlink: followed on a click, never loaded to draw the picture
            if local == "srcset":
                for candidate in value.split(","):
                    ref(candidate.strip().split(" ")[0])
            elif local in _RESOURCE_ATTRS:
                ref(value)
            if local == "style" or "url(" in value:
                for m in _CSS_URL.finditer(value):
                    ref(m.group(2) or m.group(4) or "")
        if tag == "style" and el.text:
            for m in _CSS_URL.finditer(el.text):
                ref(m.group(2) or m.group(4) or "")
    return data, external


def _svg_size(root: Any) -> tuple[float, float]:
    def number(v: str | None) -> float | None:
        m = re.match(r"\s*([0-9.]+)\s*(px)?\s*$", v or "")
        return float(m.group(1)) if m else None

    w, h = number(root.get("width")), number(root.get("height"))
    if not (w and h):
        box = (root.get("viewBox") or "").replace(",", " ").split()
        try:
            w, h = float(box[2]), float(box[3])
        except (IndexError, ValueError):
            w, h = 300.0, 150.0  # the CSS default size of a replaced element
    return max(w or 1.0, 1.0), max(h or 1.0, 1.0)


def _decode_svg(data: bytes, limits: MediaLimits, size: int, c: _Collector, depth: int) -> Decoded:
    """Rasterise the SVG and judge it, and judge every image embedded in it (as ``data:`` URIs, nested
    SVG included) on its own, since the picture can hide them (clipped, transparent, tiny). An SVG that
    loads anything from outside itself (http(s), file paths, relative URLs) cannot be judged: ``external``.
    Never ``unsupported`` when it embeds anything, so ``on_unsupported: accept`` cannot wave it through.
    """
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    if depth > SVG_MAX_DEPTH:
        raise MediaError("corrupt", "svg: nested too deeply")
    if data[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=31)
        try:
            data = inflater.decompress(data, limits.max_bytes + 1)
        except zlib.error as exc:
            raise MediaError("corrupt", f"svgz: {exc}") from None
        if len(data) > limits.max_bytes or inflater.unconsumed_tail:
            raise MediaError("too_large", f"svgz inflates past {limits.max_bytes} bytes")
    try:  # entities (billion laughs) and external DTDs refused; a plain DOCTYPE line is common and fine
        root = DET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, SyntaxError, ValueError) as exc:
        raise MediaError("corrupt", f"svg: {exc}") from None
    c.check_deadline()
    embedded, external = _svg_refs(root)
    if external:
        raise MediaError("external", f"svg loads {len(external)} resource(s) from outside itself, e.g. {external[0][:80]!r}")
    width, height = _svg_size(root)
    for i, uri in enumerate(embedded):
        declared, body = _data_uri(uri)
        if sniff(body) is None:
            if declared.startswith("image/"):
                raise MediaError("corrupt", f"svg embeds an image we cannot decode ({declared})")
            continue  # a font or a stylesheet: no picture
        try:
            inner = _decode(body, limits, size, c.deadline, depth + 1)
        except MediaError as exc:
            kind = "corrupt" if exc.kind in ("unsupported", "empty") else exc.kind
            raise MediaError(kind, f"svg image {i + 1}: {exc}") from None
        c.add([(f, f"svg image {i + 1}: {v}") for f, v in zip(inner.frames, inner.views, strict=True)])
    try:
        import resvg_py
    except ImportError:  # pragma: no cover - a dependency
        if not c.frames:
            raise MediaError("unsupported", "no SVG rasteriser installed") from None
        return Decoded(SVG_TYPE, round(width), round(height), 1, c.frames, c.views)
    c.check_deadline()
    # big enough for tiles of a strip or a large drawing, never more than 4x the input size
    target = min(max(width, height, size), 4 * size)
    wide = width >= height
    try:
        png = resvg_py.svg_to_bytes(
            svg_string=data.decode("utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8", "replace"),
            skip_system_fonts=True,
            width=round(target) if wide else None, height=None if wide else round(target),
        )
        with Image.open(io.BytesIO(bytes(png)), formats=["PNG"]) as raster:
            raster.load()
            c.add(_views(raster, "svg", size, limits, c))
    except Exception as exc:  # resvg raises its own errors for SVG it cannot draw
        raise MediaError("corrupt", f"svg: cannot render: {exc}") from None
    return Decoded(SVG_TYPE, round(width), round(height), 1, c.frames, c.views)


def _decode(data: bytes, limits: MediaLimits, size: int, deadline: float, depth: int = 0) -> Decoded:
    if not data:
        raise MediaError("empty", "empty body")
    if len(data) > limits.max_bytes:
        raise MediaError("too_large", f"{len(data)} bytes is over the limit of {limits.max_bytes}")
    mime = sniff(data)
    if mime is None:
        raise MediaError("unsupported", "not an image or video this proxy can decode")
    c = _Collector(limits, deadline)
    if mime in VIDEO_TYPES or mime in AUDIO_TYPES:
        return _decode_video(data, mime, limits, size, c)
    if mime == SVG_TYPE:
        return _decode_svg(data, limits, size, c, depth)
    if mime == ZIP_TYPE:
        return _decode_zip(data, limits, size, c, depth)
    if mime == ICO_TYPE:
        return _decode_icon(data, limits, size, c, depth)
    return _decode_image(data, mime, limits, size, c)


MAX_ZIP_ENTRIES = 1000


ICO_TYPE = "image/x-icon"


def _decode_icon(data: bytes, limits: MediaLimits, size: int, c: _Collector, depth: int) -> Decoded:
    """Every picture of an icon, since a browser picks whichever size fits: a PNG entry decoded as the PNG
    it is (Pillow's icon reader drops its tRNS, the transparency a browser applies), a bitmap entry by
    Pillow (with its AND mask), each checked against the pixel limit from its own header first."""
    from PIL import IcoImagePlugin

    if len(data) < 6:
        raise MediaError("corrupt", "icon: no header")
    count = int.from_bytes(data[4:6], "little")
    if count > limits.max_total_frames:
        raise MediaError("too_many_frames", f"icon with {count} pictures, over {limits.max_total_frames}")
    entries = []
    for i in range(count):
        entry = data[6 + 16 * i:22 + 16 * i]
        if len(entry) < 16:
            raise MediaError("corrupt", "icon: directory cut short")
        length, offset = int.from_bytes(entry[8:12], "little"), int.from_bytes(entry[12:16], "little")
        if length < 8 or offset + length > len(data):
            raise MediaError("corrupt", f"icon: picture {i} lies outside the file")
        entries.append((offset, length))
    if not entries:
        raise MediaError("corrupt", "icon: no pictures")
    width = height = 0
    try:
        icon = IcoImagePlugin.IcoFile(io.BytesIO(data[:2] + b"\x01\x00" + data[4:]))  # a cursor read as an icon
        for i, (offset, length) in enumerate(entries):
            c.check_deadline()
            blob = data[offset:offset + length]
            if blob.startswith(PNG_MAGIC):
                inner = _decode(blob, limits, size, c.deadline, depth + 1)
                views = list(zip(inner.frames, inner.views, strict=True))
                w, h = inner.width, inner.height
            else:  # BITMAPINFOHEADER: width, then twice the height (the picture and its AND mask)
                if len(blob) < 12:
                    raise MediaError("corrupt", f"icon: picture {i} has no bitmap header")
                w = abs(int.from_bytes(blob[4:8], "little", signed=True))
                h = abs(int.from_bytes(blob[8:12], "little", signed=True)) // 2
                _check_pixels(w, h, limits)
                # Pillow sorts its entries by size: find this one by where its picture lies
                picture = icon.frame(next(k for k, e in enumerate(icon.entry) if e.offset == offset))
                picture.load()
                views = _views(picture, "image", size, limits, c)
                if picture.mode == "RGBA":
                    # browsers place and orient the AND mask, and read a 32-bit entry's alpha, unlike Pillow
                    # (where the mask starts, top-down bitmaps, all-zero alpha drawn opaque): the pixels are
                    # also judged with nothing masked, which shows whatever any of them can show
                    views += _views(picture.convert("RGB"), "image, unmasked", size, limits, c)
            width, height = max(width, w), max(height, h)
            c.add([(f, f"icon picture {i}: {n}") for f, n in views])
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise MediaError("corrupt", f"icon: {exc}") from None
    return Decoded(ICO_TYPE, width, height, len(entries), c.frames, c.views)


def _decode_zip(data: bytes, limits: MediaLimits, size: int, c: _Collector, depth: int) -> Decoded:
    """An archive some backends unpack (Akkoma's emoji packs, Misskey's emoji import): every member that
    is media is judged as such; the worst decides. Bounded: members, their total inflated size (zip
    bombs), no archive inside an archive."""
    import zipfile

    if depth > 0:
        raise MediaError("corrupt", "an archive inside an archive")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise MediaError("corrupt", f"zip: {exc}") from None
    if len(members) > MAX_ZIP_ENTRIES:
        raise MediaError("too_many_frames", f"zip with {len(members)} members, over {MAX_ZIP_ENTRIES}")
    if sum(m.file_size for m in members) > limits.max_bytes:
        raise MediaError("too_large", f"zip inflates past {limits.max_bytes} bytes")
    judged = 0
    with archive:
        for member in members:
            c.check_deadline()
            try:
                with archive.open(member) as fh:
                    body = fh.read(limits.max_bytes + 1)
            except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
                raise MediaError("corrupt", f"zip member {member.filename!r}: {exc}") from None
            if len(body) > member.file_size or sniff(body) is None:
                if len(body) > member.file_size:
                    raise MediaError("corrupt", f"zip member {member.filename!r} is larger than its header says")
                continue  # a manifest, a licence: no picture
            inner = _decode(body, limits, size, c.deadline, depth + 1)
            c.add([(f, f"{member.filename}: {v}") for f, v in zip(inner.frames, inner.views, strict=True)])
            judged += 1
    return Decoded(ZIP_TYPE, 0, 0, judged, c.frames, c.views)


def decode(data: bytes, limits: MediaLimits, input_size: int = DEFAULT_INPUT_SIZE) -> Decoded:
    """Decode untrusted bytes into the RGB views to judge (long side at most ``input_size``, the size the
    models need), or raise :class:`MediaError`."""
    return _decode(data, limits, input_size, time.monotonic() + limits.decode_timeout_ms / 1000)
