"""API keys, admin API, rate limits and budgets through the real app (fake upstream experts)."""

from __future__ import annotations

import httpx
import openai
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.ledger.models import RequestRow
from tests.support.budget_race import budget_race
from tests.support.servers import serve_in_thread

ADMIN = "admin-secret"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def keyed_app(fake_settings):
    from api.app import create_app

    settings = fake_settings.model_copy(update={"require_api_keys": True, "admin_token": SecretStr(ADMIN), "key_cache_ttl_s": 0})
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield url, app


def admin(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)


def test_keys_required_and_admin_lifecycle(keyed_app):
    url, app = keyed_app
    anon = openai.OpenAI(base_url=f"{url}/v1", api_key="emx-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        anon.chat.completions.create(model="cheap", messages=HI)
    assert info.value.status_code == 401 and "invalid or revoked API key" in info.value.message
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "cheap", "messages": HI})
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]

    # admin endpoints need the admin token, not a user key
    assert httpx.get(f"{url}/admin/keys").status_code == 401
    assert httpx.get(f"{url}/admin/keys", headers={"authorization": "Bearer wrong"}).json()["error"]["code"] == "invalid_admin_token"
    with admin(url) as http:
        created = http.post("/admin/keys", json={"name": "team-a", "tenant": "acme", "prompt_storage": "hash"})
        assert created.status_code == 201
        body = created.json()
        secret, key_id = body["key"], body["id"]
        assert secret.startswith("emx-") and body["prefix"] == secret[:10]
        bad = http.post("/admin/keys", json={"name": "x", "rpm_limit": -1})
        assert bad.status_code == 400 and "rpm_limit" in bad.json()["error"]["message"]
        listed = http.get("/admin/keys").json()["data"]
        assert [k["name"] for k in listed] == ["team-a"] and "key" not in listed[0]

        user = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
        raw = user.chat.completions.with_raw_response.create(model="cheap", messages=HI)
        rid = raw.headers["x-expertmux-request-id"]
        assert app.state.service.ledger.flush(10)
        with Session(app.state.service.ledger.engine) as s:
            row = s.get(RequestRow, rid)
        assert row.api_key_id == key_id and row.tenant == "acme"
        assert row.prompt_text is None and len(row.prompt_hash) == 64  # the key's prompt storage: hash

        assert http.delete(f"/admin/keys/{key_id}").json()["revoked"] is True
        assert http.delete("/admin/keys/nope").status_code == 404
    with pytest.raises(openai.AuthenticationError):
        user.chat.completions.create(model="cheap", messages=HI)
    # rejected requests are in the ledger too
    assert app.state.service.ledger.flush(10)
    with Session(app.state.service.ledger.engine) as s:
        statuses = [r.http_status for r in s.scalars(select(RequestRow).order_by(RequestRow.created_at))]
    assert statuses == [401, 401, 200, 401]


def test_requests_per_minute_limit(keyed_app):
    url, app = keyed_app
    _, secret = app.state.service.keys.create(name="rpm", rpm_limit=3)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="cheap", messages=HI)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="cheap", messages=HI)
    assert "3 requests per minute" in info.value.message


def test_tokens_per_minute_limit(keyed_app):
    url, app = keyed_app
    _, secret = app.state.service.keys.create(name="tpm", tpm_limit=150)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
    # "hi" reserves 2 bytes + 8 per message + 64 for the template, plus max_tokens; uses 7 + 3
    client.chat.completions.create(model="cheap", messages=HI, max_tokens=20)  # 94 reserved
    client.chat.completions.create(model="cheap", messages=HI, max_tokens=60)  # 10 used + 134 reserved <= 150
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="cheap", messages=HI, max_tokens=60)  # 20 used + 134 > 150
    assert "150 tokens per minute" in info.value.message


def test_budget_is_never_overspent_under_100_concurrent_requests(keyed_app):
    url, app = keyed_app
    # 'cheap' costs $1/$2 per 1M tokens: each request reserves (74 prompt tokens at most + 10) worth
    # $0.000094 and spends 7 + 3 tokens = $0.000013. A budget of $0.0002 fits 2 reservations at a time.
    result = budget_race(url, app, budget=0.0002)
    ok = result["statuses"].count(200)
    assert set(result["statuses"]) <= {200, 429}
    assert result["spent"] <= 0.0002 + 1e-12
    assert result["spent"] == pytest.approx(ok * 0.000013)
    assert result["spent_ledger"] == pytest.approx(result["spent"])
    assert result["reserved"] == pytest.approx(0.0, abs=1e-12)  # every reservation settled
    assert result["rows"] == 100  # refused requests are recorded too
    assert 2 <= ok <= 15
