"""The OpenAI-compatible surface against fake upstream experts: routing, streaming, ledger rows."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.ledger.models import AttemptRow, RequestRow


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="test-key", max_retries=0)


def _rows(app) -> list[RequestRow]:
    service = app.state.service
    assert service.ledger.flush(10)
    with Session(service.ledger.engine) as s:
        return list(s.scalars(select(RequestRow).order_by(RequestRow.created_at)))


def test_non_streaming_by_policy_and_by_name(fake_app_url):
    url, app = fake_app_url
    client = _client(url)
    raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=[{"role": "user", "content": "hi"}])
    resp = raw.parse()
    assert resp.choices[0].message.content == "strong answer here"  # active policy: strongest
    assert raw.headers["x-expertmux-expert"] == "strong"
    assert raw.headers["x-expertmux-policy"] == "strongest"
    rid = raw.headers["x-expertmux-request-id"]

    by_name = client.chat.completions.with_raw_response.create(model="cheap", messages=[{"role": "user", "content": "hi"}])
    assert by_name.parse().choices[0].message.content == "cheap answer here"
    assert by_name.headers["x-expertmux-policy"] == "direct"

    cheapest = client.chat.completions.with_raw_response.create(model="expertmux/cheapest", messages=[{"role": "user", "content": "hi"}])
    assert cheapest.headers["x-expertmux-expert"] == "cheap"

    rows = {r.id: r for r in _rows(app)}
    assert len(rows) == 3
    row = rows[rid]
    assert row.status == "ok" and row.expert == "strong" and row.policy == "strongest"
    assert row.prompt_tokens == 7 and row.completion_tokens == 3
    assert row.cost_usd == pytest.approx((7 * 10.0 + 3 * 30.0) / 1e6)
    assert row.decision["propensities"] == {"cheap": 0.0, "strong": 1.0}
    assert set(row.decision["scores"]) == {"cheap", "strong"}
    assert row.prompt_text == "user: hi" and len(row.prompt_hash) == 64
    assert row.api_key_id is None  # keyless local mode: an unknown key is ignored, never stored


def test_the_policy_reads_the_question_and_the_ledger_keeps_the_conversation(fake_app_url, monkeypatch):
    url, app = fake_app_url
    policy, seen = app.state.service.policies.get("strongest"), []
    decide = policy.decide
    monkeypatch.setattr(policy, "decide", lambda request, **kw: seen.append(request.prompt) or decide(request, **kw))
    conversation = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"}, {"role": "user", "content": "Why is the sky blue?"}]
    raw = _client(url).chat.completions.with_raw_response.create(model="expertmux/auto", messages=conversation)
    assert seen == ["Why is the sky blue?"]  # as policies are trained: the question, not the transcript
    row = {r.id: r for r in _rows(app)}[raw.headers["x-expertmux-request-id"]]
    assert row.prompt_text == ("system: You are a helpful assistant.\nuser: 2+2?\nassistant: 4\n"
                               "user: Why is the sky blue?")


def test_streaming_relays_chunks_and_records_usage(fake_app_url):
    url, app = fake_app_url
    client = _client(url)
    stream = client.chat.completions.create(model="strong", messages=[{"role": "user", "content": "hi"}], stream=True,
                                            stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "strong answer here"
    assert usage is not None and usage.completion_tokens == 3
    (row,) = _rows(app)
    assert row.stream and row.status == "ok" and row.ttft_ms is not None and row.ttft_ms <= row.latency_ms
    assert row.completion_tokens == 3


def test_routing_options_in_extra_body(fake_app_url):
    url, app = fake_app_url
    client = _client(url)
    raw = client.chat.completions.with_raw_response.create(
        model="expertmux/auto", messages=[{"role": "user", "content": "hi"}],
        extra_body={"expertmux": {"allowed_experts": ["cheap"]}})
    assert raw.headers["x-expertmux-expert"] == "cheap"
    raw = client.chat.completions.with_raw_response.create(
        model="expertmux/prior", messages=[{"role": "user", "content": "hi"}], max_tokens=1000,
        extra_body={"expertmux": {"lambda": 1e6}})
    assert raw.headers["x-expertmux-expert"] == "cheap"  # expensive enough to flip the choice


def test_models_lists_router_models_and_experts(fake_app_url):
    url, _ = fake_app_url
    ids = [m.id for m in _client(url).models.list().data]
    assert ids[0] == "expertmux/auto"
    assert {"expertmux/cheapest", "expertmux/random", "cheap", "strong"} <= set(ids)


def test_fallback_to_next_candidate_before_first_byte(fake_app_url, upstreams):
    url, app = fake_app_url
    upstreams["strong"][0].fail_status = 503
    raw = _client(url).chat.completions.with_raw_response.create(model="expertmux/auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-expertmux-expert"] == "cheap"
    (row,) = _rows(app)
    assert row.status == "ok" and row.n_attempts == 2 and row.expert == "cheap"
    with Session(app.state.service.ledger.engine) as s:
        attempts = list(s.scalars(select(AttemptRow).where(AttemptRow.request_id == row.id).order_by(AttemptRow.attempt_no)))
    assert [(a.expert, a.status) for a in attempts] == [("strong", "error"), ("cheap", "ok")]


def test_stream_broken_after_first_byte_ends_with_error_event(fake_app_url, upstreams):
    url, app = fake_app_url
    upstreams["strong"][0].break_stream_after = 1
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30,
                      json={"model": "strong", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200
        body = r.read().decode()
    assert '"error"' in body and "[DONE]" not in body
    (row,) = _rows(app)
    assert row.status == "error" and row.stream


def test_health_and_metrics(fake_app_url):
    url, _ = fake_app_url
    _client(url).chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}])
    health = httpx.get(f"{url}/healthz/details").json()
    assert health["experts"]["cheap"]["up"] is True and health["policy"] == "strongest"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'expertmux_requests_total{expert="cheap",model="cheap",policy="direct",status="ok"} 1.0' in metrics
    assert "expertmux_request_latency_seconds_bucket" in metrics
    assert 'expertmux_cost_usd_total{expert="cheap"}' in metrics


def test_breaker_takes_a_failing_expert_out_of_rotation(fake_app_url, upstreams):
    url, app = fake_app_url
    upstreams["strong"][0].fail_status = 500
    client = _client(url)
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-expertmux-expert"] == "cheap"
    rows = _rows(app)
    assert [r.n_attempts for r in rows] == [2, 2, 2, 1]  # threshold 3: the fourth never tries 'strong'
    assert rows[-1].decision["ranking"] == ["cheap"]
    assert len(upstreams["strong"][0].calls) == 3
    health = httpx.get(f"{url}/healthz/details").json()
    assert health["experts"]["strong"]["breaker"] == "open"
    assert 'expertmux_expert_breaker_state{expert="strong"} 2.0' in httpx.get(f"{url}/metrics").text


def test_backend_usage_details_reach_the_ledger(fake_app_url, upstreams):
    """A backend that mixes models (R2R) reports its split and its own cost in `usage`."""
    url, app = fake_app_url
    upstreams["cheap"][0].extra_usage = {"llm_share": 0.25, "slm_tokens": 3, "llm_tokens": 1, "cost_usd": 0.5}
    client = _client(url)
    resp = client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "cheap answer here"
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30,
                      json={"model": "cheap", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        sse = r.read().decode()
    assert "usage_details" not in sse and "[DONE]" in sse  # extras stay out of the OpenAI stream
    rows = _rows(app)
    assert len(rows) == 2
    for row in rows:
        assert row.usage_details == {"llm_share": 0.25, "slm_tokens": 3, "llm_tokens": 1, "cost_usd": 0.5}, f"stream={row.stream}"
        assert row.cost_usd == 0.5


def test_load_aware_routing_avoids_a_busy_expert(fake_settings, upstreams):
    import threading

    from api.app import create_app
    from tests.support.servers import serve_in_thread

    upstreams["strong"][0].delay_s = 1.5
    cfg = fake_settings.app_config.model_copy(deep=True)
    cfg.policy.latency_weight = 1.0
    cfg.experts[1].max_concurrency = 1  # one request at a time: in-flight calls queue
    settings = fake_settings.model_copy()
    settings.__dict__["app_config"] = cfg  # the cached config, with load-aware routing on
    app = create_app(settings)
    with serve_in_thread(app) as url:
        client = _client(url)
        first = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=[{"role": "user", "content": "hi"}])
        assert first.headers["x-expertmux-expert"] == "strong"  # idle: quality wins
        busy = [threading.Thread(target=lambda: client.chat.completions.create(model="strong", messages=[{"role": "user", "content": "x"}]))
                for _ in range(3)]
        for t in busy:
            t.start()
        time.sleep(0.3)
        raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=[{"role": "user", "content": "hi"}])
        for t in busy:
            t.join()
        assert raw.headers["x-expertmux-expert"] == "cheap"
        row = [r for r in _rows(app) if r.id == raw.headers["x-expertmux-request-id"]][0]
        assert row.decision["expected_latency_s"]["strong"] > row.decision["expected_latency_s"]["cheap"]
        assert "load-aware" in row.decision["reason"]
