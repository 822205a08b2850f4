"""How long routing took, per policy, from the decisions in the ledger (SQLite and PostgreSQL alike).

Each routed request's decision records ``timing``: ``features_ms``, the time the request waited
for its prompt's features (computed off the event loop, batched with the requests that arrived
with it: an encoder or a small LM's prefill), and ``decide_ms``, the policy's decision on the
loop. Read from the newest ``SAMPLE`` requests of the window (one indexed, bounded query: a long
window of a busy proxy is read as its most recent traffic), nearest-rank percentiles per policy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from router.dashboard.windows import Window, iso
from router.ledger.models import RequestRow

SAMPLE = 20_000


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    rank = max(1, -(-len(values) * q // 1))  # nearest rank: ceil(q·n)
    return round(values[int(rank) - 1], 3)


def routing_time(engine: Engine, window: Window) -> dict[str, Any]:
    r = RequestRow
    newest = (select(r.policy, r.decision[("timing", "features_ms")].as_float(), r.decision[("timing", "decide_ms")].as_float())
              .where(window.where(r.created_at)).order_by(r.created_at.desc()).limit(SAMPLE))
    per: dict[str | None, tuple[list[float], list[float]]] = {}
    with Session(engine) as s:
        for policy, features, decide in s.execute(newest):
            if decide is not None:  # a request that named its expert was not routed
                f, d = per.setdefault(policy, ([], []))
                f.append(float(features or 0.0))
                d.append(float(decide))
    out = []
    for policy, (f, d) in per.items():
        total = [a + b for a, b in zip(f, d)]
        out.append({"policy": policy, "requests": len(d),
                    "features_p50_ms": _pct(f, 0.5), "features_p95_ms": _pct(f, 0.95),
                    "decide_p50_ms": _pct(d, 0.5), "decide_p95_ms": _pct(d, 0.95),
                    "total_p50_ms": _pct(total, 0.5), "total_p95_ms": _pct(total, 0.95)})
    out.sort(key=lambda x: (-x["requests"], x["policy"] or ""))
    return {"since": iso(window.since), "until": iso(window.until), "sample": SAMPLE, "policies": out}
