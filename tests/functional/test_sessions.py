"""Session-aware routing through the real app (fake upstream experts): a conversation keeps its
expert, a stalled agent loop moves one tier up, and a session store that cannot be reached
means plain per-request routing, never an error."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from router.ledger.models import RequestRow, SessionRow
from tests.support.servers import serve_in_thread
from tests.support.sessions import session_settings


@pytest.fixture
def app_for(tmp_path, upstreams):
    from api.app import create_app

    servers = []

    def start(**kw):
        home = tmp_path / str(len(servers))
        home.mkdir()
        app = create_app(session_settings(home, upstreams, **kw))
        ctx = serve_in_thread(app)
        url = ctx.__enter__()
        servers.append(ctx)
        return url, app

    yield start
    for ctx in servers:
        ctx.__exit__(None, None, None)


def _chat(http: httpx.Client, messages: list[dict], **extra) -> httpx.Response:
    r = http.post("/v1/chat/completions", json={"model": "expertmux/auto", "messages": messages, **extra})
    assert r.status_code == 200, r.text
    return r


def _conversation(http: httpx.Client, turns: int, **extra) -> list[str]:
    messages, experts = [{"role": "system", "content": "You are terse."}], []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: what is {i} + {i}?"})
        r = _chat(http, messages, **extra)
        experts.append(r.headers["x-expertmux-expert"])
        messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
    return experts


RANDOM = {"active": "random", "lambda": 0, "options": {"random": {"random_state": 7}}}


def test_a_conversation_keeps_its_expert_only_with_sessions(tmp_path, app_for):
    url_off, _ = app_for(policy=RANDOM, sessions=None)
    url_on, app = app_for(policy=RANDOM, sessions={"cache_ttl_s": 0}, admin_token=SecretStr("adm"))
    with httpx.Client(base_url=url_off, timeout=10) as http:
        off = _conversation(http, 12)
    with httpx.Client(base_url=url_on, timeout=10) as http:
        on = _conversation(http, 12)
        other = _conversation(http, 12, user="someone-else")  # another session: its own expert
    switches = lambda xs: sum(a != b for a, b in zip(xs, xs[1:]))  # noqa: E731
    assert switches(off) >= 3  # a fair coin per turn (seeded): the control switches
    assert switches(on) == 0 and switches(other) == 0
    assert app.state.service.ledger.flush(10) and app.state.service.over_time.sessions.flush()
    with Session(app.state.service.ledger.engine) as s:
        rows = s.scalars(select(RequestRow).order_by(RequestRow.created_at)).all()
        sessions = {r.id: r for r in s.scalars(select(SessionRow))}
    ids = [r.session_id for r in rows]
    assert len(set(ids[:12])) == 1 and len(set(ids[12:])) == 1 and ids[0] != ids[12]
    assert all(i.startswith("s-") and "someone" not in i for i in ids)  # hashed: no user id in the ledger
    first = sessions[ids[0]]
    assert first.turns == 12 and first.switches == 0 and first.expert == on[0]
    events = [r.decision["session"]["event"] for r in rows[:12]]
    assert events[0] == "first" and set(events[1:]) == {"stay"}
    # random's propensities are 1/2 each; the session rule makes the served choice certain given the state
    assert rows[5].decision["propensities"][on[0]] == 1.0
    # the dashboard API: switches per session
    r = httpx.get(f"{url_on}/admin/api/sessions", params={"hours": 1}, headers={"authorization": "Bearer adm"})
    body = r.json()
    assert r.status_code == 200 and body["enabled"] and body["sessions"] == 2 and body["requests"] == 24
    assert body["switches"] == 0 and {t["session_id"] for t in body["top"]} == {ids[0], ids[12]}
    assert all(t["requests"] == 12 and t["experts"] == 1 for t in body["top"])


def _tool_turn(i: int) -> list[dict]:
    call = {"id": f"call_{i}", "type": "function", "function": {"name": "search", "arguments": '{"q": "weather"}'}}
    return [{"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "no results"}]


TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
FIXED_CHEAP = {"active": "fixed", "lambda": 0, "options": {"fixed": {"expert": "cheap"}}}


def test_a_stalled_agent_loop_escalates_one_tier_within_the_configured_turns(app_for):
    url, app = app_for(policy=FIXED_CHEAP, sessions={"loop_repeats": 3, "cache_ttl_s": 60}, admin_token=SecretStr("adm"))
    messages = [{"role": "user", "content": "find the weather in Paris"}]
    served = []
    with httpx.Client(base_url=url, timeout=10) as http:
        for i in range(6):
            r = _chat(http, messages, tools=TOOLS, expertmux={"session_id": "agent-run-1"})
            served.append(r.headers["x-expertmux-expert"])
            messages += _tool_turn(i)  # the agent repeats the same call and gets the same nothing
    # requests 1-3 carry 0, 1, 2 identical calls; the 4th carries 3 = loop_repeats: a stall
    assert served[:3] == ["cheap"] * 3
    assert served[3] == "strong"
    assert served[4:] == ["strong", "strong"]  # the escalated tier is the session's floor
    assert app.state.service.ledger.flush(10)
    with Session(app.state.service.ledger.engine) as s:
        rows = s.scalars(select(RequestRow).order_by(RequestRow.created_at)).all()
    d = rows[3].decision
    assert d["session"]["event"] == "escalate" and d["session"]["stall"] == "tool_loop" and "one tier up" in d["reason"]
    assert app.state.service.over_time.sessions.flush()
    body = httpx.get(f"{url}/admin/api/sessions", params={"hours": 1}, headers={"authorization": "Bearer adm"}).json()
    assert body["switches"] == 1 and body["top"][0]["escalations"] == 1 and body["top"][0]["expert"] == "strong"


def test_failed_requests_and_negative_feedback_escalate(app_for, upstreams):
    url, app = app_for(policy=FIXED_CHEAP, sessions={"max_failures": 2, "negative_feedback": 0.3, "cache_ttl_s": 60},
                       max_attempts=1)
    cheap = upstreams["cheap"][0]
    with httpx.Client(base_url=url, timeout=10) as http:
        body = {"model": "expertmux/auto", "messages": [{"role": "user", "content": "hello"}], "user": "u1"}
        cheap.fail_status = 500
        assert [http.post("/v1/chat/completions", json=body).status_code for _ in range(2)] == [502, 502]
        cheap.fail_status = None
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.headers["x-expertmux-expert"] == "strong"  # two failures: a stall

        # a second session: a thumbs-down on its answer moves it up at its next turn
        body2 = {**body, "user": "u2"}
        r = http.post("/v1/chat/completions", json=body2)
        assert r.headers["x-expertmux-expert"] == "cheap"
        fb = http.post("/v1/feedback", json={"request_id": r.headers["x-expertmux-request-id"], "thumbs": "down"})
        assert fb.status_code in (200, 201), fb.text
        r = http.post("/v1/chat/completions", json=body2)
        assert r.headers["x-expertmux-expert"] == "strong"
        assert json.loads(json.dumps(r.json()))["choices"]


def test_session_store_down_means_plain_routing_never_an_error(app_for):
    url, app = app_for(policy=RANDOM, sessions={"cache_ttl_s": 0})
    with httpx.Client(base_url=url, timeout=10) as http:
        _conversation(http, 2)
        with app.state.service.ledger.engine.begin() as conn:  # the store's table disappears under the proxy
            conn.execute(text("DROP TABLE routing_sessions"))
        experts = _conversation(http, 8, user="new")  # a new session: no cached state to fall back on
    assert len(experts) == 8
    store = app.state.service.over_time.sessions
    assert store.read_failures >= 1
    assert app.state.service.ledger.flush(10)
    with Session(app.state.service.ledger.engine) as s:
        rows = s.scalars(select(RequestRow).order_by(RequestRow.created_at)).all()
    assert [r.status for r in rows] == ["ok"] * 10
    assert "session" not in rows[-1].decision  # routed alone
