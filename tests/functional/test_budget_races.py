"""Budgets and token limits under concurrency, against an upstream that bills like llama.cpp.

The issue's repro: prices $1 / $2 per Mtok, a key with ``budget_usd_day: 0.0004``, 100 concurrent
``"hi"`` requests with ``max_tokens: 4``. The upstream counts the chat template (SmolLM2's default
system prompt makes ``"hi"`` 31 prompt tokens), so a reservation of "one token per character"
let spend run to more than twice the budget. Target: real spend beyond a limit ≤ the dearest
single request, for daily and monthly budgets and tokens-per-minute, at 100 and 500 at once.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from tests.conftest import make_settings, remote_expert
from tests.support import billing_upstream
from tests.support.limit_race import chat_body, create_key, fire, measure
from tests.support.servers import serve_in_thread

ADMIN = "race-admin"


@pytest.fixture(scope="module")
def tokenizer():
    return billing_upstream.ChatTokenizer()


@pytest.fixture
def billing_app(tmp_path, tokenizer):
    from api.app import create_app

    with serve_in_thread(billing_upstream.make_app(tokenizer)) as upstream:
        settings = make_settings(tmp_path, [remote_expert("cheap", upstream, input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)],
                                 require_api_keys=True, admin_token=SecretStr(ADMIN), key_cache_ttl_s=0)
        app = create_app(settings)
        with serve_in_thread(app) as url:
            yield url, app


def race(url: str, app, *, kind: str, limit: float, n: int):
    key_id, secret = create_key(url, ADMIN, kind=kind, limit=limit)
    statuses = asyncio.run(fire([url], secret, n, chat_body(max_tokens=4)))
    assert app.state.service.ledger.flush(60)
    return measure(app.state.service.ledger.engine, key_id=key_id, kind=kind, limit=limit, statuses=statuses)


def test_issue_repro_daily_budget_holds_with_100_concurrent_hi(billing_app):
    url, app = billing_app
    result = race(url, app, kind="day", limit=0.0004, n=100)
    print(result.as_dict())
    assert result.failures == 0 and result.rows == 100
    assert result.answered > 0 and result.refused > 0
    assert result.max_one == pytest.approx((31 * 1 + 4 * 2) / 1e6)  # the upstream billed the template too
    assert result.within_one_request, result.as_dict()
    assert result.reserved_left == pytest.approx(0, abs=1e-12)  # every reservation settled
    assert result.booked == pytest.approx(result.used)  # the counters booked what was really spent


@pytest.mark.parametrize("n", [100, 500])
@pytest.mark.parametrize("kind, limit", [("day", 0.0004), ("month", 0.0004), ("tpm", 400)])
def test_limits_hold_under_concurrency_on_sqlite(billing_app, kind, limit, n):
    url, app = billing_app
    result = race(url, app, kind=kind, limit=limit, n=n)
    print(result.as_dict())
    assert result.failures == 0 and result.rows == n
    assert result.answered > 0 and result.refused > 0
    assert result.within_one_request, result.as_dict()
    assert result.reserved_left == pytest.approx(0, abs=1e-9)
