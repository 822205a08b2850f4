"""Budgets and token limits across three ``expertmux serve`` processes sharing one PostgreSQL.

The same races as ``tests/functional/test_budget_races.py`` (an upstream that bills SmolLM2's
chat template, ``"hi"`` with ``max_tokens: 4`` at $1 / $2 per Mtok), with the requests spread
over the replicas: real spend beyond the limit stays within the dearest single request.
"""

from __future__ import annotations

import asyncio

import pytest

from router.ledger.db import make_engine
from tests.conftest import remote_expert, write_config
from tests.support import billing_upstream
from tests.support.limit_race import chat_body, create_key, fire, measure_settled, replicas
from tests.support.postgres import pg_bin, postgres_cluster
from tests.support.servers import serve_in_thread

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

if pg_bin() is None:
    pytest.skip("PostgreSQL server binaries are not installed (make test installs them)", allow_module_level=True)

ADMIN = "race-admin"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg-races")
    with postgres_cluster() as pg_url, serve_in_thread(billing_upstream.make_app(billing_upstream.ChatTokenizer())) as upstream:
        config = write_config(root / "expertmux.yaml", [remote_expert("cheap", upstream)],
                              {"active": "strongest", "lambda": 0})
        env = {"EXPERTMUX_ADMIN_TOKEN": ADMIN, "EXPERTMUX_KEY_HASH_SECRET": "shared-by-every-replica"}
        with replicas(3, config=config, database_url=pg_url, data_root=root, env=env) as urls:
            yield pg_url, urls


@pytest.mark.parametrize("n", [100, 500])
@pytest.mark.parametrize("kind, limit", [("day", 0.0004), ("month", 0.0004), ("tpm", 400)])
def test_limits_hold_across_three_replicas_on_postgres(cluster, kind, limit, n):
    pg_url, urls = cluster
    key_id, secret = create_key(urls[0], ADMIN, kind=kind, limit=limit)
    statuses = asyncio.run(fire(urls, secret, n, chat_body(max_tokens=4)))
    engine = make_engine(pg_url)
    try:
        result = measure_settled(engine, key_id=key_id, kind=kind, limit=limit, statuses=statuses)
    finally:
        engine.dispose()
    print(result.as_dict())
    assert result.failures == 0 and result.rows == n
    assert result.answered > 0 and result.refused > 0
    assert result.within_one_request, result.as_dict()
    assert result.reserved_left == pytest.approx(0, abs=1e-9)

