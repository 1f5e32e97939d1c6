"""What a verdict means: typed values with their behaviour written once.

- :class:`Action`: what happens to the media (accept, reject, strip, drop, quarantine), with severity.
- :class:`Fallback`: the two answers a policy may give when no judgement is possible (``on_error``,
  ``on_invalid``, ``on_unsupported``): accept (fail open, counted) or reject (fail closed).
- :class:`DecidedBy`: how a verdict was reached; says whether it is a judgement of the content itself and
  whether it is remembered for these bytes (only a model's verdict is cached; a hash bank hit is not,
  since a bank may change).
- Problem kinds, each naming the policy key whose fallback applies:
  :class:`ErrorKind` (our failure: not ready, overloaded, timeout, internal; retryable or not),
  :class:`InvalidKind` (hostile or undecodable bytes), :class:`FetchErrorKind` (a URL we could not fetch).
- :class:`Outcome`: the judgement of some bytes (action, labels, scores, how); :class:`Verdict`: an outcome
  plus who asked (sha256, source, instance, policy, latency), as every interception point sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    ACCEPT = "accept"
    STRIP = "strip"
    DROP = "drop"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        """accept < strip < drop < quarantine < reject: the most severe action of several labels wins."""
        return list(Action).index(self)

    @classmethod
    def most_severe(cls, actions: Any) -> Action:
        return max(actions, key=lambda a: a.severity, default=cls.ACCEPT)


class Fallback(StrEnum):
    """A policy's answer when no judgement is possible."""

    REJECT = "reject"
    ACCEPT = "accept"

    @property
    def action(self) -> Action:
        return Action.ACCEPT if self is Fallback.ACCEPT else Action.REJECT


class InboxAction(StrEnum):
    """What a flagged inbox delivery gets."""

    REJECT = "reject"
    DROP = "drop"
    STRIP = "strip"
    PASS = "pass"


class DecidedBy(StrEnum):
    MODEL = "model"
    CACHE = "cache"
    ALLOWLIST = "allowlist"
    DENYLIST = "denylist"
    INVALID = "invalid"
    ERROR = "error"
    NO_RULES = "no_rules"
    NO_FRAMES = "no_frames"
    DENIED_URL = "denied_url"
    FETCH = "fetch"
    NOT_MEDIA = "not_media"
    BANK = "bank"
    """A hash bank matched (``detail`` names the bank and entry): exactly, or a PDQ within pdq_distance."""

    @property
    def judged_content(self) -> bool:
        """The verdict is about these very bytes (a model, a cached model verdict, a list or bank hit): it
        may be cached by URL, and a refusal denies the URL downstream."""
        return self in (DecidedBy.MODEL, DecidedBy.CACHE, DecidedBy.ALLOWLIST, DecidedBy.DENYLIST, DecidedBy.BANK)

    @property
    def learns(self) -> bool:
        """A refusal decided this way puts the file's hashes into the instance's ``own`` bank: only a
        classifier label does (never on_error, on_invalid, on_unsupported or overload, nor a bank hit)."""
        return self is DecidedBy.MODEL


class ErrorKind(StrEnum):
    """No verdict through our own failure; the policy's ``on_error`` applies."""

    NOT_READY = "not_ready"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    INTERNAL = "internal"

    @property
    def retryable(self) -> bool:
        """The same request may succeed later (a 503 with Retry-After, not a final refusal)."""
        return self is not ErrorKind.INTERNAL

    @property
    def policy_key(self) -> str:
        return "on_error"


