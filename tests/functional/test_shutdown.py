"""A graceful shutdown with requests in flight loses no ledger row."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.ledger.db import make_engine
from router.ledger.models import RequestRow
from tests.support.servers import free_port


def test_in_flight_requests_are_answered_and_recorded_on_shutdown(fake_settings, upstreams):
    from api.app import create_app

    upstreams["cheap"][0].delay_s = 1.0
    app = create_app(fake_settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)

    results: list[int] = []

    def call() -> None:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                       json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}]})
        results.append(r.status_code)

    clients = [threading.Thread(target=call) for _ in range(20)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 10
    while len(upstreams["cheap"][0].calls) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.should_exit = True  # SIGTERM-equivalent while all 20 are waiting on the expert
    for c in clients:
        c.join(30)
    thread.join(60)

    assert results == [200] * 20
    engine = make_engine(fake_settings.resolved_database_url)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(RequestRow).where(RequestRow.status == "ok")) == 20
    engine.dispose()
