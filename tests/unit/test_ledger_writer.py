"""The batched writer: nothing lost on close, retries while the database is unavailable."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.models import AttemptRow, RequestRow
from router.ledger.writer import LedgerRecord, LedgerWriter


def record(i: int) -> LedgerRecord:
    rid = f"r{i:031d}"
    now = datetime.now(UTC)
    request = {"id": rid, "created_at": now, "finished_at": now, "api_key_id": None, "tenant": None, "requested_model": "m",
               "policy": "p", "policy_version": "v", "expert": "e", "decision": {"expert": "e"}, "prompt_hash": None,
               "prompt_text": None, "prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.5, "ttft_ms": 1.0,
               "latency_ms": 2.0, "stream": False, "status": "ok", "http_status": 200, "error": None, "n_attempts": 1}
    attempt = {"request_id": rid, "attempt_no": 1, "expert": "e", "started_at": now, "ttft_ms": 1.0, "latency_ms": 2.0,
               "prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.5, "status": "ok", "error": None}
    return LedgerRecord(request=request, attempts=[attempt])


def counts(engine) -> tuple[int, int]:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(RequestRow)), s.scalar(select(func.count()).select_from(AttemptRow))


def test_close_drains_everything_from_many_threads(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    writer = LedgerWriter(engine, batch_size=50)
    writer.start()
    threads = [threading.Thread(target=lambda k=k: [writer.submit(record(k * 1000 + i)) for i in range(500)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert counts(engine) == (2000, 2000)
    assert writer.rows_written == 2000 and writer.pending == 0


def test_rows_wait_in_memory_until_the_database_is_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    engine = make_engine(url)  # no tables yet: every write fails
    writer = LedgerWriter(engine)
    writer.start()
    for i in range(10):
        writer.submit(record(i))
    assert not writer.flush(timeout=0.5)
    assert writer.write_failures >= 1 and writer.pending == 10
    migrate.upgrade(url)  # the database "comes back"
    assert writer.flush(timeout=15)
    writer.close()
    assert counts(engine) == (10, 10)
