import io

import pytest
from PIL import Image

from proxy.config import MediaLimits
from proxy.media import FRAME_MAX_SIDE, MediaError, decode, sniff
from tests.support.media import animated_gif, mp4_video, png_bomb, wav_audio
from tests.support.photos import photo

LIMITS = MediaLimits()


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"),
                                          ("WEBP", "image/webp"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")])
def test_sniff_and_decode_formats(fmt: str, mime: str) -> None:
    data = photo("coffee", fmt)
    assert sniff(data) == mime
    d = decode(data, LIMITS)
    assert d.mime == mime and len(d.frames) == 1
    assert d.frames[0].mode == "RGB" and (d.width, d.height) == (600, 400)


@pytest.mark.parametrize(
    ("head", "mime"),
    [(b"ID3\x04\x00", "audio/mpeg"), (b"\xff\xfb\x90\x00", "audio/mpeg"), (b"OggS\x00\x02", "audio/ogg"),
     (b"fLaC\x00\x00", "audio/flac"), (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
     (b"\x00\x00\x00\x20ftypM4A \x00\x00", "audio/mp4"), (b"\x00\x00\x00\x20ftypisom", "video/mp4")],
)
def test_sniff_audio_and_video(head: bytes, mime: str) -> None:
    assert sniff(head) == mime


def test_audio_without_cover_art_yields_no_frames() -> None:
    d = decode(wav_audio(), LIMITS)
    assert d.mime == "audio/wav" and d.frames == []


def test_content_type_is_never_trusted() -> None:
    assert sniff(b"<html><body>hi</body></html>") is None
    assert sniff(b"GIF89a" + b"\0" * 20) == "image/gif"


def test_large_frames_are_scaled_down() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), "blue").save(buf, "PNG")
    d = decode(buf.getvalue(), LIMITS)
    assert max(d.frames[0].size) == FRAME_MAX_SIDE and (d.width, d.height) == (3000, 2000)


def test_animation_frames_are_sampled_evenly() -> None:
    names = ["coffee", "rocket", "chelsea", "camera"] * 5  # 20 frames
    d = decode(animated_gif(names), MediaLimits(max_frames=4))
    assert d.total_frames == 20 and len(d.frames) == 4


def test_video_frames_are_sampled() -> None:
    d = decode(mp4_video(["coffee", "rocket", "chelsea", "camera", "horse", "moon"]), MediaLimits(max_frames=3))
    assert d.mime == "video/mp4" and len(d.frames) == 3 and d.total_frames == 6


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty"),
        (b"hello, this is text", "unsupported"),
        (b"%PDF-1.7\n" + b"x" * 100, "unsupported"),
        (photo("coffee", "PNG")[:2000], "corrupt"),  # truncated
        (photo("coffee", "JPEG")[:3000], "corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "corrupt"),
        (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64, "corrupt"),
        (png_bomb(), "too_many_pixels"),
    ],
)
def test_hostile_media_gets_a_defined_error(data: bytes, kind: str) -> None:
    with pytest.raises(MediaError) as info:
        decode(data, LIMITS)
    assert info.value.kind == kind


def test_byte_and_frame_limits() -> None:
    with pytest.raises(MediaError) as info:
        decode(photo("coffee"), MediaLimits(max_bytes=1000))
    assert info.value.kind == "too_large"
    with pytest.raises(MediaError) as info:
        decode(animated_gif(["coffee", "rocket", "moon"]), MediaLimits(max_total_frames=2))
    assert info.value.kind == "too_many_frames"


def test_decode_time_limit() -> None:
    with pytest.raises(MediaError) as info:
        decode(mp4_video(["coffee"] * 8), MediaLimits(decode_timeout_ms=1, max_frames=8))
    assert info.value.kind in ("timeout",)
