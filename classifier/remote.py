"""Remote model workers behind the :class:`Scorer` seam: the wire protocol and the worker pool.

A worker (``fedi-filter worker``) dials OUT to a serve/egress process over a websocket and scores frames
that process has already decoded. It never sees a URL, a user or a host: only frames.

Messages (``PROTOCOL`` 1); every one is validated and size-capped by the side that receives it:

- worker -> proxy, text: ``{"type": "hello", "protocol": 1, "name", "capacity", "sources": {source:
  {"model", "fingerprint", "preprocess", "keys"}}}`` once, first; the proxy answers ``{"type": "welcome"}``
  or ``{"type": "refused", "reason", "retry_s"}`` and closes (a worker whose models disagree with the
  policy; ``retry_s`` is short while the proxy's own models, the reference, are still loading).
- proxy -> worker, binary: ``MAGIC``, a 4-byte big-endian header length, the JSON header ``{"type":
  "score", "id", "sources", "frames": [[width, height, encoding, length], ...]}``, then the frames' bytes.
- worker -> proxy, text: ``{"type": "result", "id", "scores": [{source: {key: score}}, ...]}`` (one per
  frame) or ``{"type": "error", "id", "error": "overloaded" | "not_ready" | "failed", "detail"}``.
- liveness: websocket ping/pong (``heartbeat_s``) on both sides.

Frames travel lossless (raw RGB bytes, PNG or WebP), so a worker scores exactly what local models would.
When a batch needs only CLIP and the pinned CLIP preprocessing is "resize the short side to N, crop N x N,
then tensor steps", the proxy sends the N x N crops (:func:`model_size_geometry`): far fewer bytes (64 x 64
for the tiny CLIP, 224 x 224 for ViT-L-14, against frames of up to 448 px) and no resizing at the worker,
whose own Resize and CenterCrop leave a frame already at the output size unchanged (same scores).

:class:`WorkerPool` is the Scorer: each batch of frames goes to the least-loaded ready peer (connected
workers, and the in-process :class:`Classifier` when ``local``), within each peer's advertised capacity
(back-pressure). A peer lost mid-batch has its frames sent to another; none left: ClassifierNotReady.
This module knows nothing of HTTP: ``proxy.workers`` carries the messages.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import re
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from .batcher import Overloaded
from .engine import Classifier, ClassifierNotReady
from .rules import CLIP_SOURCE, Signal
from .sources import ClipSource, SignalSource

log = logging.getLogger(__name__)

PROTOCOL = 1
MAGIC = b"FFP1"
ENCODINGS = ("raw", "png", "webp")
MAX_HEADER_BYTES = 1 << 20
MAX_FRAME_SIDE = 4096
MAX_KEYS = 4096
MAX_KEY_CHARS = 1024
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_UNANSWERED = 3
"""A worker that leaves this many batches in a row unanswered until their askers give up is dropped."""


class ProtocolError(ValueError):
    """A message that breaks the protocol; the peer that sent it is disconnected."""


class WorkerLost(RuntimeError):
    """The worker went away (or broke the protocol) before answering."""


class WorkerBusy(RuntimeError):
    """The worker answered that it is overloaded or not ready."""


# --- frames on the wire -----------------------------------------------------------------------------

_CLIP_GEOMETRY = re.compile(
    r"Compose\( Resize\(size=(\d+), interpolation=bicubic, max_size=None, antialias=True\) "
    r"CenterCrop\(size=\((\d+), (\d+)\)\) MaybeConvertMode\(\) MaybeToTensor\(\) "
    r"Normalize\(mean=\([-0-9., e]+\), std=\([-0-9., e]+\)\) \)")


@functools.lru_cache(maxsize=8)
def _geometry_side(descriptor: str) -> int | None:
    """N of open_clip's "shortest side to N, centre crop N x N" preprocessing, or None for anything else."""
    match = _CLIP_GEOMETRY.fullmatch(descriptor)
    if match is None or len({match[1], match[2], match[3]}) != 1 or not 0 < int(match[1]) <= MAX_FRAME_SIDE:
        return None
    return int(match[1])


def understood_geometry(descriptor: str) -> bool:
    return _geometry_side(descriptor) is not None


