"""Half-hourly rollups of the ledger, kept by the writer in the transaction of each batch.

``request_rollups`` holds, per 30-minute slot (``slot`` = epoch seconds of its start), expert,
policy and status: the count, cost, latency sum/count and token sums of its requests;
``latency_rollups`` the latency histogram of the slot's answered requests in the dashboard's
bins (1/32 of ln(1 + ms), about 3 % wide); ``feedback_rollups`` the score sum and count of the
feedback given in the slot, per policy, version and expert of the rated request (written by
``FeedbackService.record`` with the feedback row). Both are additive, so an upsert adds a batch to
them and a late or replayed row lands in its own slot exactly once (the same transaction as
its ``requests`` row, which a primary key keeps unique). The dashboard reads whole slots here
and only the window's partial edges from ``requests``.

A slot is computed in Python (here) for the writer and the backfill alike, so the two never
disagree on a row at a slot's boundary. Missing expert/policy are stored as '' (a primary key
column cannot be NULL on PostgreSQL).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from router.ledger.models import FeedbackRollupRow, FeedbackRow, LatencyRollupRow, RequestRollupRow, RequestRow

SLOT_S = 1800
LN_BINS = 32  # latency histogram: bins per unit of ln(1 + ms)
_SUMS = ("requests", "cost_usd", "latency_sum_ms", "latency_n", "prompt_tokens", "completion_tokens")


def slot_of(created_at: datetime) -> int:
    ts = (created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at).timestamp()
    return int(ts // SLOT_S) * SLOT_S


def latency_bin(latency_ms: float) -> int:
    """The histogram bin of a latency, as the dashboard's SQL computes it (floor of ln(1+ms)·32)."""
    return math.floor(math.log(latency_ms + 1.0) * LN_BINS)


def aggregate(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[tuple, list], dict[tuple, int]]:
    """Rollup deltas of request rows (dicts with the ``requests`` columns)."""
    traffic: dict[tuple, list] = {}
    hist: dict[tuple, int] = {}
    for r in rows:
        slot = slot_of(r["created_at"])
        lat = r.get("latency_ms")
        acc = traffic.setdefault((slot, r.get("expert") or "", r.get("policy") or "", r["status"]), [0, 0.0, 0.0, 0, 0, 0])
        acc[0] += 1
        acc[1] += r.get("cost_usd") or 0.0
        if lat is not None:
            acc[2] += lat
            acc[3] += 1
        acc[4] += r.get("prompt_tokens") or 0
        acc[5] += r.get("completion_tokens") or 0
        if r["status"] == "ok" and lat is not None and lat >= 0:
            key = (slot, latency_bin(lat))
            hist[key] = hist.get(key, 0) + 1
    return traffic, hist


def _insert(conn: Connection, table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def apply(conn: Connection, traffic: dict[tuple, list], hist: dict[tuple, int]) -> None:
    """Add rollup deltas (upserts: a slot's row is created or increased). Keys go in sorted
    order, so concurrent writers (several processes on PostgreSQL) lock rows in the same order
    and cannot deadlock."""
    if traffic:
        t = RequestRollupRow.__table__
        stmt = _insert(conn, t)
        stmt = stmt.on_conflict_do_update(index_elements=["slot", "expert", "policy", "status"],
                                          set_={c: t.c[c] + stmt.excluded[c] for c in _SUMS})
        conn.execute(stmt, [{"slot": s, "expert": e, "policy": p, "status": st, **dict(zip(_SUMS, v))}
                            for (s, e, p, st), v in sorted(traffic.items())])
    if hist:
        t = LatencyRollupRow.__table__
        stmt = _insert(conn, t)
        stmt = stmt.on_conflict_do_update(index_elements=["slot", "bin"], set_={"n": t.c.n + stmt.excluded.n})
        conn.execute(stmt, [{"slot": s, "bin": b, "n": n} for (s, b), n in sorted(hist.items())])


def add_requests(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    apply(conn, *aggregate(rows))


def backfill(conn: Connection, *, since: datetime | None = None, until: datetime | None = None,
             chunk: int = 200_000) -> int:
    """Add the rollups of the ``requests`` rows in [since, until) (all by default); the caller
    makes sure those rows are not counted yet. Returns the number of rows read."""
    r = RequestRow
    stmt = select(r.created_at, r.expert, r.policy, r.status, r.cost_usd, r.latency_ms, r.prompt_tokens, r.completion_tokens)
    if since is not None:
        stmt = stmt.where(r.created_at >= since)
    if until is not None:
        stmt = stmt.where(r.created_at < until)
    traffic: dict[tuple, list] = {}
    hist: dict[tuple, int] = {}
    n = 0
    # Options on the statement, not the connection: a migration's later statements stay plain.
    result = conn.execute(stmt.execution_options(stream_results=True, yield_per=chunk))
    for part in result.mappings().partitions(chunk):
        t, h = aggregate(part)
        n += len(part)
        for k, v in t.items():
            acc = traffic.setdefault(k, [0, 0.0, 0.0, 0, 0, 0])
            for i, x in enumerate(v):
                acc[i] += x
        for k, v in h.items():
            hist[k] = hist.get(k, 0) + v
    keys = sorted(traffic)
    for i in range(0, len(keys), 5000):
        apply(conn, {k: traffic[k] for k in keys[i:i + 5000]}, {})
    keys = sorted(hist)
    for i in range(0, len(keys), 5000):
        apply(conn, {}, {k: hist[k] for k in keys[i:i + 5000]})
    return n


# -- feedback ------------------------------------------------------------------------------------
def add_feedback(conn: Connection, rows: Iterable[tuple[datetime, float, str | None, str | None, str | None]]) -> None:
    """Add feedback rows given as (feedback created_at, score, policy, policy_version, expert of the request)."""
    acc: dict[tuple, list] = {}
    for created_at, score, policy, version, expert in rows:
        a = acc.setdefault((slot_of(created_at), policy or "", version or "", expert or ""), [0.0, 0])
        a[0] += score
        a[1] += 1
    keys = sorted(acc)
    t = FeedbackRollupRow.__table__
    for i in range(0, len(keys), 5000):
        stmt = _insert(conn, t)
        stmt = stmt.on_conflict_do_update(index_elements=["slot", "policy", "policy_version", "expert"],
                                          set_={"score_sum": t.c.score_sum + stmt.excluded.score_sum,
                                                "n": t.c.n + stmt.excluded.n})
        conn.execute(stmt, [{"slot": s, "policy": p, "policy_version": v, "expert": e, "score_sum": a[0], "n": a[1]}
                            for (s, p, v, e) in keys[i:i + 5000] for a in (acc[(s, p, v, e)],)])


def feedback_source(request_id: str):
    """The columns ``add_feedback`` needs from the rated request."""
    return select(RequestRow.policy, RequestRow.policy_version, RequestRow.expert).where(RequestRow.id == request_id)


def backfill_feedback(conn: Connection) -> int:
    """Add the rollups of every feedback row (the caller makes sure none is counted yet)."""
    f, r = FeedbackRow, RequestRow
    stmt = (select(f.created_at, f.score, r.policy, r.policy_version, r.expert).join(r, r.id == f.request_id))
    rows = conn.execute(stmt).all()
    add_feedback(conn, rows)
    return len(rows)
