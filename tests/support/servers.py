"""Run ASGI apps on real loopback ports inside the test process (uvicorn in a thread)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app, *, port: int | None = None, startup_timeout: float = 300.0):
    """Serve ``app`` on 127.0.0.1; yields the base URL; shuts down gracefully (lifespan included)."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server thread exited during start-up (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server not started after {startup_timeout}s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def ledger_row(app, request_id: str):
    """The ledger row of one request served by ``app`` (after the writer has flushed it)."""
    from sqlalchemy.orm import Session

    from router.ledger.models import RequestRow

    ledger = app.state.service.ledger
    assert ledger.flush(10)
    with Session(ledger.engine) as s:
        row = s.get(RequestRow, request_id)
        assert row is not None, f"no ledger row for {request_id}"
        return row
