"""Verdict meanings are types with their behaviour beside them."""

from proxy.verdict import Action, DecidedBy, ErrorKind, FetchErrorKind, InvalidKind, Outcome, Verdict


def verdict(action: Action, decided_by: DecidedBy, error_kind: ErrorKind | InvalidKind | FetchErrorKind | None = None) -> Verdict:
    return Verdict.of(Outcome(action, decided_by, error_kind=error_kind), sha256="s", source="validate", instance="i",
                      policy="p", latency_ms=1.0)


def test_the_most_severe_action_wins() -> None:
    assert Action.most_severe([]) is Action.ACCEPT
    assert Action.most_severe([Action.STRIP, Action.REJECT, Action.DROP]) is Action.REJECT
    assert Action.most_severe([Action.STRIP, Action.QUARANTINE]) is Action.QUARANTINE
    assert [a.value for a in sorted(Action, key=lambda a: a.severity)] == ["accept", "strip", "drop", "quarantine", "reject"]


def test_retryable_only_for_our_own_passing_failures() -> None:
    assert verdict(Action.REJECT, DecidedBy.ERROR, ErrorKind.OVERLOADED).retryable
    assert verdict(Action.REJECT, DecidedBy.ERROR, ErrorKind.NOT_READY).retryable
    assert verdict(Action.REJECT, DecidedBy.ERROR, ErrorKind.TIMEOUT).retryable
    assert not verdict(Action.REJECT, DecidedBy.ERROR, ErrorKind.INTERNAL).retryable
    assert not verdict(Action.ACCEPT, DecidedBy.ERROR, ErrorKind.OVERLOADED).retryable  # on_error: accept
    assert not verdict(Action.REJECT, DecidedBy.INVALID, InvalidKind.TIMEOUT).retryable  # the media's own fault
    assert not verdict(Action.REJECT, DecidedBy.MODEL).retryable


def test_which_refusals_flag_the_media_and_deny_its_url() -> None:
    for by in (DecidedBy.MODEL, DecidedBy.CACHE, DecidedBy.DENYLIST):
        v = verdict(Action.REJECT, by)
        assert v.flags_media and v.denies_url, by
    denied = verdict(Action.REJECT, DecidedBy.DENIED_URL)
    assert denied.flags_media and not denied.denies_url  # already denied
    for by in (DecidedBy.ERROR, DecidedBy.INVALID, DecidedBy.FETCH):
        v = verdict(Action.REJECT, by)
        assert not v.flags_media and not v.denies_url, by
    assert not verdict(Action.ACCEPT, DecidedBy.MODEL).flags_media


def test_problem_kinds_name_their_policy_fallback() -> None:
    assert ErrorKind.OVERLOADED.policy_key == "on_error"
    assert InvalidKind.CORRUPT.policy_key == "on_invalid"
    assert InvalidKind.UNSUPPORTED.policy_key == "on_unsupported"
    assert FetchErrorKind.TIMEOUT.policy_key == "on_error"
    assert FetchErrorKind.BLOCKED.policy_key is None  # never a fallback: always refused


def test_json_shape() -> None:
    v = Verdict.of(Outcome(Action.REJECT, DecidedBy.INVALID, detail="bad", error_kind=InvalidKind.CORRUPT, mime="image/png"),
                   sha256="ab", source="upload", instance="m", policy="p", latency_ms=1.234)
    assert v.to_json() == {"sha256": "ab", "action": "reject", "labels": [], "scores": {}, "source": "upload",
                           "instance": "m", "latency_ms": 1.23, "decided_by": "invalid", "policy": "p", "detail": "bad",
                           "mime": "image/png", "error_kind": "corrupt"}
    assert v.reason == "bad"
