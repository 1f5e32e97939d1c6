"""The :class:`Scorer` seam: frames in, scores out, asynchronously.

The verdict pipeline talks to a Scorer and never knows what is behind it: the in-process
:class:`classifier.Classifier` (models loaded here, dynamically batched), or a remote worker pool. A
Scorer raises :class:`ClassifierNotReady` while it cannot score (loading, failed, no worker connected) and
:class:`Overloaded` when its queue is full; the caller's policy decides what those mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from .rules import Signal


@runtime_checkable
class Scorer(Protocol):
    @property
    def ready(self) -> bool:
        """True while :meth:`score` can answer."""

    def status(self) -> dict[str, Any]:
        """What /healthz shows: state, the reason when not ready, the models, queue depths."""

    def queue_depths(self) -> Mapping[str, int]:
        """Frames waiting per model (a metric)."""

    async def start(self) -> None:
        """Begin loading or connecting; returns at once."""

    async def wait_ready(self) -> None:
        """Wait until ready; raises ClassifierNotReady with the reason if it cannot become ready."""

    async def close(self) -> None: ...

    async def score(self, frames: list[Image.Image], sources: Iterable[str]) -> list[dict[Signal, float]]:
        """One ``{(source, key): score}`` per frame, from every named source."""
