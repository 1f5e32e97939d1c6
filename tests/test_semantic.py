"""Semantic tests with REAL weights and benign stand-in concepts (never anything else).

- Faces (NudeNet's FACE_FEMALE/FACE_MALE, weights shipped in the pip package, always run): portraits are
  refused, other photos accepted, through POST /api/v1/validate end to end.
- "a photo of a cat" with real CLIP weights: no pip package ships CLIP weights (shared/MODELS.md), so
  this runs only where FFP_CLIP_WEIGHTS names a weights file (FFP_CLIP_MODEL its architecture, default
  ViT-B-32), and is reported as skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.configs import FACES, make_config
from tests.support.media import audio_with_cover
from tests.support.photos import CORPUS, photo
from tests.support.servers import post_media, start

async def test_face_standin_policy_refuses_portraits_and_accepts_the_rest(aiohttp_client) -> None:
    client = await start(aiohttp_client, make_config(FACES))
    for name in ("astronaut", "grace_hopper"):
        status, body = await post_media(client, photo(name))
        assert status == 406, (name, body)
        assert body["labels"] == ["portrait"]
        assert max(body["scores"]["nudenet"].values()) > 0.5
    for name in ("coffee", "rocket", "chelsea"):
        status, body = await post_media(client, photo(name))
        assert status == 200, (name, body)


@pytest.mark.parametrize("fmt", ["mp3", "flac"])
async def test_audio_cover_art_is_judged(aiohttp_client, fmt: str) -> None:
    """Backends keep an audio file's cover art as its thumbnail: the art is what gets judged."""
    client = await start(aiohttp_client, make_config(FACES))
    status, body = await post_media(client, audio_with_cover("astronaut", fmt))
    assert status == 406 and body["labels"] == ["portrait"] and body["mime"].startswith("audio/")
    status, body = await post_media(client, audio_with_cover("coffee", fmt))
    assert status == 200 and body["decided_by"] == "model" and body["frames"] == 1


CLIP_WEIGHTS = os.environ.get("FFP_CLIP_WEIGHTS")


@pytest.mark.weights
@pytest.mark.skipif(not CLIP_WEIGHTS, reason="real CLIP weights not available: "
                    "set FFP_CLIP_WEIGHTS=/path/to/weights (and FFP_CLIP_MODEL) to run")
async def test_cat_standin_with_real_clip_weights(aiohttp_client) -> None:
    cats = {
        "concepts": {"cat": {"prompts": {"a photo of a cat": float(os.environ.get("FFP_CAT_THRESHOLD", "0.25"))}}},
        "labels": {"cat": {"all": [{"concept": "cat"}]}},
        "actions": {"cat": "reject"},
    }
    classifier = {"model": os.environ.get("FFP_CLIP_MODEL", "ViT-B-32"), "pretrained": CLIP_WEIGHTS}
    client = await start(aiohttp_client, make_config(cats, classifier=classifier))
    assert (await post_media(client, photo("chelsea")))[0] == 406
    for name in ("coffee", "rocket", "astronaut", "moon"):
        assert (await post_media(client, photo(name)))[0] == 200, name


async def test_cpu_policy_uses_only_detectors_and_accepts_the_benign_corpus(aiohttp_client, tmp_path) -> None:
    """config/cpu.yaml end to end: no CLIP loaded, every benign photo the packages ship accepted."""
    from proxy.config import load_config

    cfg = await asyncio.to_thread(load_config, Path(__file__).resolve().parent.parent / "config" / "cpu.yaml")
    cfg = replace(cfg, server=replace(cfg.server, audit_db=str(tmp_path / "a.db")))
    client = await start(aiohttp_client, cfg)
    health = await (await client.get("/healthz")).json()
    assert set(health["classifier"]["sources"]) == {"open_nsfw", "nudenet"}
    for name in CORPUS:
        status, body = await post_media(client, photo(name))
        assert status == 200, (name, body)
        assert set(body["scores"]) == {"open_nsfw", "nudenet"}
