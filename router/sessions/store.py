"""Session state in the ledger database, behind a per-replica cache.

Reads happen on the request path, so they are bounded: a cached state younger than
``cache_ttl_s`` is used as it is; otherwise the row is read in a worker thread, and a read that
fails or takes longer than ``load_timeout_s`` routes the request without its session (and the
store is not asked again for a few seconds). Writes never wait: the state after each answer goes
to the cache at once and to the database from a writer thread (the latest state per session;
replicas sharing a session: the last write wins). Old rows are pruned by the writer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, select

from core.config import SessionsConfig
from router.ledger.models import FeedbackRow, SessionRow
from router.sessions.state import Outcome, SessionState, advance

log = logging.getLogger("expertmux.sessions")

RETRY_AFTER_S = 5.0  # after a failed read, sessions are off this long (requests are routed alone)
FLUSH_S = 0.2
PRUNE_EVERY_S = 3600.0


def _upsert(conn: Connection, rows: list[dict]) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(SessionRow)
    cols = [c for c in rows[0] if c != "id"]
    conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={c: stmt.excluded[c] for c in cols}), rows)


class SessionStore:
    def __init__(self, engine: Engine, cfg: SessionsConfig, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.cfg = cfg
        self.clock = clock
        self._cache: OrderedDict[str, tuple[SessionState, float]] = OrderedDict()
        self._dirty: dict[str, SessionState] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._down_until = 0.0
        self._last_prune = 0.0
        self.reads = self.read_failures = self.writes = self.write_failures = 0

    # -- request path (event loop) ----------------------------------------------------------------
    async def get(self, key: str) -> SessionState | None:
        """The session's state for the next request, or None to route this request alone."""
        now = time.monotonic()
        entry = self._cache.get(key)
        fresh = entry is not None and now - entry[1] < self.cfg.cache_ttl_s
        state = entry[0] if entry is not None else None
        feedback_due = (self.cfg.negative_feedback is not None and state is not None and state.last_request_id is not None
                        and state.checked_request_id != state.last_request_id)
        if not fresh or feedback_due:
            if now < self._down_until:
                return self._idle_checked(state) if state is not None else None
            try:
                loaded = await asyncio.wait_for(asyncio.to_thread(self._read, key, state), self.cfg.load_timeout_s)
            except Exception as exc:  # timeout or database error: this request goes without its session
                self.read_failures += 1
                self._down_until = time.monotonic() + RETRY_AFTER_S
                log.warning("session store unreachable (%s); routing requests alone for %.0f s", exc or type(exc).__name__,
                            RETRY_AFTER_S)
                return self._idle_checked(state) if state is not None else None
            state = loaded
            self._put(key, state, time.monotonic())
        return self._idle_checked(state)

    def _idle_checked(self, state: SessionState) -> SessionState:
        """A session idle past ``idle_timeout_s`` starts afresh (same id)."""
        if state.updated_at is not None and self.clock() - state.updated_at > timedelta(seconds=self.cfg.idle_timeout_s):
            return SessionState(id=state.id)
        return state

    def finish(self, key: str, outcome: Outcome) -> SessionState:
        """Advance the session by one finished request: cached now, written in the background."""
        entry = self._cache.get(key)
        state = advance(entry[0] if entry is not None else SessionState(id=key), outcome)
        self._put(key, state, entry[1] if entry is not None else time.monotonic())
        with self._lock:
            self._dirty[key] = state
        self._wake.set()
        return state

    def _put(self, key: str, state: SessionState, fetched: float) -> None:
        self._cache[key] = (state, fetched)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cfg.max_cached:
            self._cache.popitem(last=False)

    # -- database (worker threads) -----------------------------------------------------------------
    def _read(self, key: str, cached: SessionState | None) -> SessionState:
        """The stored row (or the cached state if it is newer), with its last answer's feedback checked."""
        self.reads += 1
        with self.engine.connect() as conn:
            row = conn.execute(select(SessionRow).where(SessionRow.id == key)).one_or_none()
            state = SessionState.from_row(row) if row is not None else SessionState(id=key)
            newer = cached is not None and (state.updated_at is None
                                            or (cached.updated_at is not None and cached.updated_at >= state.updated_at))
            if newer:
                state = cached.copy()  # this replica's own last write may not have reached the database yet
            threshold = self.cfg.negative_feedback
            if threshold is not None and state.last_request_id is not None:
                score = conn.execute(select(FeedbackRow.score).where(FeedbackRow.request_id == state.last_request_id)
                                     .order_by(FeedbackRow.id.desc()).limit(1)).scalar_one_or_none()
                state.negative_feedback = score is not None and score <= threshold
                state.checked_request_id = state.last_request_id
        return state

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="session-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, then stop the writer."""
        if self._thread is None:
            return
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    def flush(self) -> bool:
        """Write every pending state now (tests, shutdown). False if the database refused."""
        with self._lock:
            batch, self._dirty = self._dirty, {}
        if not batch:
            return True
        try:
            with self.engine.begin() as conn:
                _upsert(conn, [s.row() for s in batch.values()])
            self.writes += len(batch)
            return True
        except Exception as exc:
            self.write_failures += 1
            log.warning("could not store %d session states: %s", len(batch), exc)
            with self._lock:  # keep them unless a newer state has come in meanwhile
                for key, state in batch.items():
                    self._dirty.setdefault(key, state)
            return False

    def prune(self) -> int:
        """Delete sessions untouched for ``retention_s``."""
        cutoff = self.clock() - timedelta(seconds=self.cfg.retention_s)
        with self.engine.begin() as conn:
            return conn.execute(delete(SessionRow).where(SessionRow.updated_at < cutoff)).rowcount or 0

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_S if self._dirty else None)
            self._wake.clear()
            stopping = self._stop
            if not self.flush() and not stopping:
                time.sleep(min(RETRY_AFTER_S, 1.0))
            if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
                self._last_prune = time.monotonic()
                try:
                    self.prune()
                except Exception as exc:
                    log.warning("could not prune old sessions: %s", exc)
            if stopping:
                return
