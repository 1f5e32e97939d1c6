import gzip
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxy.config import MediaLimits
from proxy.media import DEFAULT_INPUT_SIZE, MediaError, decode, sniff, tile_plan
from tests.support.media import animated_gif, mp4_video, png_bomb, wav_audio
from tests.support.photos import photo, photo_image

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


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic", "image/heic"),
        (b"\x00\x00\x00\x18ftyphevc\x00\x00\x00\x00", "image/heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "image/heif"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", "image/avif"),
        (b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00", "image/avif"),
        (b"\x00\x00\x00\x20ftypavis\x00\x00\x00\x00", "image/avif"),
        (b"\xff\x0a\x00\x10", "image/jxl"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00", "image/jxl"),
        (SVG, "image/svg+xml"),
        (b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- made by hand -->\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
         b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n' + SVG, "image/svg+xml"),
        (b"<svg:svg xmlns:svg='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (gzip.compress(SVG), "image/svg+xml"),
        (SVG.decode().encode("utf-16"), "image/svg+xml"),  # with a byte-order mark, as XML requires
        (b"\xfe\xff" + SVG.decode().encode("utf-16-be"), "image/svg+xml"),
        (b'<!DOCTYPE html><html><body><svg width="9"></svg></body></html>', None),  # a page with an icon
        (b'<?xml version="1.0"?><rss version="2.0"><svg/></rss>', None),
        (gzip.compress(b"just text"), None),
    ],
)
def test_sniff_heif_jxl_and_svg(head: bytes, mime: str | None) -> None:
    assert sniff(head) == mime


def test_the_decoder_registers_its_own_pillow_plugins() -> None:
    """scikit-image registers pillow-heif's opener as a side effect in tests; a server has no such luck."""
    code = "import proxy.media; from PIL import Image; Image.init(); print('HEIF' in Image.ID, 'JXL' in Image.ID)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_frames_come_at_the_input_size() -> None:
    d = decode(photo("coffee"), LIMITS, input_size=224)
    assert [f.size for f in d.frames] == [(224, 149)] and d.views == ["image"]
    assert decode(photo("coffee"), LIMITS).frames[0].size == (DEFAULT_INPUT_SIZE, 299)


def test_a_large_image_is_judged_whole_and_in_tiles() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), "blue").save(buf, "PNG")
    d = decode(buf.getvalue(), LIMITS)
    assert (d.width, d.height) == (3000, 2000) and d.frames[0].size == (448, 299)
    assert d.views[0] == "image" and len(d.frames) == 1 + 15  # 5x3 tiles of 667 px
    assert all(max(f.size) <= 448 for f in d.frames)


@pytest.mark.parametrize("side", [2048, 2300, 2900])  # tiles of 512 px (0.875x), 575 (0.78x), 725 (0.62x)
def test_a_one_pixel_line_survives_a_tile_shrink(side: int) -> None:
    """Opaque tiles shrunk a little go through OpenCV's bilinear, deeper shrinks through Pillow's: wherever a
    1-px white line on black falls, every tile that holds it still shows it at >= 75/255 (Pillow's own floor
    at 0.62x is ~81; OpenCV's bilinear there would drop it to 56, which is why it only takes shrinks to 0.75x)."""
    boxes = tile_plan(side, side, DEFAULT_INPUT_SIZE, LIMITS.max_tiles)
    assert len(boxes) == 16
    for x in range(side // 3, side // 3 + 8):  # every phase of the resampling grid, in the first tile row
        img = Image.new("L", (side, side), 0)
        img.paste(255, (x, 0, x + 1, side))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "PNG", compress_level=1)
        d = decode(buf.getvalue(), LIMITS)
        tiles = [f for f, v in zip(d.frames, d.views, strict=True) if " tile " in v]
        holding = [t for t, (x0, _, x1, _) in zip(tiles, boxes, strict=True) if x0 <= x < x1]
        assert holding and all(max(t.size) == DEFAULT_INPUT_SIZE for t in tiles)
        assert min(int(np.asarray(t).max()) for t in holding) >= 75, (side, x)


