"""The Classifier (the in-process Scorer): loading, failure reasons, several sources at once."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from classifier import Classifier, ClassifierNotReady, ClassifierSettings
from tests.support.photos import photo_array

TINY = ClassifierSettings(model="ffp-tiny-clip", pretrained=None, device="cpu")


async def test_classifier_reports_failure_reason() -> None:
    c = Classifier(ClassifierSettings(model="no-such-model"), {("clip", "x")})
    await c.start()
    with pytest.raises(ClassifierNotReady, match="unknown open_clip model"):
        await c.wait_ready()
    assert c.status()["state"] == "failed"
    with pytest.raises(ClassifierNotReady):
        await c.score([Image.new("RGB", (8, 8))], {"clip"})
    await c.close()


async def test_classifier_scores_frames_from_several_sources_concurrently() -> None:
    c = Classifier(TINY, {("clip", "a cat"), ("open_nsfw", "nsfw"), ("nudenet", "FACE_FEMALE")})
    await c.start()
    await c.wait_ready()
    frames = [Image.fromarray(photo_array(n)) for n in ("astronaut", "coffee")]
    results = await asyncio.gather(*(c.score(frames, {"clip", "open_nsfw", "nudenet"}) for _ in range(3)))
    await c.close()
    for other in results[1:]:  # batch composition may move the last float bits, nothing more
        for a, b in zip(results[0], other, strict=True):
            assert a.keys() == b.keys()
            assert all(a[k] == pytest.approx(b[k], abs=1e-4) for k in a)
    astro, coffee = results[0]
    assert astro[("nudenet", "FACE_FEMALE")] > 0.5 and coffee[("nudenet", "FACE_FEMALE")] == 0.0
    assert ("clip", "a cat") in astro and 0 <= astro[("open_nsfw", "nsfw")] <= 1


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal sources"):
        Classifier(ClassifierSettings(), {("magic", "x")})
