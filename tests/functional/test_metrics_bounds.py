"""/metrics stays the same size whatever clients send, and /healthz tells strangers nothing.

The issue: client-chosen ``model`` strings became Prometheus labels (3,000 unique names took
``/metrics`` from 209 KB to 6.5 MB) and were shown to anyone who asked.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from pydantic import SecretStr

from tests.support.servers import serve_in_thread

HI = [{"role": "user", "content": "hi"}]


async def _unique_models(url: str, n: int, concurrency: int = 32) -> list[int]:
    # Idle connections are dropped before the server's 5 s keep-alive timeout closes them under us.
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(keepalive_expiry=2.0)) as http:
        sem = asyncio.Semaphore(concurrency)
        names = [f"tenant-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
        names[::3] = [f"expertmux/{n}" for n in names[::3]]  # unknown policies too

        async def one(name: str) -> int:
            async with sem:
                return (await http.post("/v1/chat/completions", json={"model": name, "messages": HI})).status_code
        return list(await asyncio.gather(*(one(m) for m in names)))


@pytest.mark.slow  # 10,000 requests: about two minutes on two busy cores
def test_10000_unique_model_names_leave_metrics_size_unchanged(fake_app_url):
    url, app = fake_app_url
    with httpx.Client(base_url=url, timeout=30) as http:
        for model in ("cheap", "strong", "expertmux/auto", "nope"):  # every label a deployment really has
            http.post("/v1/chat/completions", json={"model": model, "messages": HI})
        before = http.get("/metrics").text
    statuses = asyncio.run(_unique_models(url, 10_000))
    after = httpx.get(f"{url}/metrics", timeout=30).text  # a new connection: the old one idled out
    assert set(statuses) == {404}
    growth = len(after) / len(before) - 1
    print(f"/metrics: {len(before)} bytes before, {len(after)} after 10,000 unique model names ({growth:+.2%})")
    assert abs(growth) <= 0.05
    assert "tenant-" not in after
    assert 'model="other"' in after and 'model="cheap"' in after


@pytest.fixture
def locked_ops_app(fake_settings):
    from api.app import create_app

    settings = fake_settings.model_copy(update={"metrics_auth": True, "metrics_token": SecretStr("scrape-me"),
                                                "admin_token": SecretStr("adm")})
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield url, app


def test_healthz_is_open_but_reveals_nothing(locked_ops_app):
    url, _ = locked_ops_app
    httpx.post(f"{url}/v1/chat/completions", json={"model": "secret-tenant-model", "messages": HI})
    r = httpx.get(f"{url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_metrics_and_detailed_health_need_the_metrics_token_or_the_admin_token(locked_ops_app):
    url, _ = locked_ops_app
    for path in ("/metrics", "/healthz/details"):
        anon = httpx.get(f"{url}{path}")
        assert anon.status_code == 401 and anon.json()["error"]["code"] == "invalid_metrics_token", path
        assert httpx.get(f"{url}{path}", headers={"authorization": "Bearer wrong"}).status_code == 401
        for token in ("scrape-me", "adm"):
            assert httpx.get(f"{url}{path}", headers={"authorization": f"Bearer {token}"}).status_code == 200, (path, token)
    details = httpx.get(f"{url}/healthz/details", headers={"authorization": "Bearer scrape-me"}).json()
    assert details["experts"]["cheap"]["up"] is True


def test_metrics_auth_defaults_to_open_on_loopback_only(fake_settings):
    assert fake_settings.metrics_auth is None and fake_settings.metrics_auth_required is False
    assert fake_settings.model_copy(update={"host": "0.0.0.0"}).metrics_auth_required is True
    assert fake_settings.model_copy(update={"metrics_auth": True}).metrics_auth_required is True
