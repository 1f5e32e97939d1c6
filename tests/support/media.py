"""Media the tests make at run time from the benign photos: animations, videos, audio with cover art, and
crafted hostile files (a decompression bomb)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tests.support.photos import photo_array, photo_image


def animated_gif(names: list[str], size: tuple[int, int] = (128, 128)) -> bytes:
    frames = [Image.fromarray(photo_array(n)).convert("RGB").resize(size) for n in names]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (its data would inflate to gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65536, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def mp4_video(names: list[str], size: tuple[int, int] = (128, 128)) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for n in names:
            frame = av.VideoFrame.from_image(Image.fromarray(photo_array(n)).convert("RGB").resize(size))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def wav_audio(seconds: float = 0.5) -> bytes:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x10" * int(8000 * seconds))
    return buf.getvalue()


def audio_with_cover(name: str, fmt: str = "mp3") -> bytes:
    """An MP3 (ID3 APIC) or FLAC (PICTURE block) with the photo as its cover art, as backends thumbnail it."""
    import av
    import numpy as np

    acodec, vcodec, pix, rate = {"mp3": ("mp3", "mjpeg", "yuvj420p", 44100), "flac": ("flac", "png", "rgb24", 8000)}[fmt]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        audio = out.add_stream(acodec, rate=rate)
        cover = out.add_stream(vcodec)
        cover.width, cover.height = 128, 128
        cover.pix_fmt = pix
        cover.disposition = av.stream.Disposition.attached_pic
        for packet in cover.encode(av.VideoFrame.from_image(Image.fromarray(photo_array(name)).convert("RGB").resize((128, 128)))):
            out.mux(packet)
        for packet in cover.encode():
            out.mux(packet)
        sample_fmt = audio.codec_context.format.name
        n = audio.codec_context.frame_size or 1024
        dtype = np.float32 if sample_fmt.startswith("flt") else np.int16 if sample_fmt.startswith("s16") else np.int32
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, n), dtype=dtype), format=sample_fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, i * n
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return buf.getvalue()


def variant(name: str, scale: float = 0.7, quality: int = 60) -> bytes:
    """The photo re-encoded as JPEG at ``quality`` and resized to ``scale``: a copy that shares no byte
    hash with the original (the same picture to a perceptual hash)."""
    img = photo_image(name)
    if scale != 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
