"""Concepts and label rules: how raw signal scores become labels.

Everything here is pure data and pure functions. A *signal* is one named score from one source, e.g.
``("clip", "a photo of a cat")`` (cosine similarity) or ``("nudenet", "FACE_FEMALE")`` (detector
confidence). A *concept* is a set of signals with thresholds; each signal above its threshold is one hit
and each signal above its *critical* threshold counts two hits more (triple suspicion, as horde-safety
does). A *label* holds when all (or any) of its conditions on concept hit counts hold.

Parsing raises ``ValueError`` with a message about the value; the config loader adds the YAML path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


class RuleError(ValueError):
    """A rules parse error at a path relative to the policy (e.g. ``labels.csam.all[0].concept``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _mapping(raw: Any, path: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RuleError(path, f"expected a mapping, got {type(raw).__name__}")
    return raw


def _check_keys(raw: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
    allowed = set(allowed)
    for key in raw:
        if key not in allowed:
            raise RuleError(f"{path}.{key}", f"unknown key; expected one of {sorted(allowed)}")


def _thresholds(raw: Any, path: str, *, prompts: bool) -> dict[Signal, float]:
    out: dict[Signal, float] = {}
    for key, value in _mapping(raw, path).items():
        p = f"{path}[{key!r}]"
        try:
            sig = (CLIP_SOURCE, str(key)) if prompts else parse_signal(key)
            out[sig] = parse_threshold(value)
        except ValueError as exc:
            raise RuleError(p, str(exc)) from None
    return out


def _signal_ref(raw: Mapping[str, Any], path: str) -> Signal:
    if "prompt" in raw and "signal" not in raw:
        return (CLIP_SOURCE, str(raw["prompt"]))
    if "signal" in raw and "prompt" not in raw:
        try:
            return parse_signal(raw["signal"])
        except ValueError as exc:
            raise RuleError(f"{path}.signal", str(exc)) from None
    raise RuleError(path, "expected exactly one of 'prompt' or 'signal'")


def parse_rules(concepts_raw: Any, labels_raw: Any, adjustments_raw: Any = None, path: str = "") -> Rules:
    """Build :class:`Rules` from the policy's ``concepts``, ``labels`` and ``adjustments`` sections."""
    prefix = f"{path}." if path else ""
    concepts: list[Concept] = []
    for name, body in _mapping(concepts_raw, f"{prefix}concepts").items():
        p = f"{prefix}concepts.{name}"
        body = _mapping(body, p)
        _check_keys(body, ("prompts", "critical", "signals", "critical_signals"), p)
        thresholds = _thresholds(body.get("prompts"), f"{p}.prompts", prompts=True)
        thresholds.update(_thresholds(body.get("signals"), f"{p}.signals", prompts=False))
        critical = _thresholds(body.get("critical"), f"{p}.critical", prompts=True)
        critical.update(_thresholds(body.get("critical_signals"), f"{p}.critical_signals", prompts=False))
        if not thresholds and not critical:
            raise RuleError(p, "a concept needs at least one prompt or signal")
        concepts.append(Concept(str(name), thresholds, critical))
    names = {c.name for c in concepts}

    labels: list[LabelRule] = []
    for name, body in _mapping(labels_raw, f"{prefix}labels").items():
        p = f"{prefix}labels.{name}"
        body = _mapping(body, p)
        _check_keys(body, ("all", "any"), p)
        if len(body) != 1:
            raise RuleError(p, "expected exactly one of 'all' or 'any'")
        mode, conds_raw = next(iter(body.items()))
        if not isinstance(conds_raw, list) or not conds_raw:
            raise RuleError(f"{p}.{mode}", "expected a non-empty list of conditions")
        conds: list[Condition] = []
        for i, cond in enumerate(conds_raw):
            cp = f"{p}.{mode}[{i}]"
            cond = _mapping(cond, cp)
            _check_keys(cond, ("concept", "min_hits"), cp)
            concept = cond.get("concept")
            if concept not in names:
                raise RuleError(f"{cp}.concept", f"{concept!r} is not a concept of this policy; known: {sorted(names)}")
            min_hits = cond.get("min_hits", 1)
            if isinstance(min_hits, bool) or not isinstance(min_hits, int) or min_hits < 1:
                raise RuleError(f"{cp}.min_hits", f"{min_hits!r} is not a positive integer")
            conds.append(Condition(str(concept), min_hits))
        labels.append(LabelRule(str(name), tuple(conds), mode))

    adjustments: list[Adjustment] = []
    if adjustments_raw is not None and not isinstance(adjustments_raw, list):
        raise RuleError(f"{prefix}adjustments", "expected a list")
    for i, body in enumerate(adjustments_raw or []):
        p = f"{prefix}adjustments[{i}]"
        body = _mapping(body, p)
        _check_keys(body, ("when", "add"), p)
        when = _mapping(body.get("when"), f"{p}.when")
        _check_keys(when, ("prompt", "signal", "above"), f"{p}.when")
        try:
            above = parse_threshold(when.get("above"))
        except ValueError as exc:
            raise RuleError(f"{p}.when.above", str(exc)) from None
        add = _thresholds(body.get("add"), f"{p}.add", prompts=True)
        if not add:
            raise RuleError(f"{p}.add", "expected at least one prompt to adjust")
        adjustments.append(Adjustment(_signal_ref(when, f"{p}.when"), above, add))

    return Rules(tuple(concepts), tuple(labels), tuple(adjustments))