class InvalidKind(StrEnum):
    """Media refused as undecodable or hostile; ``on_invalid`` applies (``on_unsupported`` for files that are
    no media we decode)."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    UNSUPPORTED = "unsupported"
    CORRUPT = "corrupt"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_MANY_FRAMES = "too_many_frames"
    TIMEOUT = "timeout"
    EXTERNAL = "external"
    """An SVG that loads something from outside itself: what it shows cannot be judged here."""

    @property
    def retryable(self) -> bool:
        return False

    @property
    def policy_key(self) -> str:
        return "on_unsupported" if self is InvalidKind.UNSUPPORTED else "on_invalid"


class FetchErrorKind(StrEnum):
    """A URL the proxy could not fetch; ``blocked`` (SSRF) is always refused, the rest get ``on_error``."""

    BLOCKED = "blocked"
    BAD_URL = "bad_url"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    HTTP = "http"
    NETWORK = "network"
    REDIRECTS = "redirects"

    @property
    def retryable(self) -> bool:
        return False

    @property
    def policy_key(self) -> str | None:
        return None if self is FetchErrorKind.BLOCKED else "on_error"


ProblemKind = ErrorKind | InvalidKind | FetchErrorKind


@dataclass(frozen=True)
class Outcome:
    """A judgement of some bytes or a URL, before it is attributed to a request."""

    action: Action
    decided_by: DecidedBy
    labels: tuple[str, ...] = ()
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    detail: str | None = None
    mime: str | None = None
    error_kind: ProblemKind | None = None
    frames: int | None = None
    sha256: str | None = None
    """Set when the outcome carries the digest of bytes other than the request's own (a URL's)."""
    worker: str | None = None
    """Which scorer(s) scored the frames (``local``, a remote worker's name; comma-separated)."""


@dataclass(frozen=True)
class Verdict:
    sha256: str
    action: Action
    labels: tuple[str, ...]
    scores: dict[str, dict[str, float]]
    source: str
    """The way in that asked: validate, scan, upload, ingest, inbox, egress."""
    instance: str
    latency_ms: float
    decided_by: DecidedBy
    detail: str | None = None
    mime: str | None = None
    error_kind: ProblemKind | None = None
    policy: str = ""
    frames: int | None = None
    worker: str | None = None

    @classmethod
    def of(cls, outcome: Outcome, *, sha256: str, source: str, instance: str, policy: str, latency_ms: float) -> Verdict:
        """The one way a verdict is made: an outcome attributed to the request that asked."""
        return cls(
            sha256=outcome.sha256 if outcome.sha256 is not None else sha256, action=outcome.action,
            labels=outcome.labels, scores=outcome.scores, source=source, instance=instance, latency_ms=latency_ms,
            decided_by=outcome.decided_by, detail=outcome.detail, mime=outcome.mime, error_kind=outcome.error_kind,
            policy=policy, frames=outcome.frames, worker=outcome.worker,
        )

    @property
    def accepted(self) -> bool:
        return self.action is Action.ACCEPT

    @property
    def flags_media(self) -> bool:
        """Refused because the media itself is unwanted (not: could not be fetched, judged or decoded)."""
        return not self.accepted and (self.decided_by.judged_content or self.decided_by is DecidedBy.DENIED_URL)

    @property
    def denies_url(self) -> bool:
        """A refusal of judged content: the URL it came from must not be fetched or stored downstream."""
        return not self.accepted and self.decided_by.judged_content

    @property
    def retryable(self) -> bool:
        """Refused only because no verdict could be reached in time: the client may retry (503)."""
        return (not self.accepted and self.decided_by is DecidedBy.ERROR and self.error_kind is not None
                and self.error_kind.retryable)

    @property
    def reason(self) -> str:
        """Why, in a few words: the detail, else the labels, else how it was decided."""
        return self.detail or ", ".join(self.labels) or str(self.decided_by)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sha256": self.sha256,
            "action": str(self.action),
            "labels": list(self.labels),
            "scores": self.scores,
            "source": self.source,
            "instance": self.instance,
            "latency_ms": round(self.latency_ms, 2),
            "decided_by": str(self.decided_by),
            "policy": self.policy,
        }
        for key in ("detail", "mime", "error_kind", "frames"):
            value = getattr(self, key)
            if value is not None:
                out[key] = str(value) if key == "error_kind" else value
        return out
