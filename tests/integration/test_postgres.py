"""Migrations and the request path on a real PostgreSQL cluster started by the test."""

from __future__ import annotations

import httpx
import openai
import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.models import AttemptRow, RequestRow, ShadowDecisionRow
from tests.support.postgres import pg_bin, postgres_cluster
from tests.support.servers import serve_in_thread

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

if pg_bin() is None:
    pytest.skip("PostgreSQL server binaries are not installed (make test installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def pg_url():
    with postgres_cluster() as url:
        yield url


def test_migrations_up_down_up(pg_url):
    migrate.upgrade(pg_url)
    assert migrate.current(pg_url) == migrate.head()
    engine = make_engine(pg_url)
    assert {"requests", "attempts", "feedback", "experts", "policy_versions"} <= set(inspect(engine).get_table_names())
    migrate.downgrade(pg_url, "base")
    assert "requests" not in inspect(engine).get_table_names()
    migrate.upgrade(pg_url)
    assert migrate.current(pg_url) == migrate.head()
    engine.dispose()


def test_request_path_on_postgres(pg_url, fake_settings, upstreams):
    from api.app import create_app

    settings = fake_settings.model_copy(update={"database_url": pg_url})
    app = create_app(settings)
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().choices[0].message.content == "strong answer here"
        chunks = list(client.chat.completions.create(model="cheap", stream=True, messages=[{"role": "user", "content": "hi"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "cheap answer here"
        upstreams["strong"][0].fail_status = 500
        fallback = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=[{"role": "user", "content": "hi"}])
        assert fallback.headers["x-expertmux-expert"] == "cheap"
        bad = httpx.post(f"{url}/v1/chat/completions", json={"model": "cheap", "messages": []})
        assert bad.status_code == 400
        assert app.state.service.ledger.flush(10)
        with Session(app.state.service.ledger.engine) as s:
            rows = s.scalars(select(RequestRow).order_by(RequestRow.created_at)).all()
            attempts = s.scalars(select(AttemptRow)).all()
    assert [(r.expert, r.status, r.stream) for r in rows] == [
        ("strong", "ok", False), ("cheap", "ok", True), ("cheap", "ok", False), (None, "rejected", False)]
    assert rows[0].decision["ranking"] == ["strong", "cheap"]  # JSON column round-trips on PostgreSQL
    assert rows[0].created_at.tzinfo is not None
    assert len(attempts) == 4  # 1 + 1 + 2 (fallback) + 0 (rejected before routing)


def test_budget_enforced_across_two_service_processes_on_postgres(pg_url, fake_settings):
    """Two `expertmux serve` processes, one PostgreSQL ledger: 100 concurrent requests split
    between them against one budget, which is never exceeded."""
    import asyncio
    import os
    import signal
    import subprocess
    import sys
    import time

    from sqlalchemy import func

    from router.ledger.models import KeyUsageRow
    from tests.support.budget_race import fire
    from tests.support.servers import free_port

    migrate.upgrade(pg_url)
    env = {**os.environ, "EXPERTMUX_CONFIG": str(fake_settings.config), "EXPERTMUX_DATABASE_URL": pg_url,
           "EXPERTMUX_REQUIRE_API_KEYS": "true", "EXPERTMUX_ADMIN_TOKEN": "adm", "EXPERTMUX_KEY_CACHE_TTL_S": "0",
           "EXPERTMUX_AUTOSTART_EXPERTS": "false", "EXPERTMUX_LOG_LEVEL": "warning",
           "EXPERTMUX_KEY_HASH_SECRET": "shared-by-both-replicas"}
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(p)],
                              env={**env, "EXPERTMUX_DATA_DIR": str(fake_settings.data_dir / f"replica{i}")})
             for i, p in enumerate(ports)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url in urls:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "replica did not start"
                time.sleep(0.3)
        created = httpx.post(f"{urls[0]}/admin/keys", headers={"authorization": "Bearer adm"},
                             json={"name": "race", "budget_usd_day": 0.0002}).json()
        statuses = asyncio.run(fire(urls, created["key"], 100))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # graceful: each drains its ledger queue
        for proc in procs:
            proc.wait(60)
    engine = make_engine(pg_url)
    with Session(engine) as s:
        usage = s.scalars(select(KeyUsageRow).where(KeyUsageRow.key_id == created["id"], KeyUsageRow.window == "day")).one()
        rows = s.scalar(select(func.count()).select_from(RequestRow).where(RequestRow.api_key_id == created["id"]))
        spent_ledger = s.scalar(select(func.sum(RequestRow.cost_usd)).where(RequestRow.api_key_id == created["id"]))
    engine.dispose()
    ok = statuses.count(200)
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0
    assert usage.spent_usd <= 0.0002 + 1e-12
    assert usage.spent_usd == pytest.approx(ok * 0.000013)
    assert spent_ledger == pytest.approx(usage.spent_usd)
    assert usage.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert rows == 100
    assert 2 <= ok <= 15


def test_shadow_summary_is_plain_json_on_postgres(pg_url):
    """The shadow summary on PostgreSQL: exact counts, plain JSON numbers (the dashboard's /shadow)."""
    from datetime import UTC, datetime

    import orjson

    from router.shadow.evidence import summary

    migrate.upgrade(pg_url)
    engine = make_engine(pg_url)
    now = datetime.now(UTC)
    common = dict(created_at=now, policy="knn", policy_version="v2", served_policy="tryage", served_version="v1",
                  decision={}, lambda_=0.0, served_cost_usd=0.001)
    with Session(engine) as s:
        s.add_all([ShadowDecisionRow(request_id="a", expert="cheap", served_expert="cheap", agrees=True, status="decided", **common),
                   ShadowDecisionRow(request_id="b", expert="cheap", served_expert="strong", agrees=False, status="judged",
                                     cost_usd=0.0002, served_score=0.5, score=1.0, **common),
                   ShadowDecisionRow(request_id="c", expert="cheap", served_expert="strong", agrees=False,
                                     status="skipped_budget", **common)])
        s.commit()
    [row] = summary(engine, policy="knn")
    engine.dispose()
    body = orjson.loads(orjson.dumps(row))
    assert (body["decisions"], body["called"], body["judged"], body["skipped_budget"], body["errors"]) == (3, 1, 1, 1, 0)
    assert body["agreement"] == pytest.approx(1 / 3) and body["win_share"] == 1.0
    assert body["cost_usd"] == pytest.approx(0.0002) and body["served_cost_usd"] == pytest.approx(0.001)
