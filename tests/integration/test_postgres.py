"""Migrations and the request path on a real PostgreSQL cluster started by the test."""

from __future__ import annotations

import httpx
import openai
import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.models import AttemptRow, RequestRow
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


def test_budget_enforced_across_two_replicas_on_postgres(pg_url, fake_settings):
    """Two service instances, one PostgreSQL ledger: 100 concurrent requests, budget never exceeded."""
    from pydantic import SecretStr

    from api.app import create_app
    from tests.support.budget_race import budget_race

    settings = fake_settings.model_copy(update={"database_url": pg_url, "require_api_keys": True,
                                                "admin_token": SecretStr("a"), "key_cache_ttl_s": 0})
    first, second = create_app(settings), create_app(settings.model_copy(update={"data_dir": settings.data_dir / "replica2"}))
    with serve_in_thread(first) as url1, serve_in_thread(second) as url2:
        result = budget_race([url1, url2], first, budget=0.0002, others=(second,))
    ok = result["statuses"].count(200)
    assert set(result["statuses"]) <= {200, 429}
    assert result["spent"] <= 0.0002 + 1e-12
    assert result["spent"] == pytest.approx(ok * 0.000013)
    assert result["spent_ledger"] == pytest.approx(result["spent"])
    assert result["reserved"] == pytest.approx(0.0, abs=1e-12)
    assert result["rows"] == 100
    assert 7 <= ok <= 15
