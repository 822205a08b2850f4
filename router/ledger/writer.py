"""Batched ledger writes off the response path.

The service hands finished records to ``LedgerWriter.submit`` (a non-blocking queue put); a
background thread inserts them in batches. ``close`` drains the queue, so a graceful shutdown
loses nothing. Failed batches are retried with back-off and kept in memory meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from router.ledger.models import AttemptRow, RequestRow

log = logging.getLogger("expertmux.ledger")


@dataclass(slots=True)
class LedgerRecord:
    """One request row and its attempt rows, written together in one transaction."""

    request: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)


class LedgerWriter:
    def __init__(self, engine: Engine, *, batch_size: int = 256) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self._queue: queue.SimpleQueue[LedgerRecord | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.rows_written = 0
        self.write_failures = 0
        self._pending = 0
        self._idle = threading.Event()
        self._idle.set()

    # -- producer side (event loop) ----------------------------------------------------------
    def submit(self, record: LedgerRecord) -> None:
        with self._lock:
            self._pending += 1
            self._idle.clear()
        self._queue.put(record)

    @property
    def pending(self) -> int:
        return self._pending

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every submitted record is written (tests, admin, shutdown)."""
        return self._idle.wait(timeout)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 60.0) -> None:
        if self._thread is None:
            return
        self._queue.put(None)  # sentinel: drain what is queued, then stop
        self._thread.join(timeout)
        self._thread = None

    # -- consumer side (thread) --------------------------------------------------------------
    def _run(self) -> None:
        # Block for the first record, then take whatever else is already queued: under load
        # batches form by themselves while the previous batch is being written.
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch: list[LedgerRecord] = []
            while True:
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= self.batch_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write_with_retry(batch, stopping)

    def _write_with_retry(self, batch: list[LedgerRecord], stopping: bool) -> None:
        delay = 0.1
        attempts = 0
        while True:
            try:
                self._write(batch)
                break
            except Exception as exc:  # keep serving; the rows stay in memory until written
                attempts += 1
                self.write_failures += 1
                log.warning("ledger write of %d rows failed (attempt %d): %s", len(batch), attempts, exc)
                if stopping and attempts >= 5:
                    log.error("giving up on %d ledger rows at shutdown", len(batch))
                    break
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        with self._lock:
            self._pending -= len(batch)
            if self._pending == 0:
                self._idle.set()

    def _write(self, batch: list[LedgerRecord]) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(insert(RequestRow), [r.request for r in batch])
            attempts = [a for r in batch for a in r.attempts]
            if attempts:
                session.execute(insert(AttemptRow), attempts)
        self.rows_written += len(batch)