def test_a_transparent_tile_hides_no_colour_under_alpha_zero() -> None:
    """Tiles with transparency keep Pillow's premultiplied resize: a colour under alpha 0 never bleeds in."""
    rgba = np.zeros((2048, 2048, 4), np.uint8)
    rgba[..., 0] = 255  # pure red everywhere, all of it invisible
    rgba[::7, :, :] = (128, 128, 128, 255)  # thin visible grey lines across every tile
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    d = decode(buf.getvalue(), LIMITS)
    assert len(d.frames) == 2 * 17  # whole view and 16 tiles, each on light and dark
    for frame in d.frames:
        px = np.asarray(frame).astype(int)
        assert (px[..., 0] - px[..., 1]).max() <= 2 and (px[..., 0] - px[..., 2]).max() <= 2  # grey, no red


@pytest.mark.parametrize(("w", "h"), [(4000, 300), (300, 4000), (2048, 2048), (4000, 3000), (10000, 400), (2000, 1001)])
def test_tiles_cover_the_whole_image_within_max_tiles(w: int, h: int) -> None:
    boxes = tile_plan(w, h, 448, 16)
    assert 2 <= len(boxes) <= 16
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and max(x1 - x0, y1 - y0) >= min(448, w, h)
        covered[y0:y1, x0:x1] = True
    assert covered.all()


@pytest.mark.parametrize(("w", "h"), [(600, 400), (1792, 1000), (448, 224), (400, 100)])
def test_no_tiles_when_the_whole_view_shows_enough(w: int, h: int) -> None:
    """Not over 4x the input nor a strip, or a strip no longer than the input: the whole view is it."""
    assert tile_plan(w, h, 448, 16) == []


def test_every_distinct_animation_frame_is_kept_once() -> None:
    names = ["coffee", "rocket", "chelsea", "astronaut"] * 5  # 20 frames, 4 pictures
    d = decode(animated_gif(names), LIMITS)
    assert d.total_frames == 20 and len(d.frames) == 4 and d.views == ["frame 0", "frame 1", "frame 2", "frame 3"]


def test_a_small_change_is_a_distinct_frame() -> None:
    """A patch of 1/180 of the frame in one frame of 30 identical ones survives deduplication."""
    base = photo_image("coffee").resize((300, 200))
    patched = base.copy()
    patched.paste((255, 0, 255), (100, 80, 120, 98))
    frames = [base] * 15 + [patched] + [base] * 14
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    d = decode(buf.getvalue(), LIMITS)
    assert d.total_frames == 30 and d.views == ["frame 0", "frame 15"]


def test_animation_tiles_are_judged_again_only_where_they_changed() -> None:
    first = Image.new("RGB", (2400, 300), "white")
    for x in range(0, 2400, 300):
        first.paste(photo_image("coffee").resize((300, 300)), (x, 0))
    second = first.copy()
    second.paste((255, 0, 255), (10, 10, 100, 100))  # inside the first tile only
    buf = io.BytesIO()
    first.save(buf, "PNG", save_all=True, append_images=[second, first])
    d = decode(buf.getvalue(), LIMITS)
    assert d.views == ["frame 0"] + [f"frame 0 tile {i}/6" for i in range(1, 7)] + ["frame 1", "frame 1 tile 1/6"]


def test_more_distinct_views_than_max_judged_frames_is_invalid() -> None:
    with pytest.raises(MediaError) as info:
        decode(animated_gif(["coffee", "rocket", "chelsea", "astronaut"]), MediaLimits(max_judged_frames=3))
    assert info.value.kind == "too_many_frames"


