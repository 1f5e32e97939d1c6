"""Sniffing and bounded decoding of untrusted media.

The type comes from the bytes, never from a Content-Type. Decoding is bounded before any pixel is
allocated: byte size, pixel count (width x height from the header), frame count; the caller bounds time.
Animations (GIF, WebP, APNG) and videos yield up to ``max_frames`` frames sampled evenly across them.
These functions block: run them in an executor, never on the event loop.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

from PIL import Image, ImageFile, UnidentifiedImageError

from .config import MediaLimits
from .verdict import InvalidKind

# Our per-policy pixel limit, checked from the header before decoding, replaces Pillow's global
# decompression-bomb check (whose warning would be the only signal below 2x its limit).
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

FRAME_MAX_SIDE = 1024
"""Frames are scaled down to this before classification; every model here looks at <= 448 px."""


class MediaError(Exception):
    """Media we refuse to judge: ``kind`` says why (:class:`InvalidKind`); the message is safe to show to a client."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = InvalidKind(kind)


_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"\x00\x00\x01\x00", 0, "image/x-icon"),
)
_FTYP_IMAGE = {b"avif": "image/avif", b"avis": "image/avif", b"heic": "image/heic", b"heix": "image/heic", b"mif1": "image/heif"}
VIDEO_TYPES = frozenset({"video/mp4", "video/quicktime", "video/webm"})
AUDIO_TYPES = frozenset({"audio/mpeg", "audio/ogg", "audio/flac", "audio/wav", "audio/mp4"})
"""Audio goes through FFmpeg too: cover art (ID3 APIC, FLAC PICTURE, MP4 covr) is a video stream there,
and backends store it as the file's thumbnail."""


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
        brand = data[8:12]
        if brand in _FTYP_IMAGE:
            return _FTYP_IMAGE[brand]
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06):
        return "audio/mpeg"
    if data[:4] == b"OggS":
        return "audio/ogg"
    if data[:4] == b"fLaC":
        return "audio/flac"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm"
    return None


@dataclass
class Decoded:
    mime: str
    width: int
    height: int
    total_frames: int
    frames: list[Image.Image]


def _sample(total: int, wanted: int) -> list[int]:
    if total <= wanted:
        return list(range(total))
    return sorted({round(i * (total - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [0]


def _to_frame(img: Image.Image) -> Image.Image:
    frame = img.convert("RGB")
    if max(frame.size) > FRAME_MAX_SIDE:
        frame.thumbnail((FRAME_MAX_SIDE, FRAME_MAX_SIDE), Image.Resampling.BILINEAR)
    return frame


def _check_pixels(width: int, height: int, limits: MediaLimits) -> None:
    if width <= 0 or height <= 0:
        raise MediaError("corrupt", f"invalid dimensions {width}x{height}")
    if width * height > limits.max_pixels:
        raise MediaError(
            "too_many_pixels", f"{width}x{height} is over the limit of {limits.max_pixels} pixels (decompression bomb?)"
        )


def _decode_image(data: bytes, mime: str, limits: MediaLimits, deadline: float) -> Decoded:
    try:
        img = Image.open(io.BytesIO(data))
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
            img.draft("RGB", (FRAME_MAX_SIDE, FRAME_MAX_SIDE))
        frames = []
        try:
            for index in _sample(total, limits.max_frames):
                _check_deadline(deadline)
                img.seek(index)
                img.load()
                frames.append(_to_frame(img))
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise MediaError("corrupt", f"{mime}: {exc}") from None
    return Decoded(mime, width, height, total, frames)


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise MediaError("timeout", "decoding took too long")


def _decode_video(data: bytes, mime: str, limits: MediaLimits, deadline: float) -> Decoded:
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError("corrupt", f"{mime}: {exc}") from None
    with container:
        if not container.streams.video:
            if mime in AUDIO_TYPES:
                return Decoded(mime, 0, 0, 0, [])  # audio without cover art: nothing to look at
            raise MediaError("unsupported", f"{mime} has no video stream")
        stream = container.streams.video[0]
        _check_pixels(stream.codec_context.width, stream.codec_context.height, limits)
        total = stream.frames
        frames: list[Image.Image] = []
        try:
            if 0 < total <= limits.max_total_frames:
                wanted = set(_sample(total, limits.max_frames))
                for i, frame in enumerate(container.decode(stream)):
                    _check_deadline(deadline)
                    if i in wanted:
                        frames.append(_to_frame(frame.to_image()))
                        if len(frames) == len(wanted):
                            break
            else:
                # frame count unknown (or implausible): keep every stride-th frame, doubling the stride
                # whenever the buffer fills, so the kept frames stay evenly spread and memory bounded
                stride, count = 1, 0
                for i, frame in enumerate(container.decode(stream)):
                    _check_deadline(deadline)
                    if i >= limits.max_total_frames:
                        break
                    count = i + 1
                    if i % stride == 0:
                        frames.append(_to_frame(frame.to_image()))
                        if len(frames) >= 2 * limits.max_frames:
                            frames, stride = frames[::2], stride * 2
                frames = [frames[j] for j in _sample(len(frames), limits.max_frames)]
                total = count
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError("corrupt", f"{mime}: {exc}") from None
        if not frames:
            raise MediaError("corrupt", f"{mime}: no decodable frame")
        return Decoded(mime, stream.codec_context.width, stream.codec_context.height, total, frames)


def decode(data: bytes, limits: MediaLimits) -> Decoded:
    """Decode untrusted bytes into sampled RGB frames, or raise :class:`MediaError`."""
    if not data:
        raise MediaError("empty", "empty body")
    if len(data) > limits.max_bytes:
        raise MediaError("too_large", f"{len(data)} bytes is over the limit of {limits.max_bytes}")
    mime = sniff(data)
    if mime is None:
        raise MediaError("unsupported", "not an image or video this proxy can decode")
    deadline = time.monotonic() + limits.decode_timeout_ms / 1000
    if mime in VIDEO_TYPES or mime in AUDIO_TYPES:
        return _decode_video(data, mime, limits, deadline)
    return _decode_image(data, mime, limits, deadline)
