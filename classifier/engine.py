"""The classifier service: loads the sources a config needs, batches them, scores frames.

Loading happens in a background thread after start, so a server can answer (and report "not ready")
while a large model loads or fails to. A source that fails to load leaves the classifier *failed* with
the reason; callers then apply their policy's ``on_error``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .batcher import DynamicBatcher
from .detectors import DETECTORS
from .rules import CLIP_SOURCE, Signal
from .sources import ClipSettings, ClipSource, SignalSource, SourceLoadError
import contextlib

log = logging.getLogger(__name__)

KNOWN_SOURCES = frozenset({CLIP_SOURCE, *DETECTORS})


class ClassifierNotReady(RuntimeError):
    """The classifier is loading, or failed to load; ``str()`` says which and why."""


def _doc(default: Any, doc: str, check: Callable[[Any], str | None] | None = None,
         parse: Callable[[Any, str, Any], Any] | None = None) -> Any:
    """A settings field with the metadata the proxy's config walker reads (doc, check, parse)."""
    return field(default=default, metadata={"doc": doc, "check": check, "parse": parse})


def _positive(value: float) -> str | None:
    return None if value > 0 else f"expected a positive number, got {value}"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else f"expected 0 or more, got {value}"


def _device(value: str) -> str | None:
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) else f"expected auto, cpu, cuda or cuda:N, got {value!r}"


def _pretrained(value: Any, path: str, ctx: Any) -> str | None:
    if not isinstance(value, str):
        raise ValueError(f"expected str, got {type(value).__name__} {value!r}")
    return None if value in ("", "random") else value


@dataclass(frozen=True)
class ClassifierSettings:
    model: str = _doc("ViT-L-14", "an open_clip model name (ViT-L-14 is what the CSAM thresholds fit)")
    pretrained: str | None = _doc("openai", "an open_clip tag (downloaded once), or a path to a weights file; "
                                  "random: random weights (tests)", parse=_pretrained)
    device: str = _doc("auto", "auto | cpu | cuda | cuda:N ; CUDA runs in bf16 (fp16 on older GPUs)", check=_device)
    seed: int = _doc(0, "only for pretrained: random (tests)")
    max_batch: int = _doc(32, "frames per model call at most", check=_positive)
    max_wait_ms: float = _doc(5.0, "under load, how long a batch may wait for company after its first frame "
                              "arrived; a frame that finds the model idle goes at once", check=_non_negative)
    max_queue: int = _doc(1024, "frames waiting per model; past it requests get on_error (overload)", check=_positive)
    preprocess_workers: int = _doc(2, "threads preparing model inputs", check=_positive)
    detector_threads: int = _doc(0, "onnxruntime threads per detector (0 = onnxruntime's choice)",
                                 check=_non_negative)

    @property
    def clip(self) -> ClipSettings:
        return ClipSettings(model=self.model, pretrained=self.pretrained, device=self.device, seed=self.seed)


def source_keys(name: str) -> frozenset[str] | None:
    """The keys a source can score (None: any, e.g. CLIP prompts); KeyError for an unknown source."""
    if name == CLIP_SOURCE:
        return None
    return DETECTORS[name].KEYS


BatchHook = Callable[[str, int, float], None]


