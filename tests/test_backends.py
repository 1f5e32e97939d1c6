"""Every backend kind the config accepts has a complete record."""

import dataclasses
import json

import pytest

from proxy import backends
from proxy.backends import KINDS, Interception
from proxy.config import Instance

pytestmark = pytest.mark.parametrize("kind", sorted(KINDS))


def test_config_accepts_exactly_the_recorded_kinds(kind: str) -> None:
    checks = {f.name: f for f in dataclasses.fields(Instance)}
    assert checks["kind"].metadata["check"](kind) is None
    assert checks["kind"].metadata["check"]("nosuch") is not None


def test_record_is_complete(kind: str) -> None:
    record = KINDS[kind]
    assert record.name == kind and record.doc
    assert 400 <= record.refusal_status < 500
    for code in ("media-refused", "media-unavailable", "too-large", "malformed-upload"):
        resp = record.refusal("why", code=code)
        assert resp.status == record.refusal_status and resp.content_type == "application/json"
        assert "why" in json.dumps(json.loads(resp.body))  # the message reaches the client in the kind's shape
    assert record.refusal("x", status=503, headers={"Retry-After": "5"}).headers["Retry-After"] == "5"
    for route in record.routes:
        assert route.method in ("GET", "POST", "PUT", "PATCH")
        if route.interception is Interception.INGEST:
            assert (route.url_param is None) != (route.url_json_key is None)


def test_activitypub_servers_know_the_shared_inbox(kind: str) -> None:
    record = KINDS[kind]
    if kind == "pictrs":
        assert record.match("POST", "/inbox") is None  # an image store has no inbox
        return
    for path in backends.INBOX_PATHS:
        example = path.replace("[^/]+", "alice").replace("-?\\d+", "42")
        route = record.match("POST", example)
        assert route is not None and route.interception is Interception.INBOX, example
