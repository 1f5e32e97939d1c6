"""The one verdict pipeline every interception point calls.

identify (sha256) -> exact lists and banks (deny, allow) -> cache -> decode (bounded; PDQ of every frame in
the decode worker) -> PDQ lists and banks (deny, allow), then known banks (the own bank) -> classify (a
:class:`Scorer`) -> decide (policy) -> record (store, metrics; a classifier refusal also goes to the own
bank). Precedence (:mod:`proxy.banks`): deny > allow > known banks > classifier.
Nothing is waved through silently: media that cannot be judged
gets the policy's fallback for the reason (:meth:`proxy.config.Policy.fallback`): ``on_invalid`` or
``on_unsupported`` for hostile or undecodable bytes, ``on_error`` for our own failure (scorer not ready,
overload, timeout); every fail-open is logged and counted.

Time: the policy's ``timeout_ms`` bounds a whole judgement. Decoding has its own budget
(``limits.decode_timeout_ms``) that counts decoding only: time spent waiting for a free decode worker is
load, not a property of the media, so running out of time while waiting is ``overloaded`` (on_error,
retryable), never an "invalid" refusal of benign media.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from classifier import ClassifierNotReady, Overloaded, Scorer, Signal

from .config import Config, Instance, Policy
from .fetch import Fetcher, FetchError
from .banks import BankIndex, BankRole, Banks
from .hashing import HASH_KINDS, HashList, pdq_frames
from .media import Decoded, MediaError, decode, sniff
from .metrics import Metrics
from .stores import AuditRow, DeniedUrl, VerdictCache
from .verdict import Action, DecidedBy, ErrorKind, InvalidKind, Outcome, ProblemKind, Verdict

log = logging.getLogger(__name__)

HASH_INLINE_BYTES = 256 * 1024
"""Bodies above this are hashed in the worker pool, not on the event loop."""


def _digests(data: bytes, kinds: frozenset[str]) -> dict[str, str]:
    return {name: HASH_KINDS[name].compute(data) for name in kinds}


def _group_scores(scores: Mapping[Signal, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (source, key), value in sorted(scores.items()):
        out.setdefault(source, {})[key] = round(value, 4)
    return out


class Pipeline:
    def __init__(self, config: Config, scorer: Scorer, store: VerdictCache, metrics: Metrics,
                 fetcher: Fetcher | None = None, *, decode_pool: Executor | None = None,
                 banks: Banks | None = None) -> None:
        self.config = config
        self.banks = banks if banks is not None else Banks(None)
        self.scorer = scorer
        self.store = store
        self.metrics = metrics
        self.fetcher = fetcher
        self._pool = decode_pool or ThreadPoolExecutor(max_workers=config.server.decode_workers, thread_name_prefix="decode")
        self._inflight: dict[tuple[str, str], asyncio.Task[Outcome]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def judgements_in_flight(self) -> int:
        return len(self._inflight)

    def _finish(self, outcome: Outcome, *, sha256: str, instance: Instance, source: str, started: float,
                url: str | None) -> Verdict:
        """Attribute an outcome to the request that asked, count it and record it: every verdict is made here."""
        verdict = Verdict.of(outcome, sha256=sha256, source=source, instance=instance.name,
                             policy=instance.policy.name, latency_ms=(time.perf_counter() - started) * 1000)
        self.record(verdict, url)
        return verdict

    def no_verdict(self, instance: Instance, source: str, kind: ErrorKind, detail: str, *, url: str | None = None,
                   started: float | None = None, sha256: str = "") -> Verdict:
        """No judgement was possible (overload before the pipeline was reached, say): the policy's fallback."""
        outcome = self._fallback(instance.policy, kind, detail, sha256 or "-", source)
        return self._finish(outcome, sha256=sha256, instance=instance, source=source,
                            started=started if started is not None else time.perf_counter(), url=url)

    def unread(self, instance: Instance, source: str, kind: InvalidKind, detail: str, *, url: str | None = None) -> Verdict:
        """Media refused before it was read (over a size bound, say): the policy's fallback for ``kind``."""
        outcome = self._invalid(instance.policy, kind, detail, "-", source)
        return self._finish(outcome, sha256="", instance=instance, source=source, started=time.perf_counter(), url=url)

    async def judge(self, data: bytes, instance: Instance, source: str, *, url: str | None = None) -> Verdict:
        """Judge one media body for one instance. Never raises for bad media or scorer trouble."""
        started = time.perf_counter()
        policy = instance.policy
        await self.banks.maybe_reload()
        kinds = frozenset({"sha256"}) | policy.deny.exact_kinds | policy.allow.exact_kinds | self.banks.exact_kinds
        loop = asyncio.get_running_loop()
        if len(data) > HASH_INLINE_BYTES:
            digests = await loop.run_in_executor(self._pool, _digests, data, kinds)
        else:
            digests = _digests(data, kinds)
        sha256 = digests["sha256"]
        outcome = await self._outcome(data, digests, policy, source, started)
        verdict = self._finish(outcome, sha256=sha256, instance=instance, source=source, started=started, url=url)
        if outcome.decided_by is DecidedBy.MODEL and outcome.action is Action.QUARANTINE and policy.quarantine_dir:
            await loop.run_in_executor(self._pool, _quarantine, policy.quarantine_dir, sha256, data)
        return verdict

    async def _outcome(self, data: bytes, digests: dict[str, str], policy: Policy, source: str,
                       started: float) -> Outcome:
        sha256 = digests["sha256"]
        listed = self._listed(policy, digests, None)
        if listed is not None:
            return listed
        cached = await self.store.verdict(sha256, policy.name)
        if cached is not None:
            self.metrics.cache_hits.inc()
            return Outcome(cached.action, DecidedBy.CACHE, labels=cached.labels, scores=cached.scores, mime=cached.mime)
        # one judgement per (sha256, policy) at a time: concurrent requests for the same bytes (a flood of
        # one upload, an inbox prefetch racing the backend's own fetch) share it
        key = (sha256, policy.name)
        task = self._inflight.get(key)
        if task is not None:
            outcome = await asyncio.shield(task)
            if outcome.decided_by is DecidedBy.MODEL:
                self.metrics.cache_hits.inc()
                return Outcome(outcome.action, DecidedBy.CACHE, labels=outcome.labels, scores=outcome.scores,
                               mime=outcome.mime, frames=outcome.frames)
            return outcome
        task = asyncio.get_running_loop().create_task(self._decide(data, policy, digests, source, started))
        self._inflight[key] = task
        task.add_done_callback(lambda _: self._inflight.pop(key, None))
        outcome = await asyncio.shield(task)
        if outcome.decided_by is DecidedBy.MODEL:
            self.store.remember(sha256, policy.name, outcome)
        return outcome

    async def _decode(self, data: bytes, policy: Policy, started: float,
                      digests: Mapping[str, str]) -> tuple[Decoded, Outcome | None]:
        """Decode in the worker pool, then (in the same worker) hash every frame with PDQ and match the PDQ
        lists and banks: the media and what the lists say of it. The media's own budget starts when a
        worker starts decoding; waiting for a worker is bounded by what is left of the policy's budget and
        raises TimeoutError."""
        began: list[float] = []

        def run() -> tuple[Decoded, Outcome | None]:
            began.append(time.monotonic())
            decoded = decode(data, policy.limits)
            decoded.pdq = pdq_frames(decoded.frames, decoded.views)
            return decoded, self._listed(policy, digests, decoded)

        remaining = policy.timeout_ms / 1000 - (time.perf_counter() - started)
        future = asyncio.get_running_loop().run_in_executor(self._pool, run)
        try:
            return await asyncio.wait_for(future, max(remaining, 0.001))
        except TimeoutError:
            decoding_s = time.monotonic() - began[0] if began else None
            if decoding_s is not None and decoding_s * 1000 > policy.limits.decode_timeout_ms:
                # stuck inside one decoder call past the media's own budget: the media's fault
                raise MediaError("timeout", "decoding took too long") from None
            raise _DecodeWait(decoding_s is not None) from None

    def _listed(self, policy: Policy, digests: Mapping[str, str], decoded: Decoded | None) -> Outcome | None:
        """Hash lists and banks: before decoding (``decoded`` None) the exact deny and allow entries; after
        it the PDQ deny and allow entries, then the known banks (exact or PDQ). None: the classifier decides."""
        index = self.banks.index
        frames = decoded.pdq if decoded is not None else ()
        mime = decoded.mime if decoded is not None else None
        for refuse, listing, role in ((True, policy.deny, BankRole.DENY), (False, policy.allow, BankRole.ALLOW)):
            if decoded is not None and not refuse and not _wholly_allowed(decoded, listing, index, policy.pdq_distance):
                continue  # a near copy is allowed only when every picture in it is, and nothing hides in tiles
            hit = listing.match(digests) if decoded is None else listing.match_pdq(frames, policy.pdq_distance)
            if hit:
                self.metrics.list_hits.labels(str(role)).inc()
                if refuse:
                    return Outcome(Action.REJECT, DecidedBy.DENYLIST, labels=("denylist",), detail=hit, mime=mime)
                return Outcome(Action.ACCEPT, DecidedBy.ALLOWLIST, detail=hit, mime=mime)
            bank = index.match_exact(role, digests) if decoded is None else index.match_pdq(role, frames, policy.pdq_distance)
            if bank is not None:
                self.metrics.list_hits.labels(f"bank:{bank.bank}").inc()
                action = Action.REJECT if refuse else Action.ACCEPT
                return Outcome(action, DecidedBy.BANK, labels=bank.labels if refuse else (), detail=bank.detail, mime=mime)
        if decoded is None:
            return None
        # the own bank learns from anyone's uploads: its near matches are held to re-encodes and resizes
        bank = (index.match_exact(BankRole.KNOWN, digests)
                or index.match_pdq(BankRole.KNOWN, frames, min(policy.pdq_distance, KNOWN_PDQ_DISTANCE)))
        if bank is None:
            return None
        # a refused file's labels come with it: the policy's action for them, unless it now accepts them all
        action = policy.action_for(set(bank.labels)) if bank.labels else Action.REJECT
        if action is Action.ACCEPT:
            return None
        self.metrics.list_hits.labels(f"bank:{bank.bank}").inc()
        return Outcome(action, DecidedBy.BANK, labels=bank.labels, detail=bank.detail, mime=mime)

    async def _decide(self, data: bytes, policy: Policy, digests: Mapping[str, str], source: str,
                      started: float) -> Outcome:
        """Decode, match PDQ lists and banks, classify. Never raises."""
        sha256 = digests["sha256"]
        try:
            decoded, listed = await self._decode(data, policy, started, digests)
        except MediaError as exc:
            return self._invalid(policy, exc.kind, str(exc), sha256, source)
        except _DecodeWait as exc:
            if exc.decoding:
                return self._fallback(policy, ErrorKind.TIMEOUT, f"no verdict within {policy.timeout_ms} ms (decoding)",
                                      sha256, source)
            self.metrics.overload.labels("decode").inc()
            return self._fallback(policy, ErrorKind.OVERLOADED,
                                  f"no decode worker free within {policy.timeout_ms} ms", sha256, source)
        except Exception as exc:  # a decoder's own bug: never an unjudged pass (the egress would let it through)
            log.exception("decoding %s failed unexpectedly", sha256[:12])
            return self._fallback(policy, ErrorKind.INTERNAL, f"decoder error: {type(exc).__name__}", sha256, source)

        if listed is not None:
            return listed
        sources = policy.rules.sources()
        if not sources:
            return Outcome(Action.ACCEPT, DecidedBy.NO_RULES, mime=decoded.mime)
        if not decoded.frames:  # audio without cover art
            return Outcome(Action.ACCEPT, DecidedBy.NO_FRAMES, mime=decoded.mime)
        remaining = policy.timeout_ms / 1000 - (time.perf_counter() - started)
        try:
            frame_scores = await asyncio.wait_for(self.scorer.score(decoded.frames, sources), max(remaining, 0.001))
        except ClassifierNotReady as exc:
            return self._fallback(policy, ErrorKind.NOT_READY, str(exc), sha256, source, decoded)
        except Overloaded as exc:
            self.metrics.overload.labels("classifier").inc()
            return self._fallback(policy, ErrorKind.OVERLOADED, str(exc), sha256, source, decoded)
        except TimeoutError:
            return self._fallback(policy, ErrorKind.TIMEOUT, f"no verdict within {policy.timeout_ms} ms", sha256,
                                  source, decoded)
        except Exception as exc:  # a model crash must not take the server down or pass media silently
            log.exception("classifier failed on %s", sha256[:12])
            return self._fallback(policy, ErrorKind.INTERNAL, f"classifier error: {exc}", sha256, source, decoded)

        labels: set[str] = set()
        worst: dict[Signal, float] = {}
        refusing: list[int] = []
        for i, scores in enumerate(frame_scores):
            result = policy.rules.evaluate(scores)
            labels |= result.labels
            if policy.action_for(result.labels) is not Action.ACCEPT:
                refusing.append(i)
            for sig, value in result.scores.items():
                worst[sig] = max(value, worst.get(sig, float("-inf")))
        workers = getattr(frame_scores, "workers", None)  # a worker pool says who scored each frame
        outcome = Outcome(policy.action_for(labels), DecidedBy.MODEL, labels=tuple(sorted(labels)),
                          scores=_group_scores(worst), mime=decoded.mime, frames=len(decoded.frames),
                          worker=",".join(sorted(set(workers))) if workers else None)
        if outcome.action is not Action.ACCEPT and outcome.decided_by.learns:
            try:
                # only the pictures that were refused: the clean frames of an animation with one flagged
                # frame must not teach the bank to refuse those clean pictures elsewhere
                frames, views = _refused_views(decoded, refusing)
                learned = await asyncio.get_running_loop().run_in_executor(self._pool, pdq_frames, frames, views)
                await self.banks.learn(sha256, learned, outcome.labels)
            except Exception:  # the verdict stands; only the bank entry is lost
                log.exception("could not add %s to the own bank", sha256[:12])
        return outcome

    async def url_denial(self, url: str, policy: str) -> str | None:
        """Why ``url`` must not be fetched or stored for the instances of ``policy`` (denied by an inbox strip
        or a flagged fetch under that policy, or for every policy by a replica of an older release), or None."""
        return await self.store.url_denial(url, policy)

    def deny_url(self, url: str, verdict: Verdict, reason: str) -> None:
        """Deny ``url`` to the instances of the verdict's policy (another policy judges the bytes itself)."""
        self.store.deny_url(DeniedUrl(url, time.time(), verdict.sha256 or None, verdict.policy, reason))

    async def judge_url(self, url: str, instance: Instance, source: str) -> Verdict:
        """Fetch ``url`` (SSRF-safe) and judge its bytes; verdicts are cached by URL as well as by sha256,
        and refused URLs are denied downstream. Never raises."""
        started = time.perf_counter()
        policy = instance.policy

        def unfetched(outcome: Outcome) -> Verdict:
            return self._finish(outcome, sha256="", instance=instance, source=source, started=started, url=url)

        reason = await self.url_denial(url, policy.name)
        if reason is not None:
            return unfetched(Outcome(Action.REJECT, DecidedBy.DENIED_URL, detail=reason))
        cached = self.store.url_verdict(url, policy.name)
        if cached is not None:
            self.metrics.cache_hits.inc()
            return unfetched(Outcome(cached.action, DecidedBy.CACHE, labels=cached.labels, scores=cached.scores,
                                     detail="url verdict", sha256=cached.sha256))
        assert self.fetcher is not None, "Pipeline needs a Fetcher to judge URLs"
        try:
            fetched = await self.fetcher.fetch(url)
        except FetchError as exc:
            self.metrics.fetch_errors.labels(exc.kind).inc()
            log.warning("fetch of %s for %s failed: %s (%s)", url, source, exc.kind, exc)
            # a blocked address is not kept as a denial: the fetcher and egress check every target anyway, and
            # anyone can name endless private URLs in an inbox delivery (the denials are held in memory)
            return unfetched(Outcome(policy.fallback(exc.kind), DecidedBy.FETCH, detail=str(exc), error_kind=exc.kind))
        if sniff(fetched.body) is None:
            # a web page, a JSON document: no media to judge here (a Lemmy link post's attachment, say)
            return unfetched(Outcome(Action.ACCEPT, DecidedBy.NOT_MEDIA, detail=fetched.content_type))
        verdict = await self.judge(fetched.body, instance, source, url=url)
        if verdict.decided_by.judged_content:
            self.store.remember_url(url, policy.name, Outcome(verdict.action, verdict.decided_by, labels=verdict.labels,
                                                              scores=verdict.scores, sha256=verdict.sha256))
        if verdict.denies_url:
            self.deny_url(url, verdict, f"{verdict.action}: {verdict.reason}")
        return verdict

    def _invalid(self, policy: Policy, kind: InvalidKind, detail: str, sha256: str, source: str) -> Outcome:
        self.metrics.invalid.labels(kind).inc()
        action = policy.fallback(kind)
        log.warning("invalid media %s from %s: %s (%s) -> %s", sha256[:12], source, kind, detail, action)
        if action is Action.ACCEPT:
            self.metrics.fail_open.labels(policy.name, f"invalid:{kind}").inc()
        return Outcome(action, DecidedBy.INVALID, detail=detail, error_kind=kind)

    def _fallback(self, policy: Policy, kind: ProblemKind, detail: str, sha256: str, source: str,
                  decoded: Decoded | None = None) -> Outcome:
        """No verdict through our own failure: the policy's ``on_error``."""
        self.metrics.errors.labels(kind).inc()
        action = policy.fallback(kind)
        log.warning("no verdict for %s from %s: %s -> on_error=%s", sha256[:12], source, detail, action)
        if action is Action.ACCEPT:
            self.metrics.fail_open.labels(policy.name, kind).inc()
        return Outcome(action, DecidedBy.ERROR, detail=detail, error_kind=kind,
                       mime=decoded.mime if decoded is not None else None)

    def record(self, v: Verdict, url: str | None) -> None:
        """Count a verdict in the metrics, log a refusal, write its audit row."""
        m = self.metrics
        m.verdicts.labels(v.instance, v.source, v.action, v.decided_by).inc()
        m.latency.labels(v.source, v.decided_by).observe(v.latency_ms / 1000)
        for label in v.labels:
            m.labels.labels(v.instance, label).inc()
        if not v.accepted:
            log.info(
                "%s %s from %s for %s: labels=%s by=%s%s",
                v.action, v.sha256[:12], v.source, v.instance, list(v.labels), v.decided_by,
                f" ({v.detail})" if v.detail else "",
            )
        self.store.record(
            AuditRow(
                ts=time.time(), sha256=v.sha256, source=v.source, instance=v.instance, policy=v.policy,
                action=str(v.action), decided_by=str(v.decided_by), labels=list(v.labels), scores=v.scores,
                latency_ms=round(v.latency_ms, 2), detail=v.detail, url=url, worker=v.worker,
            )
        )


