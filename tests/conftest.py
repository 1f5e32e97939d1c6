"""Shared fixtures: configs with the tiny random-weight CLIP, benign real photos, crafted hostile media.

Photos come from scikit-image, scikit-learn and matplotlib at run time (shared/MODELS.md); none is
committed. Servers are real aiohttp servers on loopback, reached with real HTTP clients.
"""

from __future__ import annotations

import copy
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from proxy.config import Config, parse_config
from tests.photos import photo, photo_array

TINY_CLASSIFIER = {"model": "ffp-tiny-clip", "pretrained": "random", "device": "cpu", "max_batch": 8, "max_wait_ms": 5}
NEVER = 1.0  # cosine similarity never exceeds 1: a concept that never hits
ALWAYS = -1.0  # nor falls below -1: a concept that always hits


def policy(threshold: float = NEVER, **overrides: Any) -> dict[str, Any]:
    """A one-concept CLIP policy whose 'flagged' label rejects; the threshold decides hits."""
    body: dict[str, Any] = {
        "concepts": {"standin": {"prompts": {"a photo of a cat": threshold}}},
        "labels": {"flagged": {"all": [{"concept": "standin"}]}},
        "actions": {"flagged": "reject"},
    }
    body.update(overrides)
    return body


def config_dict(pol: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "audit_db": ":memory:", "admin_token": "secret"},
        "classifier": dict(TINY_CLASSIFIER),
        "policies": {"main": pol if pol is not None else policy()},
        "instances": [{"name": "pictrs", "kind": "pictrs", "upstream": "http://127.0.0.1:9", "policy": "main"}],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def make_config(pol: dict[str, Any] | None = None, **sections: Any) -> Config:
    return parse_config(copy.deepcopy(config_dict(pol, **sections)))


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


@pytest.fixture
def photos() -> Callable[..., bytes]:
    return photo


@pytest.fixture(autouse=True)
def _no_blocking_on_loop() -> Iterator[None]:
    """Fail any blocking call made on the event loop in our own code (aiohttp's own test habit)."""
    from blockbuster import BlockBuster

    bb = BlockBuster(scanned_modules=["proxy", "classifier"])
    for function in bb.functions.values():
        # mitmproxy configures itself (CA files, certificate store) with blocking calls: once, at start-up
        function.can_block_in("proxy/egress.py", {"start", "run"})
    bb.activate()
    try:
        yield
    finally:
        bb.deactivate()
