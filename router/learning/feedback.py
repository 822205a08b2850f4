"""Feedback on answered requests: a score in [0, 1] per ledger row, from a user, a judge or an
automatic check. Feedback rows are what turns the ledger into training data.

Who may rate a request: the API key that made it (a request made with a key can only be rated
with that key, also on keyless loopback deployments), anyone on a keyless deployment for
keyless requests, and the admin token for any request (offline judges, imports).

The ledger writer is batched: a client that rates a request right after its answer may be
faster than the writer. An id that is still queued is waited for (a few seconds at most), so
such feedback never gets a spurious 404; so is a request still streaming its answer (409 if it
does not end within that time).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    LedgerUnavailableError,
    NotFoundError,
    PermissionDeniedError,
)
from router.access.keys import KeyStore
from router.ledger import rollups
from router.ledger.models import FeedbackRow, RequestRow
from router.ledger.writer import LedgerWriter

SOURCES = ("user", "judge", "auto")
THUMBS = {"up": 1.0, "down": 0.0}


@dataclass(frozen=True, slots=True)
class Feedback:
    id: int
    request_id: str
    score: float
    source: str
    comment: str | None
    created_at: datetime

    def public(self) -> dict[str, Any]:
        return {"object": "feedback", "id": self.id, "request_id": self.request_id, "score": self.score,
                "source": self.source, "comment": self.comment, "created_at": self.created_at.isoformat()}


def normalize_score(score: float | None, thumbs: str | None) -> float:
    """Exactly one of ``score`` (a number in [0, 1]) or ``thumbs`` ("up" = 1, "down" = 0)."""
    if (score is None) == (thumbs is None):
        raise InvalidRequestError("give exactly one of 'score' (a number in [0, 1]) or 'thumbs' ('up' or 'down')",
                                  param="score")
    if thumbs is not None:
        if thumbs not in THUMBS:
            raise InvalidRequestError(f"thumbs must be 'up' or 'down', not {thumbs!r}", param="thumbs")
        return THUMBS[thumbs]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score) or not 0 <= score <= 1:
        raise InvalidRequestError(f"score must be a number in [0, 1], not {score!r}", param="score")
    return float(score)


class FeedbackService:
    def __init__(self, *, engine: Engine, ledger: LedgerWriter, keys: KeyStore, auth_required: bool,
                 pending_wait_s: float = 5.0, in_progress: Callable[[str], bool] | None = None) -> None:
        self.engine = engine
        self.in_progress = in_progress or (lambda request_id: False)  # e.g. a stream still running
        self.ledger = ledger
        self.keys = keys
        self.auth_required = auth_required
        self.pending_wait_s = pending_wait_s

    async def submit(self, *, request_id: str, score: float | None = None, thumbs: str | None = None,
                     source: str = "user", comment: str | None = None, api_key: str | None = None,
                     admin: bool = False) -> Feedback:
        """Check who asks, find the request (waiting for a queued row), write one feedback row."""
        value = normalize_score(score, thumbs)
        if source not in SOURCES:
            raise InvalidRequestError(f"source must be one of {', '.join(SOURCES)}, not {source!r}", param="source")
        key = None
        if not admin:
            key = await self.keys.lookup(api_key) if api_key else None
            if key is None and self.auth_required:  # as for chat: keyless deployments ignore unknown keys
                raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'" if not api_key
                                          else "invalid or revoked API key")
        owner = await self._owner(request_id)
        if not admin:
            if owner is not None and (key is None or key.id != owner):
                raise PermissionDeniedError("only the API key that made a request may rate it", param="request_id")
            if owner is None and self.auth_required:
                raise PermissionDeniedError("this request was made without an API key; only the admin token may rate it",
                                            param="request_id")
        return await asyncio.to_thread(self.record, request_id=request_id, score=value, source=source, comment=comment)

    async def _owner(self, request_id: str) -> str | None:
        """The API key id that made the request (None: keyless); NotFoundError if there is none."""
        found, owner = await asyncio.to_thread(self._lookup, request_id)
        deadline = time.monotonic() + self.pending_wait_s
        while not found and self.in_progress(request_id):  # answered headers first, still streaming
            if time.monotonic() > deadline:
                raise ConflictError("the request is still being answered; rate it once its answer is complete",
                                    param="request_id", code="request_in_progress")
            await asyncio.sleep(0.05)
        if not found and not await asyncio.to_thread(self.ledger.wait_written, request_id, self.pending_wait_s):
            raise LedgerUnavailableError("the request's ledger row is not written yet; retry in a few seconds")
        if not found:
            found, owner = await asyncio.to_thread(self._lookup, request_id)
        if not found:
            raise NotFoundError(f"no request with id {request_id!r} (use the x-expertmux-request-id header of a response)",
                                param="request_id")
        return owner

    def _lookup(self, request_id: str) -> tuple[bool, str | None]:
        try:
            with Session(self.engine) as session:
                row = session.execute(select(RequestRow.api_key_id).where(RequestRow.id == request_id)).first()
        except SQLAlchemyError as exc:
            raise LedgerUnavailableError(f"the ledger cannot be read: {type(exc).__name__}") from None
        return (row is not None, row[0] if row is not None else None)

    def record(self, *, request_id: str, score: float, source: str, comment: str | None = None) -> Feedback:
        """Write one feedback row for an existing request (no ownership check: callers decide)."""
        now = datetime.now(UTC)
        row = FeedbackRow(request_id=request_id, created_at=now, score=float(score), source=source, comment=comment)
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                # The dashboard's rollup, in the same transaction: counted exactly once.
                rated = session.execute(rollups.feedback_source(request_id)).first()
                if rated is not None:
                    rollups.add_feedback(session.connection(), [(now, row.score, *rated)])
                out = Feedback(id=row.id, request_id=request_id, score=row.score, source=source, comment=comment,
                               created_at=now)
        except SQLAlchemyError as exc:
            raise LedgerUnavailableError(f"the feedback could not be written: {type(exc).__name__}") from None
        return out

    def for_request(self, request_id: str) -> list[Feedback]:
        with Session(self.engine) as session:
            rows = session.scalars(select(FeedbackRow).where(FeedbackRow.request_id == request_id).order_by(FeedbackRow.id))
            return [Feedback(id=r.id, request_id=r.request_id, score=r.score, source=r.source, comment=r.comment,
                             created_at=r.created_at) for r in rows]
