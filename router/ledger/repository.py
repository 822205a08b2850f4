"""Read and maintenance queries over the ledger. Keyword-only arguments throughout."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from core.config import ExpertConfig
from router.ledger.models import AttemptRow, ExpertRow, RequestRow


def sync_experts(engine: Engine, *, experts: Sequence[ExpertConfig]) -> None:
    """Upsert the configured experts so ledger rows can be joined to their prices."""
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        for e in experts:
            row = session.get(ExpertRow, e.name) or ExpertRow(name=e.name)
            row.backend, row.model = e.backend, e.model
            row.input_usd_per_mtok, row.output_usd_per_mtok = e.input_usd_per_mtok, e.output_usd_per_mtok
            row.params_b, row.context_window = e.params_b, e.context_window
            row.description, row.tags, row.updated_at = e.description, list(e.tags), now
            session.add(row)


def get_request(engine: Engine, *, request_id: str) -> RequestRow | None:
    with Session(engine) as session:
        return session.get(RequestRow, request_id)


def list_attempts(engine: Engine, *, request_id: str) -> list[AttemptRow]:
    with Session(engine) as session:
        stmt = select(AttemptRow).where(AttemptRow.request_id == request_id).order_by(AttemptRow.attempt_no)
        return list(session.scalars(stmt))


def count_requests(engine: Engine, *, status: str | None = None) -> int:
    with Session(engine) as session:
        stmt = select(func.count()).select_from(RequestRow)
        if status:
            stmt = stmt.where(RequestRow.status == status)
        return int(session.scalar(stmt) or 0)


def recent_requests(engine: Engine, *, limit: int = 50) -> list[RequestRow]:
    with Session(engine) as session:
        return list(session.scalars(select(RequestRow).order_by(RequestRow.created_at.desc()).limit(limit)))
