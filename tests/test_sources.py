"""The CLIP source with open_clip's real code (a tiny random-weight model built from our own config)."""

from __future__ import annotations


import pytest
from PIL import Image

from classifier import ClassifierSettings, ClipSettings, SourceLoadError
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
