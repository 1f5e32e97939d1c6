import pytest

from classifier.rules import CLIP_SOURCE, RuleError, parse_rules, parse_signal


def clip(p: str) -> tuple[str, str]:
    return (CLIP_SOURCE, p)


CONCEPTS = {
    "young": {"prompts": {"child": 0.2, "teen": 0.2, "toddler": 0.2}, "critical": {"child": 0.3}},
    "lewd": {"prompts": {"nudity": 0.2}, "signals": {"open_nsfw.nsfw": 0.8}},
}
LABELS = {
    "both": {"all": [{"concept": "young", "min_hits": 3}, {"concept": "lewd"}]},
    "either": {"any": [{"concept": "young", "min_hits": 2}, {"concept": "lewd"}]},
}


def test_hits_count_thresholds_strictly_above_and_critical_counts_triple() -> None:
    rules = parse_rules(CONCEPTS, LABELS)
    r = rules.evaluate({clip("child"): 0.2, clip("teen"): 0.21})
    assert r.hits == {"young": 1, "lewd": 0}  # 0.2 is not above 0.2
    r = rules.evaluate({clip("child"): 0.31})
    assert r.hits["young"] == 3  # one hit + two for critical
    assert r.labels == frozenset({"either"})
    r = rules.evaluate({clip("child"): 0.31, ("open_nsfw", "nsfw"): 0.9})
    assert r.labels == frozenset({"both", "either"})


def test_missing_scores_never_hit() -> None:
    rules = parse_rules(CONCEPTS, LABELS)
    assert rules.evaluate({}).labels == frozenset()


def test_adjustments_shift_scores_only_when_control_is_above() -> None:
    rules = parse_rules(
        CONCEPTS, LABELS, [{"when": {"prompt": "pregnant", "above": 0.21}, "add": {"toddler": -0.05}}]
    )
    base = {clip("toddler"): 0.22, clip("pregnant"): 0.2}
    assert rules.evaluate(base).hits["young"] == 1
    adjusted = rules.evaluate({**base, clip("pregnant"): 0.25})
    assert adjusted.hits["young"] == 0
    assert adjusted.scores[clip("toddler")] == pytest.approx(0.17)


def test_signals_and_sources_list_everything_read() -> None:
    rules = parse_rules(CONCEPTS, LABELS, [{"when": {"signal": "nudenet.FACE_FEMALE", "above": 0.5}, "add": {"teen": 0.01}}])
    assert ("nudenet", "FACE_FEMALE") in rules.signals()
    assert rules.sources() == {"clip", "open_nsfw", "nudenet"}


@pytest.mark.parametrize(
    ("concepts", "labels", "path", "needle"),
    [
        (CONCEPTS, {"x": {"all": [{"concept": "nope"}]}}, "policies.p.labels.x.all[0].concept", "'nope' is not a concept"),
        (CONCEPTS, {"x": {"all": [{"concept": "young", "min_hits": 0}]}}, "policies.p.labels.x.all[0].min_hits", "positive"),
        (CONCEPTS, {"x": {"all": [], }}, "policies.p.labels.x.all", "non-empty"),
        (CONCEPTS, {"x": {"both": []}}, "policies.p.labels.x.both", "unknown key"),
        ({"c": {"prompts": {"cat": "high"}}}, {}, "policies.p.concepts.c.prompts['cat']", "not a number"),
        ({"c": {"prompts": {"cat": 2}}}, {}, "policies.p.concepts.c.prompts['cat']", "outside"),
        ({"c": {"signals": {"nsfw": 0.5}}}, {}, "policies.p.concepts.c.signals['nsfw']", "source.key"),
        ({"c": {}}, {}, "policies.p.concepts.c", "at least one"),
    ],
)
def test_parse_errors_name_the_path(concepts, labels, path, needle) -> None:
    with pytest.raises(RuleError) as info:
        parse_rules(concepts, labels, path="policies.p")
    assert info.value.path == path
    assert needle in info.value.message


def test_parse_signal() -> None:
    assert parse_signal("nudenet.FACE_MALE") == ("nudenet", "FACE_MALE")
    for bad in ("nsfw", ".x", "clip.cat", "x."):
        with pytest.raises(ValueError):
            parse_signal(bad)