def _refused_views(decoded: Decoded, refusing: list[int]) -> tuple[list[Image.Image], list[str]]:
    """The whole views that were themselves refused. Never the frame around a refused tile: a small
    flagged insert would teach the bank the PDQ of the benign picture around it."""
    views = decoded.views or [str(i) for i in range(len(decoded.frames))]
    picked = [i for i in refusing if i < len(views) and " tile " not in views[i]]
    return [decoded.frames[i] for i in picked], [views[i] for i in picked]


KNOWN_PDQ_DISTANCE = 16
"""Near matches against the own bank (learned from uploads, so an attacker can put entries there): at most
this far, enough for re-encodes and resizes (6-14 bits measured on the test photos) and short of most
pictures with an insert (12-94 bits)."""


def _wholly_allowed(decoded: Decoded, listing: HashList, index: BankIndex, distance: int) -> bool:
    """Whether a PDQ allow may decide for the whole file: every whole view is near an allowed picture
    (one allowed frame must not carry another frame through) and no view was tiled (a small flagged insert
    in a large picture leaves the whole picture's PDQ near the allowed one)."""
    views = decoded.views or []
    if not decoded.pdq or any(" tile " in v for v in views) or not all(h.usable for h in decoded.pdq):
        return False
    return all(listing.match_pdq([h], distance) or index.match_pdq(BankRole.ALLOW, [h], distance) is not None
               for h in decoded.pdq)


class _DecodeWait(Exception):
    """The policy's budget ran out before decoding ended; ``decoding``: whether a worker had begun."""

    def __init__(self, decoding: bool) -> None:
        super().__init__()
        self.decoding = decoding


def _quarantine(directory: str, sha256: str, data: bytes) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = path / sha256
    if not target.exists():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
