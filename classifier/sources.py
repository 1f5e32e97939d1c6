"""Signal sources: models that turn decoded frames into named scores.

Every source has the same two-step shape, so the engine batches them all the same way:

- ``preprocess(image)`` runs in the preprocessing thread pool, one frame at a time;
- ``run(batch)`` runs on the source's batcher thread, one model call per batch, and returns one
  ``{key: score}`` mapping per frame.

CLIP's keys are the policy prompts (cosine similarity of image and prompt embeddings); the detectors'
keys are fixed class names.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

from PIL import Image

log = logging.getLogger(__name__)


class SourceLoadError(RuntimeError):
    """A source could not be loaded (weights missing, download impossible offline, ...)."""


class SignalSource(ABC):
    name: ClassVar[str]
    KEYS: ClassVar[frozenset[str] | None] = None
    """The keys this source can score, or None when they come from the policy (CLIP prompts)."""
    weights_path: str | None = None
    """The weights file, when there is one (its sha256 is the source's fingerprint for remote workers)."""
    preprocessing: str = ""
    """What ``preprocess`` does, in words a remote worker reports so both sides can be compared."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> Any:
        """Turn one RGB frame into this model's input. Runs off the event loop."""

    @abstractmethod
    def run(self, batch: list[Any]) -> list[dict[str, float]]:
        """Score a batch of preprocessed frames. Runs on the batcher thread."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True, kw_only=True)
class ClipSettings:
    """What the CLIP source needs of :class:`classifier.ClassifierSettings` (whose fields declare the defaults)."""

    model: str
    pretrained: str | None
    """An open_clip tag, a path to a weights file, or None for random weights (tests only)."""
    device: str
    seed: int = 0


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SourceLoadError(f"device {device!r} asked for, but CUDA is not available")
    return device


def register_model_configs() -> None:
    """Add this package's model configs (e.g. ``ffp-tiny-clip``) to open_clip's registry."""
    import open_clip

    path = resources.files("classifier") / "model_configs"
    open_clip.add_model_config(str(path))


class ClipSource(SignalSource):
    name = "clip"

    def __init__(self, settings: ClipSettings) -> None:
        import open_clip
        import torch

        register_model_configs()
        if settings.model not in open_clip.list_models():
            raise SourceLoadError(f"unknown open_clip model {settings.model!r}")
        self.device = resolve_device(settings.device)
        pretrained = settings.pretrained or None
        if pretrained is not None and os.sep in pretrained and not os.path.isfile(pretrained):
            raise SourceLoadError(f"weights file {pretrained!r} does not exist")
        torch.manual_seed(settings.seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                settings.model, pretrained=pretrained, device=self.device
            )
        except RuntimeError as exc:  # open_clip's 'Failed to download weights ...' offline, bad files
            raise SourceLoadError(f"{settings.model}/{pretrained}: {exc}") from exc
        model.eval()
        self.settings = settings
        self.model = model
        self._preprocess = preprocess
        self.preprocessing = " ".join(repr(preprocess).split())
        self._tokenizer = open_clip.get_tokenizer(settings.model)
        self._autocast_dtype = None
        if self.device.startswith("cuda"):
            self._autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._text: dict[str, Any] = {}
        self._prompts: list[str] = []
        self._text_matrix: Any = None
        if pretrained is None:
            log.warning("CLIP %s runs with RANDOM weights: its scores mean nothing (tests only)", settings.model)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.settings.model,
            "pretrained": self.settings.pretrained or "random",
            "device": self.device,
            "precision": str(self._autocast_dtype or "float32").replace("torch.", ""),
            "prompts": len(self._prompts),
        }

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self._autocast_dtype)

    def set_prompts(self, prompts: set[str]) -> None:
        """Embed the prompts not seen before; text embeddings are computed once per (model, prompt)."""
        import torch

        new = sorted(p for p in prompts if p not in self._text)
        if new:
            tokens = self._tokenizer(new).to(self.device)
            with torch.inference_mode(), self._autocast():
                emb = self.model.encode_text(tokens).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            for prompt, vec in zip(new, emb, strict=True):
                self._text[prompt] = vec
        self._prompts = sorted(prompts | set(self._prompts))
        self._text_matrix = torch.stack([self._text[p] for p in self._prompts]) if self._prompts else None

    def preprocess(self, image: Image.Image) -> Any:
        return self._preprocess(image)

    def embed(self, batch: list[Any]) -> Any:
        import torch

        pixels = torch.stack(batch).to(self.device)
        with torch.inference_mode(), self._autocast():
            emb = self.model.encode_image(pixels).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def run(self, batch: list[Any]) -> list[dict[str, float]]:
        emb = self.embed(batch)
        if self._text_matrix is None:
            return [{} for _ in batch]
        sims = (emb @ self._text_matrix.T).cpu().tolist()
        return [dict(zip(self._prompts, row, strict=True)) for row in sims]
