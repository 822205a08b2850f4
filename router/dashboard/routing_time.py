"""How long routing took, per policy, from the decisions in the ledger (SQLite and PostgreSQL alike).

Each routed request's decision records ``timing``: ``features_ms``, the time the request waited
for its prompt's features (computed off the event loop, batched with the requests that arrived
with it: an encoder or a small LM's prefill), and ``decide_ms``, the policy's decision on the
loop. Percentiles are nearest-rank over the newest ``SAMPLE`` routed requests of each policy in
the window (a long window of a busy proxy is read as its most recent traffic, not in full).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from router.dashboard.windows import Window, iso
from router.ledger.models import RequestRow

SAMPLE = 5000


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    rank = max(1, -(-len(values) * q // 1))  # nearest rank: ceil(q·n)
    return round(values[int(rank) - 1], 3)


def routing_time(engine: Engine, window: Window) -> dict[str, Any]:
    r = RequestRow
    features = r.decision[("timing", "features_ms")].as_float()
    decide = r.decision[("timing", "decide_ms")].as_float()
    timed = (window.where(r.created_at), decide.is_not(None))
    out = []
    with Session(engine) as s:
        counts = s.execute(select(r.policy, func.count()).where(*timed).group_by(r.policy)).all()
        for policy, n in counts:
            rows = s.execute(select(features, decide).where(*timed, r.policy == policy)
                             .order_by(r.created_at.desc()).limit(SAMPLE)).all()
            f = [float(a or 0.0) for a, _ in rows]
            d = [float(b) for _, b in rows]
            total = [a + b for a, b in zip(f, d)]
            out.append({"policy": policy, "requests": int(n), "sampled": len(rows),
                        "features_p50_ms": _pct(f, 0.5), "features_p95_ms": _pct(f, 0.95),
                        "decide_p50_ms": _pct(d, 0.5), "decide_p95_ms": _pct(d, 0.95),
                        "total_p50_ms": _pct(total, 0.5), "total_p95_ms": _pct(total, 0.95)})
    out.sort(key=lambda x: (-x["requests"], x["policy"] or ""))
    return {"since": iso(window.since), "until": iso(window.until), "policies": out}
