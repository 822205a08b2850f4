"""Batched ledger writes off the response path.

The service hands finished records to ``LedgerWriter.submit`` (a non-blocking queue put); a
background thread inserts them in batches. When the database is unavailable, failed batches go
to a bounded on-disk spool and are replayed once writes succeed again; with no spool (or a full
one) they stay in memory and are retried with back-off. ``close`` drains the queue, so a graceful
shutdown loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from router.ledger import rollups
from router.ledger.db import sqlite_file_identity
from router.ledger.models import AttemptRow, RequestRow
from router.ledger.records import LedgerRecord
from router.ledger.spool import LedgerSpool
from router.ledger.usage import apply_settlement

log = logging.getLogger("expertmux.ledger")


class LedgerWriter:
    def __init__(self, engine: Engine, *, batch_size: int = 256, spool: LedgerSpool | None = None,
                 retry_interval_s: float = 1.0) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.spool = spool
        self.retry_interval_s = retry_interval_s
        self._queue: queue.SimpleQueue[LedgerRecord | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self._pending_ids: set[str] = set()  # request ids queued or being written
        self._written = threading.Condition(self._lock)
        self._idle = threading.Event()
        self._idle.set()
        self.rows_written = 0
        self.rows_spooled = 0
        self.rows_replayed = 0
        self.write_failures = 0
        self.file_recreated = 0  # times the SQLite file was found deleted or replaced and recreated
        self._sqlite_file = engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")
        self._file_id: tuple[int, int] | None = None  # taken at the first write (after migrations)

    # -- producer side (event loop) ----------------------------------------------------------
    def submit(self, record: LedgerRecord) -> None:
        with self._lock:
            self._pending += 1
            self._pending_ids.add(record.request["id"])
            self._idle.clear()
            closed = self._closed
            if not closed:  # under the lock: never behind close()'s sentinel
                self._queue.put(record)
        if closed:  # a request that finished after shutdown began: store it here, never drop it
            self._store([record], stopping=True)

    @property
    def pending(self) -> int:
        """Rows held in memory, not yet in the database nor in the spool."""
        return self._pending

    def wait_written(self, request_id: str, timeout: float = 5.0) -> bool:
        """Wait until the row of ``request_id`` has left the queue (written, or spooled if the
        database is down). False if it is still queued after ``timeout``; True at once for an id
        this writer never saw."""
        with self._written:
            return self._written.wait_for(lambda: request_id not in self._pending_ids, timeout)

    def spooled_files(self) -> int:
        return len(self.spool.files()) if self.spool else 0

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every submitted row is in the database (spool replayed too)."""
        deadline = time.monotonic() + timeout
        if not self._idle.wait(timeout):
            return False
        while self.spooled_files():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 60.0) -> None:
        if self._thread is None:
            return
        with self._lock:
            self._closed = True  # from now on submit() stores rows itself
            self._queue.put(None)  # sentinel: drain what is queued, then stop
        self._thread.join(timeout)
        self._thread = None

    # -- consumer side (thread) --------------------------------------------------------------
    def _run(self) -> None:
        self._replay_spool()  # rows spooled by an earlier run
        stopping = False
        while not stopping:
            try:
                # While the spool holds rows, wake up now and then to replay them.
                item = self._queue.get(timeout=self.retry_interval_s if self.spooled_files() else None)
            except queue.Empty:
                self._replay_spool()
                continue
            # Take whatever else is queued: under load batches form while the last one is written.
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
            if batch and self._store(batch, stopping) and self.spooled_files():
                self._replay_spool()

    def _store(self, batch: list[LedgerRecord], stopping: bool) -> bool:
        """Write a batch, or spool it, or keep retrying it. True if it reached the database."""
        delay, attempts, written = 0.1, 0, False
        while True:
            try:
                self._write(batch)
                written = True
                break
            except Exception as exc:
                attempts += 1
                self.write_failures += 1
                log.warning("ledger write of %d rows failed (attempt %d): %s", len(batch), attempts, exc)
                if self.spool is not None and self.spool.append(batch):
                    self.rows_spooled += len(batch)
                    break
                if stopping and attempts >= 5:
                    log.error("ledger unavailable at shutdown and spool full: %d rows not written", len(batch))
                    break
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        with self._lock:
            self._pending -= len(batch)
            self._pending_ids.difference_update(r.request["id"] for r in batch)
            self._written.notify_all()
            if self._pending == 0:
                self._idle.set()
        return written

    def _replay_spool(self) -> None:
        if self.spool is None:
            return
        for path in self.spool.files():
            records = self.spool.read(path)
            try:
                self._write(records)
            except IntegrityError:
                self._write_each(records)  # a crash after commit left some rows in already
            except Exception:
                return  # still unavailable: try again later
            path.unlink()
            self.rows_replayed += len(records)

    def _check_file(self) -> None:
        """A SQLite ledger whose file was deleted (or replaced) under the running proxy: reconnect
        and recreate the schema in a new file instead of writing into the deleted one."""
        if not self._sqlite_file:
            return
        current = sqlite_file_identity(self.engine)
        if self._file_id is None or current == self._file_id:  # never seen a file yet: nothing was lost
            self._file_id = current
            return
        from router.ledger.migrate import upgrade

        log.error("ledger database file %s was deleted or replaced; recreating it", self.engine.url.database)
        self.engine.dispose()
        upgrade(self.engine.url.render_as_string(hide_password=False))
        self._file_id = sqlite_file_identity(self.engine)
        self.file_recreated += 1

    def _write(self, batch: list[LedgerRecord]) -> None:
        self._check_file()
        with Session(self.engine) as session, session.begin():
            session.execute(insert(RequestRow), [r.request for r in batch])
            attempts = [a for r in batch for a in r.attempts]
            if attempts:
                session.execute(insert(AttemptRow), attempts)
            # Same transaction as the rows: a replayed or retried batch is counted exactly once.
            rollups.add_requests(session.connection(), [r.request for r in batch])
            for r in batch:  # same transaction as the row: a reservation is settled exactly once
                if r.settlement:
                    apply_settlement(session.connection(), r.settlement)
        self.rows_written += len(batch)

    def _write_each(self, batch: list[LedgerRecord]) -> None:
        for record in batch:
            try:
                self._write([record])
            except IntegrityError:
                pass  # already there