@functools.lru_cache(maxsize=8)
def model_size_geometry(descriptor: str) -> Callable[[Image.Image], Image.Image] | None:
    """The geometric steps of a CLIP preprocessing descriptor (``ClipSource.preprocessing``) when it is
    exactly open_clip's "shortest side to N, bicubic, centre crop N x N, RGB, tensor, normalise": a function
    that runs those steps (resize, crop, then RGB, in that order, as the model's own transform does).
    Anything else: None (frames then travel at their decoded size)."""
    side = _geometry_side(descriptor)
    if side is None:
        return None
    from torchvision import transforms  # blocking the first time: call it off the event loop

    steps = transforms.Compose([transforms.Resize(side, interpolation=transforms.InterpolationMode.BICUBIC,
                                                  antialias=True), transforms.CenterCrop(side)])

    def prepare(frame: Image.Image) -> Image.Image:
        out = steps(frame)
        return out if out.mode == "RGB" else out.convert("RGB")

    return prepare



def encode_frames(frames: list[Image.Image], encoding: str) -> tuple[list[list[Any]], bytes]:
    """Lossless bytes of RGB frames: per frame ``[width, height, encoding, length]`` and the bytes."""
    meta: list[list[Any]] = []
    parts: list[bytes] = []
    for frame in frames:
        rgb = frame if frame.mode == "RGB" else frame.convert("RGB")
        if encoding == "raw":
            data = rgb.tobytes()
        else:
            buf = io.BytesIO()
            if encoding == "png":
                rgb.save(buf, "PNG", compress_level=1)
            else:
                rgb.save(buf, "WEBP", lossless=True, method=0, quality=0)
            data = buf.getvalue()
        meta.append([rgb.width, rgb.height, encoding, len(data)])
        parts.append(data)
    return meta, b"".join(parts)


def _model_size_frames(descriptor: str, frames: list[Image.Image], encoding: str) -> tuple[list[list[Any]], bytes]:
    prepare = model_size_geometry(descriptor)
    assert prepare is not None
    return encode_frames([prepare(f) for f in frames], encoding)


