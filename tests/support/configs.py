"""Configs for tests: the tiny random-weight CLIP, one-concept policies, and the face stand-in policy."""

from __future__ import annotations

import copy
from typing import Any

from proxy.config import Config, parse_config

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


FACES: dict[str, Any] = {
    "concepts": {"face": {"signals": {"nudenet.FACE_FEMALE": 0.5, "nudenet.FACE_MALE": 0.5}}},
    "labels": {"portrait": {"any": [{"concept": "face"}]}},
    "actions": {"portrait": "reject"},
}
"""The benign stand-in (shared/MODELS.md): NudeNet's real weights flag photos of faces (astronaut, Grace
Hopper); coffee, rocket, cat and the rest of the corpus are clean."""
