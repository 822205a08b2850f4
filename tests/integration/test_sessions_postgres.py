"""Sessions across two replicas sharing one PostgreSQL: a conversation whose turns alternate
between the replicas keeps one expert, because its state lives in the shared database (the
per-replica cache is off, ``cache_ttl_s: 0``); the upsert, the feedback check and the dashboard's
switches-per-session query run on PostgreSQL."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.ledger.models import RequestRow, SessionRow
from tests.support.postgres import pg_bin, postgres_cluster
from tests.support.servers import serve_in_thread
from tests.support.sessions import session_settings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

if pg_bin() is None:
    pytest.skip("PostgreSQL server binaries are not installed (make test installs them)", allow_module_level=True)

RANDOM = {"active": "random", "lambda": 0, "options": {"random": {"random_state": 11}}}
ADMIN = "sessions-admin"


def _alternating_conversation(urls: list[str], turns: int, **extra) -> list[str]:
    messages, experts = [{"role": "system", "content": "You are terse."}], []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: what is {i} + {i}?"})
        r = httpx.post(f"{urls[i % len(urls)]}/v1/chat/completions", timeout=10,
                       json={"model": "expertmux/auto", "messages": messages, **extra})
        assert r.status_code == 200, r.text
        experts.append(r.headers["x-expertmux-expert"])
        messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
    return experts


def _two_replicas(tmp_path, upstreams, pg_url, sessions):
    from contextlib import ExitStack

    from api.app import create_app

    stack = ExitStack()
    apps = [create_app(session_settings(tmp_path / f"replica-{i}", upstreams, policy=RANDOM, sessions=sessions,
                                         database_url=pg_url, admin_token=SecretStr(ADMIN))) for i in range(2)]
    urls = [stack.enter_context(serve_in_thread(app)) for app in apps]
    return stack, urls, apps


def test_a_conversation_alternating_between_replicas_keeps_its_expert(tmp_path, upstreams):
    switches = lambda xs: sum(a != b for a, b in zip(xs, xs[1:]))  # noqa: E731
    with postgres_cluster() as pg_url:
        stack, urls, _ = _two_replicas(tmp_path / "off", upstreams, pg_url, None)
        with stack:
            off = _alternating_conversation(urls, 12)
    with postgres_cluster() as pg_url:
        stack, urls, apps = _two_replicas(tmp_path / "on", upstreams, pg_url, {"cache_ttl_s": 0})
        with stack:
            # each replica writes its state from a writer thread; the next turn on the other replica
            # must see it, so the writer's short flush interval is what keeps the conversation
            on = []
            messages = [{"role": "system", "content": "You are terse."}]
            for i in range(12):
                messages.append({"role": "user", "content": f"question {i}: what is {i} + {i}?"})
                r = httpx.post(f"{urls[i % 2]}/v1/chat/completions", timeout=10,
                               json={"model": "expertmux/auto", "messages": messages})
                assert r.status_code == 200, r.text
                on.append(r.headers["x-expertmux-expert"])
                messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
                assert apps[i % 2].state.service.over_time.sessions.flush()  # as the writer thread would, now
            for app in apps:
                assert app.state.service.ledger.flush(10)
            engine = apps[0].state.service.ledger.engine
            with Session(engine) as s:
                rows = s.scalars(select(RequestRow).order_by(RequestRow.created_at)).all()
                stored = s.scalars(select(SessionRow)).all()
            r = httpx.get(f"{urls[1]}/admin/api/sessions", params={"hours": 1}, headers={"authorization": f"Bearer {ADMIN}"})
    assert switches(off) >= 3  # the seeded coin per turn switches without sessions
    assert switches(on) == 0, on
    assert len(rows) == 12 and len({row.session_id for row in rows}) == 1
    assert len(stored) == 1 and stored[0].turns == 12 and stored[0].switches == 0 and stored[0].expert == on[0]
    events = [row.decision["session"]["event"] for row in rows]
    assert events[0] == "first" and set(events[1:]) == {"stay"}
    body = r.json()
    assert r.status_code == 200 and body["enabled"] and body["sessions"] == 1 and body["requests"] == 12
    assert body["switches"] == 0 and body["top"][0]["experts"] == 1
