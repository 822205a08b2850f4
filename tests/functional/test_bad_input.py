"""Client mistakes get a 4xx in the OpenAI error format, a message naming the problem, and a ledger row."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.ledger.models import RequestRow

OK_MSG = [{"role": "user", "content": "hi"}]

BAD_INPUTS = [
    # (case, raw body, status, code, words the message must contain)
    ("malformed JSON", b'{"model": "cheap", "messages": [', 400, "invalid_request", ["not valid JSON"]),
    ("empty body", b"", 400, "invalid_request", ["empty"]),
    ("not an object", b"[1, 2]", 400, "invalid_request", ["JSON object"]),
    ("missing model", {"messages": OK_MSG}, 400, "invalid_request", ["missing", "model"]),
    ("missing messages", {"model": "cheap"}, 400, "invalid_request", ["missing", "messages"]),
    ("empty messages", {"model": "cheap", "messages": []}, 400, "invalid_request", ["messages", "at least one"]),
    ("blank message", {"model": "cheap", "messages": [{"role": "user", "content": "  "}]}, 400, "invalid_request", ["empty"]),
    ("messages not a list", {"model": "cheap", "messages": "hi"}, 400, "invalid_request", ["messages", "list"]),
    ("bad role", {"model": "cheap", "messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_request", ["role"]),
    ("mistyped max_tokens", {"model": "cheap", "messages": OK_MSG, "max_tokens": "ten"}, 400, "invalid_request", ["max_tokens", "integer"]),
    ("negative max_tokens", {"model": "cheap", "messages": OK_MSG, "max_tokens": -1}, 400, "invalid_request", ["max_tokens"]),
    ("temperature out of range", {"model": "cheap", "messages": OK_MSG, "temperature": 7}, 400, "invalid_request", ["temperature"]),
    ("stream not bool", {"model": "cheap", "messages": OK_MSG, "stream": "yes"}, 400, "invalid_request", ["stream"]),
    ("n > 1", {"model": "cheap", "messages": OK_MSG, "n": 3}, 400, "invalid_request", ["n"]),
    ("unknown model", {"model": "gpt-17", "messages": OK_MSG}, 404, "model_not_found", ["gpt-17", "expertmux/auto"]),
    ("unknown policy", {"model": "expertmux/nope", "messages": OK_MSG}, 404, "model_not_found", ["nope", "available"]),
    ("unknown routing option", {"model": "expertmux/auto", "messages": OK_MSG, "expertmux": {"lamda": 1}}, 400,
     "invalid_request", ["unknown field", "expertmux.lamda"]),
    ("negative lambda", {"model": "expertmux/auto", "messages": OK_MSG, "expertmux": {"lambda": -1}}, 400,
     "invalid_request", ["expertmux.lambda"]),
    ("unknown allowed expert", {"model": "expertmux/auto", "messages": OK_MSG, "expertmux": {"allowed_experts": ["zzz"]}}, 400,
     "no_candidate_expert", ["zzz"]),
    ("budget below every expert", {"model": "expertmux/auto", "messages": OK_MSG, "expertmux": {"max_cost_usd": 1e-12}}, 400,
     "no_candidate_expert", ["max_cost_usd"]),
    ("prompt over the limit", {"model": "cheap", "messages": [{"role": "user", "content": "x" * 5000}]}, 400,
     "context_length_exceeded", ["5006 characters", "at most 4000"]),
]


@pytest.fixture
def small_limits_app(fake_settings):
    from api.app import create_app
    from tests.support.servers import serve_in_thread

    settings = fake_settings.model_copy(update={"max_prompt_chars": 4000, "max_body_bytes": 20_000})
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield url, app


def test_bad_inputs_get_clear_openai_errors_and_ledger_rows(small_limits_app):
    url, app = small_limits_app
    with httpx.Client(base_url=url, timeout=10) as http:
        for case, body, status, code, words in BAD_INPUTS:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = http.post("/v1/chat/completions", headers={"content-type": "application/json"}, **kwargs)
            assert r.status_code == status, f"{case}: {r.status_code} {r.text}"
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}, case
            assert err["code"] == code, f"{case}: {err}"
            for word in words:
                assert word in err["message"], f"{case}: {word!r} not in {err['message']!r}"
            assert r.headers["x-expertmux-request-id"], case
    ledger = app.state.service.ledger
    assert ledger.flush(10)
    with Session(ledger.engine) as s:
        rows = s.scalars(select(RequestRow)).all()
    assert len(rows) == len(BAD_INPUTS)
    assert {r.status for r in rows} == {"rejected"}
    assert all(r.http_status in (400, 404) and r.error for r in rows)


def test_oversized_body_and_wrong_routes(small_limits_app):
    url, app = small_limits_app
    with httpx.Client(base_url=url, timeout=10) as http:
        r = http.post("/v1/chat/completions", json={"model": "cheap", "messages": [{"role": "user", "content": "y" * 30_000}]})
        assert r.status_code == 413 and "exceeds the limit of 20000 bytes" in r.json()["error"]["message"]
        assert app.state.service.ledger.flush(10)
        with Session(app.state.service.ledger.engine) as s:
            (row,) = s.scalars(select(RequestRow)).all()
        assert row.status == "rejected" and row.http_status == 413
        r = http.get("/v1/nothing")
        assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]
        r = http.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_client_disconnect_mid_stream_is_recorded(fake_app_url, upstreams):
    url, app = fake_app_url
    upstreams["cheap"][0].answer = " ".join(["word"] * 50)
    upstreams["cheap"][0].chunk_delay_s = 0.05
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=10,
                      json={"model": "cheap", "stream": True, "messages": OK_MSG}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 3:
                break  # leave after a few chunks: the connection closes
    deadline = time.monotonic() + 10
    ledger = app.state.service.ledger
    while time.monotonic() < deadline:
        assert ledger.flush(10)
        with Session(ledger.engine) as s:
            rows = s.scalars(select(RequestRow)).all()
        if rows:
            break
        time.sleep(0.1)
    assert len(rows) == 1
    assert rows[0].status == "client_disconnected" and rows[0].stream and rows[0].expert == "cheap"
