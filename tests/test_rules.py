"""The rules engine: how raw signal scores become labels (pure data and functions)."""

import pytest

from classifier.rules import CLIP_SOURCE, Adjustment, Concept, Condition, LabelRule, Rules, parse_signal


def clip(p: str) -> tuple[str, str]:
    return (CLIP_SOURCE, p)


CONCEPTS = (
    Concept("young", {clip("child"): 0.2, clip("teen"): 0.2, clip("toddler"): 0.2}, {clip("child"): 0.3}),
    Concept("lewd", {clip("nudity"): 0.2, ("open_nsfw", "nsfw"): 0.8}),
)
LABELS = (
    LabelRule("both", (Condition("young", 3), Condition("lewd")), "all"),
    LabelRule("either", (Condition("young", 2), Condition("lewd")), "any"),
)


def test_hits_count_thresholds_strictly_above_and_critical_counts_triple() -> None:
    rules = Rules(CONCEPTS, LABELS)
    r = rules.evaluate({clip("child"): 0.2, clip("teen"): 0.21})
    assert r.hits == {"young": 1, "lewd": 0}  # 0.2 is not above 0.2
    r = rules.evaluate({clip("child"): 0.31})
    assert r.hits["young"] == 3  # one hit + two for critical
    assert r.labels == frozenset({"either"})
    r = rules.evaluate({clip("child"): 0.31, ("open_nsfw", "nsfw"): 0.9})
    assert r.labels == frozenset({"both", "either"})


def test_missing_scores_never_hit() -> None:
    assert Rules(CONCEPTS, LABELS).evaluate({}).labels == frozenset()


def test_adjustments_shift_scores_only_when_control_is_above() -> None:
    rules = Rules(CONCEPTS, LABELS, (Adjustment(clip("pregnant"), 0.21, {clip("toddler"): -0.05}),))
    base = {clip("toddler"): 0.22, clip("pregnant"): 0.2}
    assert rules.evaluate(base).hits["young"] == 1
    adjusted = rules.evaluate({**base, clip("pregnant"): 0.25})
    assert adjusted.hits["young"] == 0
    assert adjusted.scores[clip("toddler")] == pytest.approx(0.17)


def test_signals_and_sources_list_everything_read() -> None:
    rules = Rules(CONCEPTS, LABELS, (Adjustment(("nudenet", "FACE_FEMALE"), 0.5, {clip("teen"): 0.01}),))
    assert ("nudenet", "FACE_FEMALE") in rules.signals()
    assert rules.sources() == {"clip", "open_nsfw", "nudenet"}


def test_parse_signal() -> None:
    assert parse_signal("nudenet.FACE_MALE") == ("nudenet", "FACE_MALE")
    for bad in ("nsfw", ".x", "clip.cat", "x."):
        with pytest.raises(ValueError):
            parse_signal(bad)
