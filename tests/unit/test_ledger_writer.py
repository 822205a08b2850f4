"""The batched writer: nothing lost on close, retries while the database is unavailable."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.models import AttemptRow, RequestRow
from router.ledger.records import LedgerRecord
from router.ledger.writer import LedgerWriter


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


def test_rows_submitted_while_and_after_closing_are_stored(tmp_path):
    """Requests cancelled at shutdown finish after the writer began closing: their rows count too."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    writer = LedgerWriter(engine, batch_size=10)
    writer.start()
    late = threading.Thread(target=lambda: [writer.submit(record(i)) or time.sleep(0.001) for i in range(300)])
    late.start()
    time.sleep(0.02)
    writer.close()  # races the submitting thread
    late.join()
    writer.submit(record(999))  # well after close
    assert counts(engine) == (301, 301) and writer.pending == 0


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


def test_outage_spools_to_disk_and_replays_when_the_database_returns(tmp_path):
    from router.ledger.spool import LedgerSpool

    url = f"sqlite:///{tmp_path / 'l.db'}"
    engine = make_engine(url)  # no tables: every write fails
    spool = LedgerSpool(tmp_path / "spool")
    writer = LedgerWriter(engine, spool=spool, retry_interval_s=0.1)
    writer.start()
    for i in range(30):
        writer.submit(record(i))
    deadline = time.monotonic() + 10
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.pending == 0 and writer.rows_spooled == 30 and spool.rows() == 30  # on disk, not in memory
    migrate.upgrade(url)  # the database comes back
    assert writer.flush(timeout=15)
    writer.close()
    assert counts(engine) == (30, 30)
    assert spool.files() == [] and writer.rows_replayed == 30


def test_spooled_rows_survive_a_restart_and_duplicates_are_skipped(tmp_path):
    from router.ledger.spool import LedgerSpool

    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    spool = LedgerSpool(tmp_path / "spool")
    assert spool.append([record(i) for i in range(5)])
    first = LedgerWriter(engine)
    first._write([record(0), record(1)])  # as if a crash hit after commit, before the file was deleted
    writer = LedgerWriter(engine, spool=LedgerSpool(tmp_path / "spool"))
    writer.start()
    assert writer.flush(timeout=10)
    writer.close()
    assert counts(engine) == (5, 5)
    assert spool.files() == []


def test_full_spool_keeps_rows_in_memory(tmp_path):
    from router.ledger.spool import LedgerSpool

    url = f"sqlite:///{tmp_path / 'l.db'}"
    engine = make_engine(url)
    spool = LedgerSpool(tmp_path / "spool", capacity_bytes=100)  # too small for one batch
    writer = LedgerWriter(engine, spool=spool)
    writer.start()
    writer.submit(record(1))
    assert not writer.flush(timeout=0.5) and writer.pending == 1 and spool.files() == []
    migrate.upgrade(url)
    assert writer.flush(timeout=15)
    writer.close()
    assert counts(engine) == (1, 1)