class Classifier:
    """The in-process :class:`classifier.scorer.Scorer`: loads the sources the policies read and batches them."""

    def __init__(
        self,
        settings: ClassifierSettings,
        signals: Iterable[Signal],
        *,
        on_batch: BatchHook | None = None,
    ) -> None:
        self.settings = settings
        signals = set(signals)
        self.prompts = {key for source, key in signals if source == CLIP_SOURCE}
        self.source_names = {source for source, _ in signals}
        unknown = self.source_names - KNOWN_SOURCES
        if unknown:
            raise ValueError(f"unknown signal sources {sorted(unknown)}; known: {sorted(KNOWN_SOURCES)}")
        self._on_batch = on_batch
        self.state = "idle"
        self.reason = ""
        self.sources: dict[str, SignalSource] = {}
        self.batchers: dict[str, DynamicBatcher[Any, dict[str, float]]] = {}
        self._prep_pool = ThreadPoolExecutor(max_workers=settings.preprocess_workers, thread_name_prefix="preprocess")
        self._load_task: asyncio.Task[None] | None = None
        self.load_seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        out["sources"] = {name: src.describe() for name, src in self.sources.items()}
        out["queue"] = self.queue_depths()
        if self.load_seconds is not None:
            out["load_seconds"] = round(self.load_seconds, 2)
        return out

    def queue_depths(self) -> dict[str, int]:
        return {name: b.queue_depth for name, b in self.batchers.items()}

    def _load_sources(self) -> dict[str, SignalSource]:
        loaded: dict[str, SignalSource] = {}
        for name in sorted(self.source_names):
            if name == CLIP_SOURCE:
                clip = ClipSource(self.settings.clip)
                clip.set_prompts(self.prompts)
                loaded[name] = clip
            else:
                loaded[name] = DETECTORS[name](self.settings.detector_threads)  # type: ignore[call-arg]
        return loaded

    async def start(self) -> None:
        """Begin loading in the background; returns at once."""
        if self._load_task is None:
            self.state = "loading"
            self._load_task = asyncio.get_running_loop().create_task(self._load(), name="classifier-load")

    async def wait_ready(self) -> None:
        if self._load_task is not None:
            await asyncio.shield(self._load_task)
        if not self.ready:
            raise ClassifierNotReady(self.describe_not_ready())

    async def _load(self) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            sources = await loop.run_in_executor(None, self._load_sources)
        except (SourceLoadError, OSError, RuntimeError, ValueError) as exc:
            self.state, self.reason = "failed", str(exc)
            log.error("classifier not ready: %s", exc)
            return
        self.sources = sources
        for name, src in sources.items():
            batcher: DynamicBatcher[Any, dict[str, float]] = DynamicBatcher(
                src.run,
                name=name,
                max_batch=self.settings.max_batch,
                max_wait_ms=self.settings.max_wait_ms,
                max_queue=self.settings.max_queue,
                on_batch=self._batch_hook(name),
            )
            batcher.start()
            self.batchers[name] = batcher
        self.load_seconds = time.perf_counter() - started
        self.state = "ready"
        log.info("classifier ready in %.1fs: %s", self.load_seconds, {n: s.describe() for n, s in sources.items()})

    def _batch_hook(self, name: str) -> Callable[[int, float], None] | None:
        hook = self._on_batch
        if hook is None:
            return None
        return lambda size, seconds: hook(name, size, seconds)

    def describe_not_ready(self) -> str:
        if self.state == "failed":
            return f"classifier failed to load: {self.reason}"
        return f"classifier is {self.state}"

    async def close(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
        for batcher in self.batchers.values():
            await batcher.close()
        self._prep_pool.shutdown(wait=False, cancel_futures=True)

    async def score(self, frames: list[Image.Image], sources: Iterable[str]) -> list[dict[Signal, float]]:
        """Score every frame with every named source. Raises ClassifierNotReady, Overloaded."""
        if not self.ready:
            raise ClassifierNotReady(self.describe_not_ready())
        loop = asyncio.get_running_loop()
        per_frame: list[dict[Signal, float]] = [{} for _ in frames]

        async def frame(name: str, image: Image.Image) -> dict[str, float]:
            prepared = await loop.run_in_executor(self._prep_pool, self.sources[name].preprocess, image)
            return await self.batchers[name].submit(prepared)

        # frame-major: every model gets its first frame as early as the others, and each frame goes to its
        # model as soon as it is prepared, so preprocessing overlaps the model calls
        names = list(sources)
        waiting = [(i, name, asyncio.ensure_future(frame(name, f))) for i, f in enumerate(frames) for name in names]
        try:
            results = await asyncio.gather(*(w for _, _, w in waiting))
        except BaseException:  # overload, timeout, cancellation: the other frames need no model time
            for _, _, w in waiting:
                w.cancel()
            raise
        for (i, name, _), result in zip(waiting, results, strict=True):
            for key, value in result.items():
                per_frame[i][(name, key)] = value
        return per_frame