def decode_frames(meta: Any, blob: bytes, max_frames: int) -> list[Image.Image]:
    """The frames of a score message; raises ProtocolError on anything malformed."""
    if not isinstance(meta, list) or not 0 < len(meta) <= max_frames:
        raise ProtocolError(f"expected 1 to {max_frames} frames")
    frames = []
    offset = 0
    for item in meta:
        if (not isinstance(item, list) or len(item) != 4 or not all(type(v) is int for v in (item[0], item[1], item[3]))
                or item[2] not in ENCODINGS):
            raise ProtocolError("bad frame entry")
        width, height, encoding, length = item
        if not (0 < width <= MAX_FRAME_SIDE and 0 < height <= MAX_FRAME_SIDE and 0 < length <= len(blob) - offset):
            raise ProtocolError("frame size or length out of bounds")
        data = blob[offset:offset + length]
        offset += length
        if encoding == "raw":
            if length != width * height * 3:
                raise ProtocolError("raw frame length does not match its size")
            frames.append(Image.frombytes("RGB", (width, height), data))
            continue
        try:
            img = Image.open(io.BytesIO(data), formats=["PNG" if encoding == "png" else "WEBP"])
            if img.size != (width, height):
                raise ProtocolError("frame size differs from its header")
            frames.append(img.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ProtocolError(f"undecodable frame: {exc}") from None
    if offset != len(blob):
        raise ProtocolError("trailing bytes after the frames")
    return frames


def pack(header: Mapping[str, Any], blob: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + blob


def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    if len(data) < 8 or data[:4] != MAGIC:
        raise ProtocolError("not a frames message")
    (size,) = struct.unpack(">I", data[4:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise ProtocolError("header length out of bounds")
    header = loads(data[8:8 + size])
    return header, data[8 + size:]


def loads(raw: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("expected a JSON object")
    return value


def nest(scores: list[dict[Signal, float]]) -> list[dict[str, dict[str, float]]]:
    out: list[dict[str, dict[str, float]]] = []
    for frame in scores:
        grouped: dict[str, dict[str, float]] = {}
        for (source, key), value in frame.items():
            grouped.setdefault(source, {})[key] = value
        out.append(grouped)
    return out


def parse_scores(raw: Any, frames: int, sources: Iterable[str]) -> list[dict[Signal, float]]:
    """A result's scores: one mapping per frame, only the asked sources, finite numbers, bounded keys."""
    wanted = set(sources)
    if not isinstance(raw, list) or len(raw) != frames:
        raise ProtocolError(f"expected scores for {frames} frames")
    out: list[dict[Signal, float]] = []
    for frame in raw:
        if not isinstance(frame, dict) or set(frame) != wanted:
            raise ProtocolError(f"expected scores from exactly {sorted(wanted)}")
        flat: dict[Signal, float] = {}
        for source, values in frame.items():
            if not isinstance(values, dict) or len(values) > MAX_KEYS:
                raise ProtocolError(f"bad scores of {source!r}")
            for key, value in values.items():
                if (not isinstance(key, str) or len(key) > MAX_KEY_CHARS or isinstance(value, bool)
                        or not isinstance(value, int | float) or not math.isfinite(value)):
                    raise ProtocolError(f"bad score in {source!r}")
                flat[(source, key)] = float(value)
        out.append(flat)
    return out


# --- who may score: identities ---------------------------------------------------------------------


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _sha256_state(model: Any) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def source_identity(source: SignalSource) -> dict[str, Any]:
    """What a worker reports of one loaded source. Blocking (hashes the weights): run it off the loop."""
    if isinstance(source, ClipSource):
        model, fingerprint = source.settings.model, _sha256_state(source.model)
        keys = sorted(source._prompts)
    else:
        model = source.name
        fingerprint = _sha256_file(source.weights_path) if source.weights_path else ""
        keys = sorted(source.KEYS or ())
    return {"model": model, "fingerprint": fingerprint, "preprocess": source.preprocessing, "keys": keys}


def classifier_identity(classifier: Classifier) -> dict[str, dict[str, Any]]:
    return {name: source_identity(src) for name, src in classifier.sources.items()}


class Requirements:
    """What a peer must offer: the sources and CLIP prompts the policies read, the configured model, and
    the same weights and preprocessing as every other peer (``fingerprints`` pins them up front)."""

    def __init__(self, signals: Iterable[Signal], clip_model: str, fingerprints: Mapping[str, str]) -> None:
        signals = set(signals)
        self.sources = {s for s, _ in signals}
        self.prompts = {k for s, k in signals if s == CLIP_SOURCE}
        self.clip_model = clip_model
        self.pins: dict[str, dict[str, str]] = {s: {"fingerprint": f} for s, f in fingerprints.items()}
        self.waiting_for_local = False

    def check(self, identity: Mapping[str, Any]) -> str | None:
        """Why a peer with these sources must be refused, or None. Pins what was not pinned yet."""
        if self.waiting_for_local:
            return "the proxy's own models are still loading (workers.local: true); they set the reference"
        for source in sorted(self.sources):
            got = identity.get(source)
            if not isinstance(got, dict):
                return f"it has no {source!r} model (the policies need {sorted(self.sources)})"
            if source == CLIP_SOURCE:
                if got.get("model") != self.clip_model:
                    return f"clip model {got.get('model')!r}, the config says {self.clip_model!r}"
                missing = self.prompts - set(got.get("keys") or ())
                if missing:
                    return f"clip prompts missing: {sorted(missing)[:3]} (run the worker with the same policies)"
            for field in ("fingerprint", "preprocess"):
                want = self.pins.get(source, {}).get(field)
                if want is not None and got.get(field) != want:
                    return f"{source} {field} {str(got.get(field))[:80]!r} differs from {want[:80]!r}"
        for source in self.sources:
            got = identity[source]
            pin = self.pins.setdefault(source, {})
            for field in ("fingerprint", "preprocess"):
                pin.setdefault(field, str(got.get(field)))
        return None


def parse_hello(msg: Mapping[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """(name, capacity, sources) of a hello; raises ProtocolError."""
    if msg.get("type") != "hello" or msg.get("protocol") != PROTOCOL:
        raise ProtocolError(f"expected a protocol {PROTOCOL} hello")
    name, capacity, sources = msg.get("name"), msg.get("capacity"), msg.get("sources")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ProtocolError("name: 1-64 of A-Z a-z 0-9 . _ -")
    if type(capacity) is not int or not 0 < capacity <= 1 << 16:
        raise ProtocolError("capacity: an integer from 1 to 65536")
    if not isinstance(sources, dict) or len(sources) > 16:
        raise ProtocolError("sources: a mapping")
    for value in sources.values():
        if not isinstance(value, dict) or not isinstance(value.get("keys", []), list) or len(value.get("keys", [])) > MAX_KEYS:
            raise ProtocolError("bad source entry")
    return name, capacity, sources


# --- peers and the pool ---------------------------------------------------------------------------


class Peer(ABC):
    """Something that scores frames: the local classifier or a connected worker."""

    name: str
    capacity: int
    remote: bool

    def __init__(self) -> None:
        self.inflight = 0
        self.last_used = 0
        self.frames_scored = 0

    @property
    @abstractmethod
    def ready(self) -> bool: ...

    @abstractmethod
    async def score(self, frames: list[Image.Image], wire: Callable[[], Awaitable[tuple[list[list[Any]], bytes]]],
                    sources: tuple[str, ...]) -> list[dict[Signal, float]]: ...


class LocalPeer(Peer):
    remote = False

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.name = "local"
        self.capacity = classifier.settings.max_queue

    @property
    def ready(self) -> bool:
        return self.classifier.ready

    async def score(self, frames: list[Image.Image], wire: Callable[[], Awaitable[tuple[list[list[Any]], bytes]]],
                    sources: tuple[str, ...]) -> list[dict[Signal, float]]:
        try:
            return await self.classifier.score(frames, sources)
        except (Overloaded, ClassifierNotReady) as exc:
            raise WorkerBusy(str(exc)) from None


class RemotePeer(Peer):
    """A connected worker; ``send`` writes one binary message, ``close`` drops the connection."""

    remote = True

    def __init__(self, name: str, capacity: int, send: Callable[[bytes], Awaitable[None]],
                 close: Callable[[], Coroutine[Any, Any, Any]], *, identity: Any = None,
                 on_rtt: Callable[[str, float], None] | None = None) -> None:
        super().__init__()
        self.name = name
        self.capacity = capacity
        self.identity = identity
        self._send = send
        self.close = close
        self._on_rtt = on_rtt
        self._ids = itertools.count(1)
        self._issued = 0
        self._pending: dict[int, tuple[asyncio.Future[list[dict[Signal, float]]], int, tuple[str, ...], float]] = {}
        self.lost_reason: str | None = None
        self.rtt_s: float | None = None
        self._abandoned = 0
        self._closing: asyncio.Task[Any] | None = None

    @property
    def ready(self) -> bool:
        return self.lost_reason is None

    async def score(self, frames: list[Image.Image], wire: Callable[[], Awaitable[tuple[list[list[Any]], bytes]]],
                    sources: tuple[str, ...]) -> list[dict[Signal, float]]:
        meta, blob = await wire()
        if self.lost_reason is not None:
            raise WorkerLost(self.lost_reason)
        job = self._issued = next(self._ids)
        future: asyncio.Future[list[dict[Signal, float]]] = asyncio.get_running_loop().create_future()
        self._pending[job] = (future, len(frames), sources, time.perf_counter())
        try:
            try:
                await self._send(pack({"type": "score", "id": job, "sources": list(sources), "frames": meta}, blob))
            except (ConnectionError, RuntimeError) as exc:
                self.lost(f"send failed: {exc}")
            return await future
        finally:
            self._pending.pop(job, None)
            if future.cancelled():  # the asker ran out of time with this worker silent
                self._abandoned += 1
                if self._abandoned >= MAX_UNANSWERED and self.lost_reason is None:
                    self.lost(f"no answer to {self._abandoned} batches in a row")
                    self._closing = asyncio.get_running_loop().create_task(self.close())

    def on_message(self, raw: str) -> None:
        """A text message from the worker; raises ProtocolError (the caller disconnects the worker)."""
        msg = loads(raw)
        job = msg.get("id")
        if type(job) is not int or not 0 < job <= self._issued:
            raise ProtocolError("result for a job never sent")
        entry = self._pending.get(job)
        if entry is None:  # the asker gave up (timeout): a late answer, not a fault
            return
        future, count, sources, sent = entry
        kind = msg.get("type")
        if kind == "result":
            scores = parse_scores(msg.get("scores"), count, sources)
            self._abandoned = 0
            self.rtt_s = time.perf_counter() - sent
            if self._on_rtt is not None:
                self._on_rtt(self.name, self.rtt_s)
            if not future.done():
                future.set_result(scores)
        elif kind == "error":
            error = msg.get("error")
            if error not in ("overloaded", "not_ready", "failed"):
                raise ProtocolError("unknown error kind")
            if not future.done():
                future.set_exception(WorkerBusy(f"worker {self.name}: {error}"))
        else:
            raise ProtocolError(f"unexpected message type {str(kind)[:32]!r}")

    def lost(self, reason: str) -> None:
        """The connection is gone: every waiting batch fails over."""
        if self.lost_reason is None:
            self.lost_reason = reason
        for future, *_ in list(self._pending.values()):
            if not future.done():
                future.set_exception(WorkerLost(f"worker {self.name} lost: {reason}"))


class ScoredFrames(list[dict[Signal, float]]):
    """Scores, one mapping per frame, with the peer that scored each frame (``workers``)."""

    workers: list[str]


class WorkerPool:
    """The :class:`Scorer` that spreads batches over peers: connected workers and, when ``local``, the
    in-process classifier (which then counts as one peer)."""

    def __init__(self, local: Classifier | None, requirements: Requirements, *, encoding: str = "webp",
                 max_batch: int = 32, max_queue: int = 1024) -> None:
        self.local = local
        self.requirements = requirements
        self.encoding = encoding
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.peers: list[Peer] = [LocalPeer(local)] if local is not None else []
        self._uses = itertools.count(1)
        self._changed = asyncio.Condition()
        self._waiting = 0
        self._encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="frames-encode")
        self.lost_total = 0
        self._pinning: asyncio.Task[None] | None = None

    # -- Scorer --
    @property
    def ready(self) -> bool:
        return any(p.ready for p in self.peers)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready, "state": "ready" if self.ready else "no_workers"}
        if not self.ready:
            out["reason"] = self.not_ready_reason()
        out["workers"] = [{"name": p.name, "ready": p.ready, "frames_in_flight": p.inflight, "capacity": p.capacity,
                           "frames_scored": p.frames_scored,
                           **({"rtt_ms": round(p.rtt_s * 1000, 1)} if isinstance(p, RemotePeer) and p.rtt_s else {})}
                          for p in self.peers]
        if self.local is not None:
            out["local"] = self.local.status()
        out["queue"] = self.queue_depths()
        return out

    def queue_depths(self) -> dict[str, int]:
        depths = dict(self.local.queue_depths()) if self.local is not None else {}
        depths["workers"] = self._waiting
        return depths

    def not_ready_reason(self) -> str:
        if self.local is not None:
            return f"no worker connected and {self.local.describe_not_ready()}"
        return "no worker connected (workers.local is false: this process runs no models)"

    async def start(self) -> None:
        if self.local is not None:
            self.requirements.waiting_for_local = True
            await self.local.start()
            self._pinning = asyncio.get_running_loop().create_task(self._pin_local(self.local), name="pin-local")

    async def _pin_local(self, local: Classifier) -> None:
        """The in-process models are the reference every worker must match (when they load)."""
        try:
            await local.wait_ready()
            identity = await asyncio.get_running_loop().run_in_executor(self._encoder, classifier_identity, local)
        except ClassifierNotReady:
            return  # /healthz says why; workers then pin the reference themselves
        finally:
            self.requirements.waiting_for_local = False
        reason = self.requirements.check(identity)
        if reason is not None:
            log.error("the in-process models disagree with the configured pins: %s", reason)

    async def wait_ready(self) -> None:
        if self.local is not None:
            await self.local.wait_ready()
        if not self.ready:
            raise ClassifierNotReady(self.not_ready_reason())

    async def close(self) -> None:
        if self._pinning is not None and not self._pinning.done():
            self._pinning.cancel()
        for peer in list(self.peers):
            if isinstance(peer, RemotePeer):
                peer.lost("shutting down")
                await peer.close()
        if self.local is not None:
            await self.local.close()
        self._encoder.shutdown(wait=False, cancel_futures=True)

    async def score(self, frames: list[Image.Image], sources: Iterable[str]) -> list[dict[Signal, float]]:
        names = tuple(sources)
        chunks = [frames[i:i + self.max_batch] for i in range(0, len(frames), self.max_batch)]
        parts = await asyncio.gather(*(self._score_chunk(c, names) for c in chunks))
        out = ScoredFrames()
        out.workers = []
        for scores, worker in parts:
            out.extend(scores)
            out.workers.extend([worker] * len(scores))
        return out

    # -- peers --
    async def add(self, peer: Peer) -> None:
        self.peers.append(peer)
        async with self._changed:
            self._changed.notify_all()

    async def remove(self, peer: Peer) -> None:
        if peer in self.peers:
            self.peers.remove(peer)
        async with self._changed:
            self._changed.notify_all()

    def remote_peers(self) -> list[RemotePeer]:
        return [p for p in self.peers if isinstance(p, RemotePeer)]

    async def _acquire(self, n: int, exclude: list[Peer], busy: bool) -> Peer:
        """A peer with room for ``n`` frames. With none connected: ClassifierNotReady at once, unless a
        peer was lost mid-batch: then wait for another (the caller's timeout bounds the wait)."""
        while True:
            candidates = [p for p in self.peers if p.ready and p not in exclude]
            if not candidates and busy:
                raise Overloaded("every worker is overloaded")
            if not candidates and not exclude:
                raise ClassifierNotReady(self.not_ready_reason())
            free = [p for p in candidates if p.inflight == 0 or p.inflight + n <= p.capacity]
            if free:
                peer = min(free, key=lambda p: (p.inflight / p.capacity, p.last_used))
                peer.inflight += n
                peer.last_used = next(self._uses)
                return peer
            if self._waiting + n > self.max_queue:
                raise Overloaded(f"workers full and {self._waiting} frames waiting")
            self._waiting += n
            try:
                async with self._changed:
                    await self._changed.wait()
            finally:
                self._waiting -= n

    async def _release(self, peer: Peer, n: int) -> None:
        peer.inflight -= n
        async with self._changed:
            self._changed.notify_all()

    def _model_size(self, sources: tuple[str, ...]) -> str | None:
        """The pinned CLIP preprocessing when frames can travel at the model's size: CLIP-only batches
        whose preprocessing :func:`model_size_geometry` understands."""
        if sources != (CLIP_SOURCE,):
            return None
        descriptor = self.requirements.pins.get(CLIP_SOURCE, {}).get("preprocess")
        return descriptor if descriptor is not None and understood_geometry(descriptor) else None

    async def _score_chunk(self, frames: list[Image.Image], sources: tuple[str, ...]) -> tuple[list[dict[Signal, float]], str]:
        encoded: asyncio.Future[tuple[list[list[Any]], bytes]] | None = None

        async def wire() -> tuple[list[list[Any]], bytes]:
            nonlocal encoded
            if encoded is None:
                geometry = self._model_size(sources)
                if geometry is not None:
                    encoded = asyncio.get_running_loop().run_in_executor(
                        self._encoder, _model_size_frames, geometry, frames, self.encoding)
                elif self.encoding == "raw":  # a copy of the pixels: cheaper inline than a thread hop
                    encoded = asyncio.get_running_loop().create_future()
                    encoded.set_result(encode_frames(frames, "raw"))
                else:
                    encoded = asyncio.get_running_loop().run_in_executor(self._encoder, encode_frames, frames,
                                                                         self.encoding)
            return await encoded

        exclude: list[Peer] = []
        busy = False
        while True:
            peer = await self._acquire(len(frames), exclude, busy)
            try:
                scores = await peer.score(frames, wire, sources)
            except WorkerLost as exc:
                self.lost_total += 1
                log.warning("%s; its %d frames go to another worker", exc, len(frames))
                exclude.append(peer)
                continue
            except WorkerBusy as exc:
                log.info("%s; trying another", exc)
                exclude.append(peer)
                busy = True
                continue
            finally:
                await self._release(peer, len(frames))
            peer.frames_scored += len(frames)
            return scores, peer.name
