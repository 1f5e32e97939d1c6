"""Concepts and label rules: how raw signal scores become labels.

Everything here is pure data and pure functions. A *signal* is one named score from one source, e.g.
``("clip", "a photo of a cat")`` (cosine similarity) or ``("nudenet", "FACE_FEMALE")`` (detector
confidence). A *concept* is a set of signals with thresholds; each signal above its threshold is one hit
and each signal above its *critical* threshold counts two hits more (triple suspicion, as horde-safety
does). A *label* holds when all (or any) of its conditions on concept hit counts hold.

Parsing (:func:`parse_signal`, :func:`parse_threshold`) raises ``ValueError`` with a message about the
value; the proxy's config schema declares the YAML shape and adds the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Signal = tuple[str, str]
"""(source name, key within that source)."""

CLIP_SOURCE = "clip"


def parse_signal(raw: str) -> Signal:
    """Parse ``"source.key"`` (a detector score) into a signal.

    >>> parse_signal("nudenet.FACE_FEMALE")
    ('nudenet', 'FACE_FEMALE')
    """
    if not isinstance(raw, str) or "." not in raw:
        raise ValueError(f"{raw!r} is not a signal name; expected 'source.key', e.g. 'open_nsfw.nsfw'")
    source, key = raw.split(".", 1)
    if not source or not key:
        raise ValueError(f"{raw!r} is not a signal name; expected 'source.key', e.g. 'open_nsfw.nsfw'")
    if source == CLIP_SOURCE:
        raise ValueError(f"{raw!r}: CLIP prompts go under 'prompts', not 'signals'")
    return source, key


def parse_threshold(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"{raw!r} is not a number")
    value = float(raw)
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"{raw!r} is outside [-1, 1]")
    return value


@dataclass(frozen=True)
class Concept:
    name: str
    thresholds: Mapping[Signal, float]
    critical: Mapping[Signal, float] = field(default_factory=dict)

    def hits(self, scores: Mapping[Signal, float]) -> int:
        n = sum(1 for s, t in self.thresholds.items() if scores.get(s, float("-inf")) > t)
        n += sum(2 for s, t in self.critical.items() if scores.get(s, float("-inf")) > t)
        return n


@dataclass(frozen=True)
class Adjustment:
    """When ``when`` scores above ``above``, add ``add`` to other scores (horde-safety's control words:
    e.g. a high 'pregnant' score lowers 'infant', which CLIP confuses with it)."""

    when: Signal
    above: float
    add: Mapping[Signal, float]


@dataclass(frozen=True)
class Condition:
    concept: str
    min_hits: int = 1


@dataclass(frozen=True)
class LabelRule:
    name: str
    conditions: tuple[Condition, ...]
    mode: str = "all"  # "all" | "any"

    def holds(self, hits: Mapping[str, int]) -> bool:
        results = (hits.get(c.concept, 0) >= c.min_hits for c in self.conditions)
        return all(results) if self.mode == "all" else any(results)


@dataclass(frozen=True)
class FrameResult:
    scores: dict[Signal, float]
    hits: dict[str, int]
    labels: frozenset[str]


@dataclass(frozen=True)
class Rules:
    concepts: tuple[Concept, ...]
    labels: tuple[LabelRule, ...]
    adjustments: tuple[Adjustment, ...] = ()

    def signals(self) -> set[Signal]:
        """Every signal these rules read: what the classifier must compute for them."""
        out: set[Signal] = set()
        for c in self.concepts:
            out.update(c.thresholds)
            out.update(c.critical)
        for a in self.adjustments:
            out.add(a.when)
            out.update(a.add)
        return out

    def sources(self) -> set[str]:
        return {source for source, _ in self.signals()}

    def evaluate(self, raw_scores: Mapping[Signal, float]) -> FrameResult:
        scores = dict(raw_scores)
        for adj in self.adjustments:
            if raw_scores.get(adj.when, float("-inf")) > adj.above:
                for sig, delta in adj.add.items():
                    if sig in scores:
                        scores[sig] += delta
        hits = {c.name: c.hits(scores) for c in self.concepts}
        labels = frozenset(rule.name for rule in self.labels if rule.holds(hits))
        return FrameResult(scores=scores, hits=hits, labels=labels)
