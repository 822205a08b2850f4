"""Sessions as the dashboard shows them: switches per session, from the ledger's rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, case, func, select

from router.ledger.models import RequestRow, SessionRow


def switches_per_session(engine: Engine, *, since: datetime, until: datetime, limit: int = 50) -> dict[str, Any]:
    """Per session with requests in [since, until): requests, expert switches between consecutive
    answered requests, distinct experts, cost; the sessions with most switches first, and totals."""
    r = RequestRow
    answered = (select(r.session_id, r.created_at, r.expert, r.cost_usd,
                       func.lag(r.expert).over(partition_by=r.session_id, order_by=(r.created_at, r.id)).label("prev"))
                .where(r.session_id.is_not(None), r.status == "ok", r.created_at >= since, r.created_at < until)
                .subquery())
    a = answered
    per = (select(a.c.session_id, func.count().label("requests"),
                  func.sum(case(((a.c.prev.is_not(None)) & (a.c.prev != a.c.expert), 1), else_=0)).label("switches"),
                  func.count(func.distinct(a.c.expert)).label("experts"), func.sum(a.c.cost_usd).label("cost_usd"),
                  func.min(a.c.created_at).label("first"), func.max(a.c.created_at).label("last"))
           .group_by(a.c.session_id).subquery())
    with engine.connect() as conn:
        totals = conn.execute(select(func.count(), func.coalesce(func.sum(per.c.requests), 0),
                                     func.coalesce(func.sum(per.c.switches), 0),
                                     func.coalesce(func.sum(case((per.c.switches > 0, 1), else_=0)), 0))).one()
        rows = conn.execute(select(per, SessionRow.escalations, SessionRow.expert.label("expert_now"))
                            .join(SessionRow, SessionRow.id == per.c.session_id, isouter=True)
                            .order_by(per.c.switches.desc(), per.c.requests.desc()).limit(limit)).all()
    # PostgreSQL sums integers as numeric (Decimal): back to int for the JSON body
    n, requests, switches, switched = (int(v) for v in totals)
    return {
        "since": since.isoformat(), "until": until.isoformat(), "sessions": n, "requests": requests, "switches": switches,
        "switches_per_session": switches / n if n else None, "sessions_with_switches": switched,
        "top": [{"session_id": x.session_id, "requests": x.requests, "switches": int(x.switches), "experts": x.experts,
                 "cost_usd": None if x.cost_usd is None else float(x.cost_usd), "escalations": x.escalations, "expert": x.expert_now,
                 "first": x.first.isoformat(), "last": x.last.isoformat()} for x in rows],
    }
