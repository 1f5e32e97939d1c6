"""One service builder for every command: serve, egress and scan run on the same parts."""

from __future__ import annotations

from pathlib import Path

from classifier import Classifier, Scorer
from proxy.app import SERVICES, build_services
from proxy.egress import Egress
from proxy.server import build_app
from proxy.stores import SqliteStore
from tests.support.configs import make_config
from tests.support.servers import services, start


def test_builder_makes_every_part(tmp_path: Path) -> None:
    config = make_config(server={"audit_db": str(tmp_path / "a.sqlite3")})
    svc = build_services(config)
    assert isinstance(svc.scorer, Classifier) and isinstance(svc.scorer, Scorer)
    assert isinstance(svc.store.store, SqliteStore) and svc.fetcher is not None
    assert svc.pipeline.scorer is svc.scorer and svc.pipeline.store is svc.store and svc.pipeline.metrics is svc.metrics
    one_shot = build_services(config, persistent=False, fetch=False)
    assert one_shot.store.store is None and one_shot.fetcher is None
    for s in (svc, one_shot):
        s.pipeline.close()


def test_serve_and_egress_use_the_builder() -> None:
    app = build_app(make_config())
    assert app[SERVICES].pipeline.fetcher is not None
    egress = Egress(make_config())
    assert egress.pipeline is egress.services.pipeline and egress.services.fetcher is None
    egress.pipeline.close()
    app[SERVICES].pipeline.close()


async def test_health_reports_the_scorer(aiohttp_client) -> None:
    client = await start(aiohttp_client, make_config())
    body = await (await client.get("/healthz")).json()
    assert body["status"] == "ok" and body["classifier"]["state"] == "ready"
    assert body["instances"] == [{"name": "pictrs", "kind": "pictrs", "policy": "main"}]
    assert services(client).scorer.ready
