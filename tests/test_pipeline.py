"""The verdict pipeline itself, with the tiny CLIP and the face stand-in: fallbacks, single-flight,
and load that must never turn benign media into a final refusal."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from proxy.app import Services, build_services
from proxy.config import Config, Instance
from proxy.pipeline import Pipeline
from proxy.verdict import Action, DecidedBy, ErrorKind, Fallback, InvalidKind
from tests.support.configs import ALWAYS, FACES, NEVER, make_config, policy
from tests.support.photos import photo
from tests.support.servers import sample


async def running(config: Config) -> AsyncIterator[Services]:
    svc = build_services(config, fetch=False)
    await svc.start()
    await svc.scorer.wait_ready()
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def faces() -> AsyncIterator[Services]:
    async for svc in running(make_config(FACES)):
        yield svc


def instance(svc: Services, **policy_changes: object) -> Instance:
    inst = svc.config.instances[0]
    return replace(inst, policy=replace(inst.policy, **policy_changes)) if policy_changes else inst


async def test_model_then_cache(faces: Services) -> None:
    inst = instance(faces)
    first = await faces.pipeline.judge(photo("astronaut"), inst, "validate")
    assert first.action is Action.REJECT and first.decided_by is DecidedBy.MODEL and first.labels == ("portrait",)
    again = await faces.pipeline.judge(photo("astronaut"), inst, "upload")
    assert again.decided_by is DecidedBy.CACHE and again.action is Action.REJECT and again.source == "upload"
    clean = await faces.pipeline.judge(photo("coffee"), inst, "validate")
    assert clean.accepted and clean.decided_by is DecidedBy.MODEL and clean.frames == 1


@pytest.mark.parametrize(("data", "kind", "key"), [
    (b"", InvalidKind.EMPTY, "on_invalid"),
    (b"%PDF-1.7", InvalidKind.UNSUPPORTED, "on_unsupported"),
    (b"\xff\xd8\xff\xe0" + bytes(range(256)), InvalidKind.CORRUPT, "on_invalid"),
])
async def test_invalid_media_gets_its_own_fallback(faces: Services, data: bytes, kind: InvalidKind, key: str) -> None:
    refused = await faces.pipeline.judge(data, instance(faces), "validate")
    assert refused.action is Action.REJECT and refused.decided_by is DecidedBy.INVALID and refused.error_kind is kind
    opened = await faces.pipeline.judge(data, instance(faces, **{key: Fallback.ACCEPT}), "validate")
    assert opened.accepted and opened.error_kind is kind
    assert sample(faces, "ffp_fail_open_total", instance="main", reason=f"invalid:{kind}") == 1


async def test_waiting_for_a_decode_worker_is_overload_not_invalid_media() -> None:
    """Every decode worker busy past the policy's budget: benign media gets a retryable on_error answer,
    never the final 'invalid: decoding took too long'. Deterministic: the one worker is held by a test job."""
    config = make_config(policy(NEVER, timeout_ms=300))
    busy = threading.Event()
    release = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)

    def hold() -> None:
        busy.set()
        release.wait(30)

    svc = build_services(config, fetch=False)
    pipeline = Pipeline(config, svc.scorer, svc.store, svc.metrics, decode_pool=pool)
    await svc.start()
    await svc.scorer.wait_ready()
    try:
        blocker = asyncio.get_running_loop().run_in_executor(pool, hold)
        await asyncio.to_thread(busy.wait, 5)
        inst = config.instances[0]
        verdict = await pipeline.judge(photo("coffee"), inst, "upload")
        assert verdict.decided_by is DecidedBy.ERROR and verdict.error_kind is ErrorKind.OVERLOADED
        assert verdict.retryable and not verdict.accepted
        assert sample(svc, "ffp_overload_total", where="decode") == 1
        release.set()
        await blocker
        roomy = replace(inst, policy=replace(inst.policy, timeout_ms=60_000))
        assert (await pipeline.judge(photo("coffee"), roomy, "upload")).decided_by is DecidedBy.MODEL
    finally:
        release.set()
        pipeline.close()
        await svc.close()


async def test_single_flight_shares_one_judgement() -> None:
    async for svc in running(make_config(policy(ALWAYS))):
        inst = svc.config.instances[0]
        verdicts = await asyncio.gather(*(svc.pipeline.judge(photo("horse"), inst, "validate") for _ in range(6)))
        assert sorted(v.decided_by for v in verdicts) == [DecidedBy.CACHE] * 5 + [DecidedBy.MODEL]
        assert svc.pipeline.judgements_in_flight == 0
        assert sample(svc, "ffp_classifier_batch_size_sum", model="clip") == 1


async def test_no_verdict_uses_the_policy_fallback(faces: Services) -> None:
    closed = faces.pipeline.no_verdict(instance(faces), "egress", ErrorKind.OVERLOADED, "busy")
    assert closed.action is Action.REJECT and closed.retryable and closed.detail == "busy"
    opened = faces.pipeline.no_verdict(instance(faces, on_error=Fallback.ACCEPT), "egress", ErrorKind.OVERLOADED, "busy")
    assert opened.accepted and not opened.retryable
