"""The one verdict pipeline every interception point calls.

identify (sha256, cache) -> lists (deny, allow) -> decode (bounded) -> classify (batched) -> decide
(policy) -> record (audit, metrics). Nothing is waved through silently: media that cannot be judged gets
the policy's ``on_invalid`` (hostile or undecodable bytes) or ``on_error`` (our failure: classifier not
ready, overload, timeout), and every fail-open is logged and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import TTLCache

from classifier import Classifier, ClassifierNotReady, Overloaded, Signal

from .audit import AuditRow, AuditStore, DeniedUrl
from .config import Config, Instance, Policy
from .fetch import Fetcher, FetchError
from .media import Decoded, MediaError, decode, sniff
from .metrics import Metrics

log = logging.getLogger(__name__)

HASH_INLINE_BYTES = 256 * 1024
"""Bodies above this are hashed in the worker pool, not on the event loop."""


@dataclass(frozen=True)
class Verdict:
    sha256: str
    action: str
    labels: tuple[str, ...]
    scores: dict[str, dict[str, float]]
    source: str
    instance: str
    latency_ms: float
    decided_by: str
    """model | cache | allowlist | denylist | invalid | error | no_rules | no_frames | denied_url | fetch | not_media"""
    detail: str | None = None
    mime: str | None = None
    error_kind: str | None = None
    """invalid: MediaError.KINDS; error: not_ready | overloaded | timeout | internal; fetch: FetchError kinds."""
    policy: str = ""
    frames: int | None = None

    @property
    def accepted(self) -> bool:
        return self.action == "accept"

    @property
    def reason(self) -> str:
        """Why, in a few words: the detail, else the labels, else how it was decided."""
        return self.detail or ", ".join(self.labels) or self.decided_by

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sha256": self.sha256,
            "action": self.action,
            "labels": list(self.labels),
            "scores": self.scores,
            "source": self.source,
            "instance": self.instance,
            "latency_ms": round(self.latency_ms, 2),
            "decided_by": self.decided_by,
            "policy": self.policy,
        }
        for key in ("detail", "mime", "error_kind", "frames"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _digest(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()


def _group_scores(scores: dict[Signal, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (source, key), value in sorted(scores.items()):
        out.setdefault(source, {})[key] = round(value, 4)
    return out


class Pipeline:
    def __init__(
        self, config: Config, classifier: Classifier, audit: AuditStore | None, metrics: Metrics,
        fetcher: Fetcher | None = None,
    ) -> None:
        self.config = config
        self.classifier = classifier
        self.audit = audit
        self.metrics = metrics
        self.fetcher = fetcher
        self.cache: TTLCache[tuple[str, str], Verdict] = TTLCache(
            maxsize=config.server.cache_size, ttl=config.server.cache_ttl_s
        )
        self.url_cache: TTLCache[tuple[str, str], Verdict] = TTLCache(
            maxsize=config.server.cache_size, ttl=config.server.cache_ttl_s
        )
        self.denied_urls: TTLCache[str, str] = TTLCache(maxsize=config.server.cache_size, ttl=config.server.cache_ttl_s)
        self._pool = ThreadPoolExecutor(max_workers=config.server.decode_workers, thread_name_prefix="decode")
        self._inflight: dict[tuple[str, str], asyncio.Task[dict[str, Any]]] = {}

    async def warm_cache(self) -> int:
        if self.audit is None:
            return 0
        rows = await self.audit.recent_model_verdicts(self.config.server.cache_ttl_s, self.config.server.cache_size)
        for row in rows:
            self.cache[(row["sha256"], row["policy"])] = _from_audit(row["sha256"], row["policy"], row)
        return len(rows)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def judge(self, data: bytes, instance: Instance, source: str, *, url: str | None = None) -> Verdict:
        """Judge one media body for one instance. Never raises for bad media or classifier trouble."""
        started = time.perf_counter()
        policy = instance.policy
        loop = asyncio.get_running_loop()
        if len(data) > HASH_INLINE_BYTES:
            sha256, md5 = await loop.run_in_executor(self._pool, _digest, data)
        else:
            sha256, md5 = _digest(data)

        def finish(**kw: Any) -> Verdict:
            v = Verdict(
                sha256=sha256, source=source, instance=instance.name, policy=policy.name,
                latency_ms=(time.perf_counter() - started) * 1000, **kw,
            )
            self.record(v, policy, url)
            return v

        deny = policy.deny.match(sha256, md5)
        if deny:
            self.metrics.list_hits.labels("deny").inc()
            return finish(action="reject", labels=("denylist",), scores={}, decided_by="denylist", detail=deny)
        allow = policy.allow.match(sha256, md5)
        if allow:
            self.metrics.list_hits.labels("allow").inc()
            return finish(action="accept", labels=(), scores={}, decided_by="allowlist", detail=allow)

        cached = await self._cached(sha256, policy)
        if cached is not None:
            self.metrics.cache_hits.inc()
            return finish(action=cached.action, labels=cached.labels, scores=cached.scores, decided_by="cache", mime=cached.mime)

        # one judgement per (sha256, policy) at a time: concurrent requests for the same bytes (a flood of
        # one upload, an inbox prefetch racing the backend's own fetch) share it
        key = (sha256, policy.name)
        task = self._inflight.get(key)
        shared = task is not None
        if task is None:
            task = loop.create_task(self._decide(data, policy, sha256, source, started))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        outcome = await asyncio.shield(task)
        if shared and outcome["decided_by"] == "model":
            self.metrics.cache_hits.inc()
            outcome = {**outcome, "decided_by": "cache"}
        verdict = finish(**outcome)
        if not shared and verdict.decided_by == "model":
            self.cache[key] = verdict
            if verdict.action == "quarantine" and policy.quarantine_dir:
                await loop.run_in_executor(self._pool, _quarantine, policy.quarantine_dir, sha256, data)
        return verdict

    async def _decide(self, data: bytes, policy: Policy, sha256: str, source: str, started: float) -> dict[str, Any]:
        """Decode and classify: the fields of a verdict. Never raises."""
        loop = asyncio.get_running_loop()
        try:
            decoded = await asyncio.wait_for(
                loop.run_in_executor(self._pool, decode, data, policy.limits),
                policy.limits.decode_timeout_ms / 1000 + 1.0,
            )
        except MediaError as exc:
            return self._invalid(policy, exc.kind, str(exc), sha256, source)
        except TimeoutError:
            return self._invalid(policy, "timeout", "decoding took too long", sha256, source)

        sources = policy.rules.sources()
        if not sources:
            return {"action": "accept", "labels": (), "scores": {}, "decided_by": "no_rules", "mime": decoded.mime}
        if not decoded.frames:  # audio without cover art
            return {"action": "accept", "labels": (), "scores": {}, "decided_by": "no_frames", "mime": decoded.mime}
        remaining = policy.timeout_ms / 1000 - (time.perf_counter() - started)
        try:
            frame_scores = await asyncio.wait_for(self.classifier.score(decoded.frames, sources), max(remaining, 0.001))
        except ClassifierNotReady as exc:
            return self._error(policy, "not_ready", str(exc), decoded, sha256, source)
        except Overloaded as exc:
            self.metrics.overload.labels("classifier").inc()
            return self._error(policy, "overloaded", str(exc), decoded, sha256, source)
        except TimeoutError:
            return self._error(policy, "timeout", f"no verdict within {policy.timeout_ms} ms", decoded, sha256, source)
        except Exception as exc:  # a model crash must not take the server down or pass media silently
            log.exception("classifier failed on %s", sha256[:12])
            return self._error(policy, "internal", f"classifier error: {exc}", decoded, sha256, source)

        labels: set[str] = set()
        worst: dict[Signal, float] = {}
        for scores in frame_scores:
            result = policy.rules.evaluate(scores)
            labels |= result.labels
            for sig, value in result.scores.items():
                worst[sig] = max(value, worst.get(sig, float("-inf")))
        return {
            "action": policy.action_for(labels), "labels": tuple(sorted(labels)), "scores": _group_scores(worst),
            "decided_by": "model", "mime": decoded.mime, "frames": len(decoded.frames),
        }

    async def _cached(self, sha256: str, policy: Policy) -> Verdict | None:
        """A verdict from memory, or one another process sharing the audit store reached (egress/serve)."""
        cached = self.cache.get((sha256, policy.name))
        if cached is None and self.audit is not None:
            row = await self.audit.model_verdict(sha256, policy.name, self.config.server.cache_ttl_s)
            if row is not None:
                cached = self.cache[(sha256, policy.name)] = _from_audit(sha256, policy.name, row)
        return cached

    async def url_denial(self, url: str) -> str | None:
        """Why ``url`` must not be fetched or stored (denied by an inbox strip or a flagged fetch), or None."""
        reason = self.denied_urls.get(url)
        if reason is None and self.audit is not None:
            row = await self.audit.denied_url(url)
            if row is not None:
                reason = row["reason"]
                self.denied_urls[url] = reason
        return reason

    def deny_url(self, url: str, verdict: Verdict, reason: str) -> None:
        self.denied_urls[url] = reason
        if self.audit is not None:
            self.audit.record(DeniedUrl(url, time.time(), verdict.sha256 or None, verdict.policy, reason))

    async def judge_url(self, url: str, instance: Instance, source: str) -> Verdict:
        """Fetch ``url`` (SSRF-safe) and judge its bytes; verdicts are cached by URL as well as by sha256,
        and refused URLs are denied downstream. Never raises."""
        started = time.perf_counter()
        policy = instance.policy

        def unfetched(**kw: Any) -> Verdict:
            fields: dict[str, Any] = {"sha256": "", "labels": (), "scores": {}, **kw}
            v = Verdict(source=source, instance=instance.name, policy=policy.name,
                        latency_ms=(time.perf_counter() - started) * 1000, **fields)
            self.record(v, policy, url)
            return v

        reason = await self.url_denial(url)
        if reason is not None:
            return unfetched(action="reject", decided_by="denied_url", detail=reason)
        cached = self.url_cache.get((url, policy.name))
        if cached is not None:
            self.metrics.cache_hits.inc()
            return unfetched(action=cached.action, decided_by="cache", sha256=cached.sha256, labels=cached.labels,
                             scores=cached.scores, detail="url verdict")
        assert self.fetcher is not None, "Pipeline needs a Fetcher to judge URLs"
        try:
            fetched = await self.fetcher.fetch(url)
        except FetchError as exc:
            self.metrics.fetch_errors.labels(exc.kind).inc()
            log.warning("fetch of %s for %s failed: %s (%s)", url, source, exc.kind, exc)
            action = "reject" if exc.kind == "blocked" or policy.on_error == "reject" else "accept"
            verdict = unfetched(action=action, decided_by="fetch", detail=str(exc), error_kind=exc.kind)
            if exc.kind == "blocked":
                self.deny_url(url, verdict, f"blocked: {exc}")
            return verdict
        if sniff(fetched.body) is None:
            # a web page, a JSON document: no media to judge here (a Lemmy link post's attachment, say)
            return unfetched(action="accept", decided_by="not_media", detail=fetched.content_type)
        verdict = await self.judge(fetched.body, instance, source, url=url)
        if verdict.decided_by in ("model", "cache", "denylist", "allowlist"):
            self.url_cache[(url, policy.name)] = verdict
        if not verdict.accepted and verdict.decided_by in ("model", "cache", "denylist"):
            self.deny_url(url, verdict, f"{verdict.action}: {verdict.reason}")
        return verdict

    def _invalid(self, policy: Policy, kind: str, detail: str, sha256: str, source: str) -> dict[str, Any]:
        self.metrics.invalid.labels(kind).inc()
        choice = policy.on_unsupported if kind == "unsupported" else policy.on_invalid
        action = "accept" if choice == "accept" else "reject"
        log.warning("invalid media %s from %s: %s (%s) -> %s", sha256[:12], source, kind, detail, action)
        if action == "accept":
            self.metrics.fail_open.labels(policy.name, f"invalid:{kind}").inc()
        return {"action": action, "labels": (), "scores": {}, "decided_by": "invalid", "detail": detail, "error_kind": kind}

    def _error(self, policy: Policy, kind: str, detail: str, decoded: Decoded, sha256: str, source: str) -> dict[str, Any]:
        self.metrics.errors.labels(kind).inc()
        action = "accept" if policy.on_error == "accept" else "reject"
        log.warning("no verdict for %s from %s: %s -> on_error=%s", sha256[:12], source, detail, action)
        if action == "accept":
            self.metrics.fail_open.labels(policy.name, kind).inc()
        return {"action": action, "labels": (), "scores": {}, "decided_by": "error", "detail": detail, "error_kind": kind,
                "mime": decoded.mime}

    def record(self, v: Verdict, policy: Policy, url: str | None) -> None:
        """Count a verdict in the metrics, log a refusal, write its audit row."""
        m = self.metrics
        m.verdicts.labels(v.instance, v.source, v.action, v.decided_by).inc()
        m.latency.labels(v.source, v.decided_by).observe(v.latency_ms / 1000)
        for label in v.labels:
            m.labels.labels(v.instance, label).inc()
        if v.action != "accept":
            log.info(
                "%s %s from %s for %s: labels=%s by=%s%s",
                v.action, v.sha256[:12], v.source, v.instance, list(v.labels), v.decided_by,
                f" ({v.detail})" if v.detail else "",
            )
        if self.audit is not None:
            self.audit.record(
                AuditRow(
                    ts=time.time(), sha256=v.sha256, source=v.source, instance=v.instance, policy=policy.name,
                    action=v.action, decided_by=v.decided_by, labels=list(v.labels), scores=v.scores,
                    latency_ms=round(v.latency_ms, 2), detail=v.detail, url=url,
                )
            )


def _from_audit(sha256: str, policy: str, row: dict[str, Any]) -> Verdict:
    """A cached model verdict rebuilt from its audit row."""
    return Verdict(sha256=sha256, action=row["action"], labels=tuple(row["labels"]), scores=row["scores"], source="",
                   instance="", latency_ms=0.0, decided_by="model", policy=policy)


def _quarantine(directory: str, sha256: str, data: bytes) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = path / sha256
    if not target.exists():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
