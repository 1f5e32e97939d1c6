"""Hash kinds and exact hash lists for allow and deny decisions.

A :class:`HashKind` is one class: its name (the ``kind:`` prefix in configs and banks), how a value is
parsed and validated (ThreatExchange's ``validate_signal_str``: normalise or raise ``ValueError``), how it
is computed from the bytes, and when two values match. sha256 and md5 are exact; a perceptual kind
(PDQ) sets ``exact = False`` and overrides :meth:`HashKind.matches` with a distance.

PDQ (Meta's perceptual hash, as ThreatExchange and its hasher-matcher-actioner use it) is computed from the
decoded frames, never from the raw bytes: :func:`pdq_frames` runs in the decode worker right after
decoding. Hashes of quality below :data:`PDQ_MIN_QUALITY` are neither matched nor kept in banks (flat or
nearly blank frames all look alike). :class:`PdqIndex` matches many hashes at once: 256 bits packed into four
uint64 words, XOR and popcount in numpy.

Entries are written ``kind:value``. For compatibility, a bare hex value is read as sha256 or md5 by its
length; any other kind must carry its prefix.

An allow hit wins over the model (how a false positive is fixed for good); a deny hit is final.
"""

from __future__ import annotations

import hashlib
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

_HEX = re.compile(r"[0-9a-f]+")


class HashKind(ABC):
    name: ClassVar[str]
    exact: ClassVar[bool] = True
    """Exact kinds match by equality (a set lookup); others compare every entry with :meth:`matches`."""

    @abstractmethod
    def parse(self, raw: str) -> str:
        """The normalised value, or ValueError naming what is wrong."""

    @abstractmethod
    def compute(self, data: bytes) -> str:
        """The hash of ``data`` (runs off the event loop for large bodies)."""

    def matches(self, a: str, b: str) -> bool:
        return a == b


class _HexDigest(HashKind):
    length: ClassVar[int]

    def parse(self, raw: str) -> str:
        value = raw.strip().lower()
        if len(value) != self.length or not _HEX.fullmatch(value):
            raise ValueError(f"{raw!r} is not a valid {self.name} hash")
        return value


class Sha256(_HexDigest):
    name = "sha256"
    length = 64

    def compute(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


class Md5(_HexDigest):
    name = "md5"
    length = 32

    def compute(self, data: bytes) -> str:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()


PDQ_BITS = 256
PDQ_MIN_QUALITY = 50
"""ThreatExchange's ``PdqSignal.QUALITY_THRESHOLD``: hashes of lower quality are too unreliable to match."""
PDQ_DISTANCE = 31
"""ThreatExchange's ``PDQ_CONFIDENT_MATCH_THRESHOLD``: a match is a Hamming distance of at most this."""


@dataclass(frozen=True)
class PdqHash:
    """The PDQ hash of one frame: 64 hex digits and a quality from 0 to 100."""

    value: str
    quality: int

    @property
    def usable(self) -> bool:
        return self.quality >= PDQ_MIN_QUALITY


def pdq_of(image: Image.Image) -> PdqHash:
    """The PDQ hash of one picture (blocks: run it beside the event loop)."""
    import pdqhash

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    vector, quality = pdqhash.compute(np.asarray(rgb))
    return PdqHash(np.packbits(vector.astype(np.uint8)).tobytes().hex(), int(quality))


def pdq_frames(frames: Sequence[Image.Image], views: Sequence[str] = ()) -> tuple[PdqHash, ...]:
    """PDQ hashes of the whole views among decoded frames (tiles are parts of a frame, not a picture anyone
    re-posts alone), without repeats."""
    out: dict[str, PdqHash] = {}
    for i, frame in enumerate(frames):
        if i < len(views) and " tile " in views[i]:
            continue
        h = pdq_of(frame)
        if h.value not in out or out[h.value].quality < h.quality:
            out[h.value] = h
    return tuple(out.values())


def pack_pdq(values: Iterable[str]) -> np.ndarray:
    """Hex PDQ hashes as an (n, 4) uint64 array (big-endian words, so bit order does not matter for XOR)."""
    raw = b"".join(bytes.fromhex(v) for v in values)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 4)