def _video(seconds: int, fps: int, size: int = 64) -> bytes:
    """A new random 4x4 pattern every second, held for the second."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            blocks = np.random.default_rng(i // fps).integers(0, 256, (4, 4, 3), dtype=np.uint8)
            arr = np.kron(blocks, np.ones((size // 4, size // 4, 1), np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_video_frames_one_a_second_then_evenly_spread() -> None:
    d = decode(_video(30, 2), LIMITS)
    assert d.mime == "video/mp4" and d.total_frames == 60
    assert [v.split(" at ")[1] for v in d.views] == [f"{s:.1f}s" for s in range(30)]
    long = decode(_video(400, 1, 32), MediaLimits(max_video_frames=40))
    times = [float(v.split(" at ")[1][:-1]) for v in long.views]
    assert len(times) <= 40 and times[:20] == [float(s) for s in range(20)]  # the head: every second
    assert max(times) >= 350  # the rest: spread to the end, not cut off
    gaps = np.diff([t for t in times if t >= 20])
    assert gaps.max() <= 2 * gaps.min()


def test_exif_orientation_is_applied() -> None:
    upright = photo_image("coffee")
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down, shown upright
    buf = io.BytesIO()
    upright.rotate(180).save(buf, "JPEG", exif=exif, quality=95)
    frame = np.asarray(decode(buf.getvalue(), LIMITS).frames[0], np.int16)
    expected = np.asarray(upright.resize(decode(photo("coffee"), LIMITS).frames[0].size), np.int16)
    assert np.abs(frame - expected).mean() < 12
    assert np.abs(frame - expected[::-1, ::-1]).mean() > 30


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "LA", "P"])
def test_modes_become_rgb(mode: str) -> None:
    img = photo_image("coffee")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    elif mode == "LA":
        img = img.convert("LA")
    else:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG" if mode == "CMYK" else "PNG")
    d = decode(buf.getvalue(), LIMITS)
    assert len(d.frames) == 1 and d.frames[0].mode == "RGB"
    assert 60 < np.asarray(d.frames[0]).mean() < 200  # neither clipped white nor black


def test_transparency_is_judged_on_light_and_dark() -> None:
    img = photo_image("coffee").convert("RGBA")
    img.putalpha(Image.new("L", img.size, 128))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    d = decode(buf.getvalue(), LIMITS)
    assert d.views == ["image on light", "image on dark"]
    light, dark = (np.asarray(f, np.int16).mean() for f in d.frames)
    assert light > dark + 100
    opaque = io.BytesIO()
    photo_image("coffee").convert("RGBA").save(opaque, "PNG")
    assert decode(opaque.getvalue(), LIMITS).views == ["image"]


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
        (b"<svg xmlns='http://www.w3.org/2000/svg'><use href='icons.svg#cat'/></svg>", "external"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><foreignObject><img xmlns='http://www.w3.org/1999/xhtml' "
         b"srcset='data:image/gif;base64,R0lGODlhAQABAAAAACw= 1x, https://example.invalid/a.jpg 2x'/></foreignObject></svg>",
         "external"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><style>@import 'https://example.invalid/x.css';</style></svg>", "external"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><rect", "corrupt"),
        (gzip.compress(b"<svg xmlns='http://www.w3.org/2000/svg'><desc>" + b" " * 3_000_000 + b"</desc></svg>"), "too_large"),
    ],
)
def test_hostile_media_gets_a_defined_error(data: bytes, kind: str) -> None:
    with pytest.raises(MediaError) as info:
        decode(data, MediaLimits(max_bytes=2_000_000))
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
        decode(mp4_video(["coffee"] * 8), MediaLimits(decode_timeout_ms=1))
    assert info.value.kind in ("timeout",)


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_a_png_colour_key_is_judged_like_an_alpha_channel(mode: str) -> None:
    """Found by an attacker's review: a PNG colour key (tRNS on an RGB, grey or 16-bit grey image) names one
    value every viewer draws transparent; it was judged as that colour, not as the page showing through
    (on light and on dark, as alpha is), so a picture drawn by the keyed pixels was judged a flat square."""
    photo_img = photo_image("coffee").convert("L" if mode != "RGB" else "RGB").point(lambda v: v | 1)  # all odd
    key: object = (2, 4, 6) if mode == "RGB" else 6  # even: no pixel of the photo has it

    def png(keyed_half: bool) -> bytes:
        img = photo_img.copy()
        if mode == "I;16":
            wide = np.asarray(img).astype(np.uint16) * 257  # all odd too
            if keyed_half:
                wide[:, : img.width // 2] = 1234
            img = Image.fromarray(wide)
        elif keyed_half:
            img.paste(key, (0, 0, img.width // 2, img.height))  # type: ignore[arg-type]
        buf = io.BytesIO()
        img.save(buf, "PNG", transparency=1234 if mode == "I;16" else key)
        return buf.getvalue()

    assert "transparency" in Image.open(io.BytesIO(png(True))).info
    d = decode(png(True), LIMITS)
    assert d.views == ["image on light", "image on dark"], d.views
    light, dark = (np.asarray(f).astype(int) for f in d.frames)
    left = slice(0, light.shape[1] // 2 - 2)
    assert light[:, left].min() >= 250 and dark[:, left].max() <= 5  # the page shows through the keyed half
    assert decode(png(False), LIMITS).views == ["image"]  # no keyed pixel: opaque, judged once
