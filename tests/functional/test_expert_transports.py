"""Both ways of calling an expert — direct HTTP and litellm — give clients the same answers, usage,
ledger rows and error handling."""

from __future__ import annotations

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from experts import client as expert_client
from router.ledger.models import AttemptRow, RequestRow
from tests.conftest import make_settings, remote_expert
from tests.support import fake_openai
from tests.support.servers import free_port, serve_in_thread

TRANSPORTS = ("http", "litellm")
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=TRANSPORTS)
def app_url(request, tmp_path):
    """'main' (preferred) and 'backup' fake experts, both called through the transport under test."""
    main, backup = fake_openai.Behaviour(answer="main says hello"), fake_openai.Behaviour(answer="backup says hello")
    with serve_in_thread(fake_openai.make_app(main)) as main_url, serve_in_thread(fake_openai.make_app(backup)) as backup_url:
        t = request.param
        experts = [remote_expert("main", main_url, prior_quality=0.9, transport=t),
                   remote_expert("backup", backup_url, prior_quality=0.2, transport=t, timeout_s=5)]
        settings = make_settings(tmp_path, experts, {"active": "strongest", "lambda": 0})
        from api.app import create_app

        app = create_app(settings)
        with serve_in_thread(app) as url:
            yield url, app, main, backup, t


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)


def _rows(app) -> list[tuple[RequestRow, list[AttemptRow]]]:
    service = app.state.service
    assert service.ledger.flush(10)
    with Session(service.ledger.engine) as s:
        rows = list(s.scalars(select(RequestRow).order_by(RequestRow.created_at)))
        return [(r, list(s.scalars(select(AttemptRow).where(AttemptRow.request_id == r.id).order_by(AttemptRow.attempt_no))))
                for r in rows]


def test_the_transport_in_use_is_the_configured_one(app_url):
    _, app, *_, t = app_url
    assert {expert_client.uses_http(e) for e in app.state.service.experts} == {t == "http"}


def test_answers_usage_and_ledger_match(app_url):
    url, app, main, _, _ = app_url
    resp = _client(url).chat.completions.create(model="expertmux/auto", messages=HI, max_tokens=9, temperature=0.5)
    assert resp.choices[0].message.content == "main says hello"
    assert resp.usage.prompt_tokens == 7 and resp.usage.completion_tokens == 3
    sent = main.calls[-1]
    assert sent["model"] == "fake-model" and sent["max_tokens"] == 9 and sent["temperature"] == 0.5 and sent["messages"] == HI

    stream = _client(url).chat.completions.create(model="main", messages=HI, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "main says hello"
    assert chunks[-1].usage.completion_tokens == 3
    (r1, a1), (r2, a2) = _rows(app)
    for row, attempts in ((r1, a1), (r2, a2)):
        assert row.status == "ok" and row.prompt_tokens == 7 and row.completion_tokens == 3
        assert row.cost_usd == pytest.approx((7 * 1.0 + 3 * 2.0) / 1e6)
        assert [(a.expert, a.status) for a in attempts] == [("main", "ok")]
    assert r2.stream


def test_backend_usage_extras_reach_the_ledger(app_url):
    url, app, main, _, _ = app_url
    main.extra_usage = {"llm_tokens": 2, "cost_usd": 0.5}
    _client(url).chat.completions.create(model="main", messages=HI)
    list(_client(url).chat.completions.create(model="main", messages=HI, stream=True))
    for row, (attempt,) in _rows(app):
        assert attempt.usage_details["llm_tokens"] == 2 and row.cost_usd == pytest.approx(0.5)


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failure_falls_back_and_is_recorded(app_url, stream):
    url, app, main, _, _ = app_url
    main.fail_status = 503
    raw = _client(url).chat.completions.with_raw_response.create(model="expertmux/auto", messages=HI, stream=stream)
    assert raw.headers["x-expertmux-expert"] == "backup"
    resp = raw.parse()
    text = "".join(c.choices[0].delta.content or "" for c in resp if c.choices) if stream else resp.choices[0].message.content
    assert text == "backup says hello"
    ((row, attempts),) = _rows(app)
    assert row.status == "ok" and [(a.expert, a.status) for a in attempts] == [("main", "error"), ("backup", "ok")]
    assert "503" in attempts[0].error or "upstream failure" in attempts[0].error


def test_upstream_rate_limit_falls_back(app_url):
    url, app, main, _, _ = app_url
    main.fail_status = 429
    resp = _client(url).chat.completions.create(model="expertmux/auto", messages=HI)
    assert resp.choices[0].message.content == "backup says hello"
    ((_, attempts),) = _rows(app)
    assert "rate limited" in attempts[0].error


def test_upstream_rejecting_the_request_is_the_clients_error(app_url):
    url, app, main, _, _ = app_url
    main.fail_status = 400
    with pytest.raises(openai.BadRequestError) as err:
        _client(url).chat.completions.create(model="main", messages=HI)
    assert "rejected the request" in err.value.message
    ((row, _),) = _rows(app)
    assert row.status == "rejected" and row.http_status == 400


def test_timeout_and_unreachable_expert(app_url):
    url, app, main, backup, t = app_url
    backup.delay_s = 8  # longer than backup's 5 s timeout
    main_down = app.state.service.experts["main"]
    main_down.backend.config = main_down.config.model_copy(update={"endpoint": f"http://127.0.0.1:{free_port()}/v1"})
    with pytest.raises(openai.APIStatusError) as err:
        _client(url).chat.completions.create(model="expertmux/auto", messages=HI)
    assert err.value.status_code in (502, 504)
    ((row, attempts),) = _rows(app)
    assert [a.expert for a in attempts] == ["main", "backup"]
    assert "unreachable" in attempts[0].error and "timed out" in attempts[1].error


def test_stream_dropped_mid_way_ends_with_an_error_event(app_url):
    url, app, main, _, _ = app_url
    main.break_stream_after = 1
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30,
                      json={"model": "main", "stream": True, "messages": HI}) as r:
        assert r.status_code == 200
        body = r.read().decode()
    assert '"error"' in body and "[DONE]" not in body
    ((row, _),) = _rows(app)
    assert row.status == "error"


def test_stream_usage_is_counted_when_the_upstream_sends_none(app_url):
    url, app, main, _, _ = app_url
    main.usage_in_stream = False  # like llama.cpp's server
    chunks = list(_client(url).chat.completions.create(model="main", messages=HI, stream=True,
                                                       stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "main says hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    ((row, _),) = _rows(app)
    assert row.completion_tokens == chunks[-1].usage.completion_tokens and row.prompt_tokens == chunks[-1].usage.prompt_tokens