class Pdq(HashKind):
    name = "pdq"
    exact = False
    length = 64

    def parse(self, raw: str) -> str:
        value = raw.strip().lower()
        if len(value) != self.length or not _HEX.fullmatch(value):
            raise ValueError(f"{raw!r} is not a valid pdq hash (64 hex digits)")
        return value

    def compute(self, data: bytes) -> str:
        """The PDQ hash of a still image's bytes (the pipeline hashes decoded frames instead)."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return pdq_of(img.convert("RGB")).value

    @staticmethod
    def distance(a: str, b: str) -> int:
        return (int(a, 16) ^ int(b, 16)).bit_count()

    def matches(self, a: str, b: str, max_distance: int = PDQ_DISTANCE) -> bool:
        return self.distance(a, b) <= max_distance


@dataclass(frozen=True)
class PdqMatch:
    index: int
    """Position of the matched entry in the index."""
    query: PdqHash
    distance: int


class PdqIndex:
    """Many PDQ hashes, matched by Hamming distance in one vectorised pass: a linear scan over the four
    64-bit words of every hash, each word a contiguous column (XOR, popcount, add), about half a millisecond
    for 100,000 hashes on one core (bench/bench_banks.py)."""

    def __init__(self, values: Sequence[str]) -> None:
        self.values = tuple(values)
        bits = pack_pdq(self.values) if self.values else np.zeros((0, 4), dtype=np.uint64)
        self._columns = np.ascontiguousarray(bits.T)

    def __len__(self) -> int:
        return len(self.values)

    def distances(self, query: str) -> np.ndarray:
        """The Hamming distance of ``query`` to every entry, in entry order."""
        words = pack_pdq([query])[0]
        acc = np.bitwise_count(self._columns[0] ^ words[0]).astype(np.uint16)
        for k in range(1, 4):
            acc += np.bitwise_count(self._columns[k] ^ words[k])
        return acc

    def nearest(self, queries: Iterable[PdqHash], max_distance: int = PDQ_DISTANCE) -> PdqMatch | None:
        """The closest entry to any usable query within ``max_distance``, or None."""
        if not self.values:
            return None
        best: PdqMatch | None = None
        for q in queries:
            if not q.usable:
                continue
            dist = self.distances(q.value)
            j = int(dist.argmin())
            d = int(dist[j])
            if d <= max_distance and (best is None or d < best.distance):
                best = PdqMatch(j, q, d)
        return best


HASH_KINDS: Mapping[str, HashKind] = {k.name: k for k in (Sha256(), Md5(), Pdq())}
_BARE = {Sha256.length: Sha256.name, Md5.length: Md5.name}


def parse_hash(raw: str) -> tuple[str, str]:
    """Normalise ``kind:value`` (or bare sha256/md5 hex) into ``(kind, value)``."""
    text = raw.strip()
    prefix, sep, rest = text.partition(":")
    if sep:
        kind = HASH_KINDS.get(prefix.lower())
        if kind is None:
            raise ValueError(f"{raw!r}: unknown hash kind {prefix!r}; known: {sorted(HASH_KINDS)}")
        return kind.name, kind.parse(rest)
    name = _BARE.get(len(text))
    if name is None or not _HEX.fullmatch(text.lower()):
        raise ValueError(f"{raw!r} is not a valid sha256 or md5 hash (write kind:value, e.g. sha256:<hex>)")
    return name, HASH_KINDS[name].parse(text)


@dataclass(frozen=True)
class HashList:
    """Hash entries by kind; :meth:`match` takes the request's digests by kind."""

    entries: Mapping[str, frozenset[str]] = field(default_factory=dict)
    files: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str]], files: tuple[str, ...] = ()) -> HashList:
        by_kind: dict[str, set[str]] = {}
        for kind, value in entries:
            by_kind.setdefault(kind, set()).add(value)
        return cls({k: frozenset(v) for k, v in by_kind.items()}, files=files)

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds a request must be hashed with to be matched against this list."""
        return frozenset(k for k, v in self.entries.items() if v)

    @property
    def exact_kinds(self) -> frozenset[str]:
        """The kinds matched on the request's bytes, before decoding."""
        return frozenset(k for k in self.kinds if HASH_KINDS[k].exact)

    @cached_property
    def pdq(self) -> PdqIndex:
        return PdqIndex(sorted(self.entries.get(Pdq.name, ())))

    def match(self, digests: Mapping[str, str]) -> str | None:
        """The entry of an exact kind matching the request's digests, as ``kind:value``, or None."""
        for name, values in self.entries.items():
            digest = digests.get(name)
            if digest is None:
                continue
            kind = HASH_KINDS[name]
            if digest in values or (not kind.exact and any(kind.matches(digest, v) for v in values)):
                return f"{name}:{digest}"
        return None

    def match_pdq(self, frames: Iterable[PdqHash], max_distance: int = PDQ_DISTANCE) -> str | None:
        """The PDQ entry within ``max_distance`` of a usable frame hash, described, or None."""
        found = self.pdq.nearest(frames, max_distance)
        if found is None:
            return None
        return f"pdq:{self.pdq.values[found.index]} (distance {found.distance})"
