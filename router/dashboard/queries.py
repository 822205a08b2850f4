"""Read-only queries of the admin dashboard over the ledger (SQLite and PostgreSQL alike).

Every query is bounded by a time window. Aggregates read whole 30-minute slots from the
rollups of migration 0006 (``router.ledger.rollups``, kept by the ledger writer and the feedback
service in the transaction of their rows) and only the window's partial edges from the ledger,
through the covering ``ix_requests_overview`` (created_at, expert, status, latency, cost) and
``ix_feedback_created`` of migration 0005; so a 30-day window costs about what a day costs. The
ledger browser pages with a keyset cursor on (created_at, id), so page 1,000 costs what page 1
costs. Cascade escalations have no rollup: they are read from the window's attempt rows; routing
time is read from the newest requests of the window.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, Integer, and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session

from core.errors import InvalidRequestError, NotFoundError
from router.dashboard.windows import LedgerFilter, Window, decode_cursor, encode_cursor, iso
from router.ledger.models import AttemptRow, FeedbackRollupRow, FeedbackRow, LatencyRollupRow, RequestRollupRow, RequestRow
from router.ledger.rollups import LN_BINS, SLOT_S

STATUSES = ("ok", "error", "rejected", "client_disconnected")
MAX_PAGE = 200
MAX_BUCKETS = 500
ROUTING_SAMPLE = 20_000  # newest requests the routing-time card reads


class DashboardQueries:
    """The dashboard's numbers. Methods are synchronous (call them from a worker thread)."""

    def __init__(self, engine: Engine, *, use_rollups: bool = True) -> None:
        self.engine = engine
        self.use_rollups = use_rollups  # False: every figure from the raw rows (a check, a baseline)
        self.postgres = engine.dialect.name == "postgresql"
        self._ln: bool | None = None

    # -- time buckets -----------------------------------------------------------------------------
    def _epoch(self, column):
        """Seconds since 1970 of a timestamp column, in the dialect's own functions."""
        if self.postgres:
            return func.extract("epoch", column)
        return (func.julianday(column) - 2440587.5) * 86400.0

    def _bucket(self, origin: float, width_s: float, column=RequestRow.created_at):
        offset = (self._epoch(column) - origin) / width_s
        return func.floor(offset) if self.postgres else cast(offset, Integer)

    def _has_ln(self) -> bool:
        """PostgreSQL has ln(); SQLite only when built with its math functions (most builds)."""
        if self._ln is None:
            try:
                with self.engine.connect() as conn:
                    conn.execute(select(func.ln(2.0))).scalar()
                self._ln = True
            except Exception:
                self._ln = False
        return self._ln

    def overview(self, window: Window, *, buckets: int = 48) -> dict[str, Any]:
        """Per time bucket: requests, errors, cost, latency p50/p95 of answered requests; per
        expert: share, error rate, cost, mean latency.

        Buckets are aligned to multiples of their width since 1970 (the first one may start a
        little before ``since``). The 30-minute slots that lie wholly inside a bucket are read
        from the rollups (``router.ledger.rollups``: counts, sums and a latency histogram per
        slot), the rest — the window's newest minutes, and slots cut by a bucket edge when the
        width is not a multiple of 30 minutes — from ``requests``, as two scans of the covering
        index: GROUP BY (bucket, expert, status), and a latency histogram GROUP BY (bucket, bin)
        with bins of 1/32 in ln(1 + ms) (3 % wide). Nearest-rank p50/p95 are read from the
        merged histogram, within ±1.6 %. Every read is of the ledger as it is now: a late row
        counts as soon as it is written.
        """
        histogram = self._has_ln()
        origin, width, n, until = self._grid(window, buckets)
        parts: dict[int, tuple[list, list]] = {}
        if histogram and self.use_rollups:
            raw = self._rollup_parts(origin, width, n, until, parts)
        else:  # exact percentiles without ln() (or a check of the rollups): everything from requests
            raw = [(origin, until)]
        if raw:
            for k, (traffic, lat) in self._scan(origin, width, n, raw, histogram=histogram).items():
                part = parts.setdefault(k, ([], []))
                part[0].extend(traffic)
                part[1].extend(lat)
        points, experts = [], {}
        for i in range(n):
            traffic, hist = parts.get(i) or ([], [])
            count = errors = 0
            cost_sum = 0.0
            for expert, status, cnt, cost, lat_sum, lat_n in traffic:
                count += cnt
                errors += 0 if status == "ok" else cnt
                cost_sum += cost
                e = experts.setdefault(expert, [0, 0, 0.0, 0.0, 0])
                e[0], e[1], e[2], e[3], e[4] = (e[0] + cnt, e[1] + (0 if status == "ok" else cnt), e[2] + cost,
                                                e[3] + lat_sum, e[4] + lat_n)
            p50, p95 = _percentiles(hist, histogram=histogram)
            points.append({"t": iso(datetime.fromtimestamp(origin + i * width, UTC)), "requests": count, "errors": errors,
                           "cost_usd": cost_sum, "p50_ms": _num(p50), "p95_ms": _num(p95)})
        total = sum(e[0] for e in experts.values())
        per_expert = [{"expert": ex, "requests": cnt, "share": cnt / total, "errors": err, "error_rate": err / cnt,
                       "cost_usd": cost, "mean_latency_ms": _num(lat_sum / lat_n) if lat_n else None}
                      for ex, (cnt, err, cost, lat_sum, lat_n) in experts.items()]
        per_expert.sort(key=lambda d: -d["requests"])
        return {"timeseries": {"since": points[0]["t"], "until": iso(window.until), "bucket_s": width, "buckets": points},
                "experts": {"total": total, "data": per_expert}}

    @staticmethod
    def _grid(window: Window, buckets: int) -> tuple[float, float, int, float]:
        """(origin, width, number of buckets, until) of the window's aligned buckets."""
        buckets = max(1, min(int(buckets), MAX_BUCKETS))
        width = (window.until - window.since).total_seconds() / buckets
        until = window.until.timestamp()
        origin = math.floor(window.since.timestamp() / width) * width
        return origin, width, max(1, math.ceil((until - origin) / width - 1e-9)), until

    def _rollup_parts(self, origin: float, width: float, n: int, until: float,
                      parts: dict[int, tuple[list, list]]) -> list[tuple[float, float]]:
        """Add the whole slots of each bucket, read from the rollups, to ``parts``; return the
        time ranges left to read from ``requests``."""
        edges = [origin + i * width for i in range(n)] + [until]
        whole: list[tuple[int, int, int]] = []  # (bucket, first slot, end of its last slot)
        raw: list[tuple[float, float]] = []
        for i in range(n):
            lo, hi = edges[i], edges[i + 1]
            a, b = math.ceil(lo / SLOT_S) * SLOT_S, math.floor(hi / SLOT_S) * SLOT_S
            if b <= a:
                raw.append((lo, hi))
                continue
            whole.append((i, a, b))
            raw += [r for r in ((lo, a), (b, hi)) if r[1] > r[0]]
        if whole:
            t, h = RequestRollupRow, LatencyRollupRow
            aligned = float(width).is_integer() and int(width) % SLOT_S == 0 and float(origin).is_integer()
            # Whole slots of consecutive buckets meet when the grid is aligned: one range then.
            spans: list[list[int]] = []
            for _, a, b in whole:
                if spans and spans[-1][1] == a:
                    spans[-1][1] = b
                else:
                    spans.append([a, b])

            def bucket(col):
                if aligned:
                    return (col - int(origin)) // int(width)
                if len(whole) == 1:
                    return literal(whole[0][0])
                return case(*[(col < b, i) for i, _, b in whole[:-1]], else_=whole[-1][0])

            def where(col):
                return or_(*[and_(col >= a, col < b) for a, b in spans])

            kt, kh = bucket(t.slot).label("k"), bucket(h.slot).label("k")
            traffic = (select(kt, t.expert, t.status, func.sum(t.requests), func.sum(t.cost_usd), func.sum(t.latency_sum_ms),
                              func.sum(t.latency_n)).where(where(t.slot)).group_by(kt, t.expert, t.status))
            hist = select(kh, h.bin, func.sum(h.n)).where(where(h.slot)).group_by(kh, h.bin)
            with Session(self.engine) as s:
                for k, expert, status, cnt, cost, lat_sum, lat_n in s.execute(traffic):
                    parts.setdefault(int(k), ([], []))[0].append(
                        (expert or None, status, int(cnt), float(cost), float(lat_sum), int(lat_n)))
                for k, v, cnt in s.execute(hist):
                    parts.setdefault(int(k), ([], []))[1].append((float(v), int(cnt)))
        merged: list[tuple[float, float]] = []
        for lo, hi in raw:
            if merged and merged[-1][1] >= lo:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def _scan(self, origin: float, width: float, n: int, ranges: list[tuple[float, float]], *,
              histogram: bool) -> dict[int, tuple[list, list]]:
        """Requests created in ``ranges`` (epoch seconds), per bucket: {bucket: (traffic rows,
        histogram rows or latencies)}."""
        r = RequestRow
        b = self._bucket(origin, width).label("b")
        in_range = or_(*[and_(r.created_at >= datetime.fromtimestamp(lo, UTC), r.created_at < datetime.fromtimestamp(hi, UTC))
                         for lo, hi in ranges])
        traffic = (select(b, r.expert, r.status, func.count(), func.coalesce(func.sum(r.cost_usd), 0.0),
                          func.coalesce(func.sum(r.latency_ms), 0.0), func.count(r.latency_ms))
                   .where(in_range).group_by(b, r.expert, r.status))
        # The status test stays out of WHERE: there it would steer the planner to the status index.
        answered = and_(r.status == "ok", r.latency_ms.is_not(None), r.latency_ms >= 0)
        if histogram:
            binned = func.ln(r.latency_ms + 1.0) * LN_BINS
            value = case((answered, func.floor(binned) if self.postgres else cast(binned, Integer)), else_=None)
            latencies = select(b, value, func.count()).where(in_range).group_by(b, value)
        else:
            latencies = select(b, case((answered, r.latency_ms), else_=None), literal(1)).where(in_range)
        out: dict[int, tuple[list, list]] = {}
        clamp = lambda k: min(max(int(k), 0), n - 1)  # noqa: E731  float rounding at the range's ends
        with Session(self.engine) as s:
            for k, expert, status, cnt, cost, lat_sum, lat_n in s.execute(traffic):
                out.setdefault(clamp(k), ([], []))[0].append((expert, status, int(cnt), float(cost), float(lat_sum), int(lat_n)))
            for k, v, cnt in s.execute(latencies):
                if v is not None:
                    out.setdefault(clamp(k), ([], []))[1].append((float(v), int(cnt)))
        return out

    # -- quality from feedback --------------------------------------------------------------------
    def quality(self, window: Window, *, buckets: int = 48) -> dict[str, Any]:
        """Mean feedback score and count per policy (and version) and per expert, over feedback
        given from the start of the window's first aligned bucket (as ``overview``'s) to its end:
        whole 30-minute slots from ``feedback_rollups``, the edges from ``feedback``."""
        origin, _, _, until = self._grid(window, buckets)
        a, b = math.ceil(origin / SLOT_S) * SLOT_S, math.floor(until / SLOT_S) * SLOT_S
        f, r, t = FeedbackRow, RequestRow, FeedbackRollupRow
        raw = [(origin, until)] if b <= a or not self.use_rollups else [e for e in ((origin, a), (b, until)) if e[1] > e[0]]
        stmts = []
        if b > a and self.use_rollups:
            stmts.append(select(t.policy, t.policy_version, t.expert, func.sum(t.score_sum), func.sum(t.n))
                         .where(t.slot >= a, t.slot < b).group_by(t.policy, t.policy_version, t.expert))
        for lo, hi in raw:
            stmts.append(select(r.policy, r.policy_version, r.expert, func.sum(f.score), func.count())
                         .join(r, r.id == f.request_id)
                         .where(f.created_at >= datetime.fromtimestamp(lo, UTC), f.created_at < datetime.fromtimestamp(hi, UTC))
                         .group_by(r.policy, r.policy_version, r.expert))
        policies: dict[tuple, list[float]] = {}
        experts: dict[str | None, list[float]] = {}
        with Session(self.engine) as s:
            for stmt in stmts:
                for policy, version, expert, total, cnt in s.execute(stmt):
                    # The rollups store a missing value as ''.
                    policy, version, expert = policy or None, version or None, expert or None
                    for acc in (policies.setdefault((policy, version), [0.0, 0]), experts.setdefault(expert, [0.0, 0])):
                        acc[0] += float(total)
                        acc[1] += int(cnt)
        pol = [{"policy": p, "version": v, "mean_score": t / c, "n": c} for (p, v), (t, c) in policies.items()]
        exp = [{"expert": e, "mean_score": t / c, "n": c} for e, (t, c) in experts.items()]
        pol.sort(key=lambda d: -d["n"])
        exp.sort(key=lambda d: -d["n"])
        return {"since": iso(datetime.fromtimestamp(origin, UTC)), "by_policy": pol, "by_expert": exp}

    # -- cascades -----------------------------------------------------------------------------------
    def cascades(self, window: Window) -> dict[str, Any]:
        """Per policy, over the cascade requests created in the window (those whose attempts carry
        ``usage_details.cascade``, written by ``router.request.cascade``): requests, escalation
        rate (more than one step, a failed step included), mean steps, what escalation added —
        the cost of the steps whose answer was not returned, and the time they took (the client
        waited for every step before its first byte), nearest-rank p50/p95 over escalated
        requests — and the judge's calls (not steps, paid all the same)."""
        a, r = AttemptRow, RequestRow
        step = a.usage_details[("cascade", "step")].as_integer()
        judge = a.usage_details[("cascade", "judge_of")].as_string()
        returned = a.usage_details[("cascade", "returned")].as_boolean()

        def discarded(value):  # a step whose answer was not sent: failed, or passed over
            return func.sum(case((step.is_(None), 0.0), (returned, 0.0), else_=func.coalesce(value, 0.0)))

        per = (select(r.policy.label("policy"), func.count(step).label("steps"),
                      func.sum(case((step.is_(None), 0.0), else_=a.cost_usd)).label("cost"),
                      discarded(a.cost_usd).label("added_cost"), discarded(a.latency_ms).label("added_ms"),
                      func.sum(case((step.is_(None), a.cost_usd), else_=0.0)).label("judge_cost"))
               .join(r, r.id == a.request_id)
               .where(window.where(r.created_at), or_(step.is_not(None), judge.is_not(None)))
               .group_by(r.id, r.policy).having(func.count(step) > 0).subquery())
        escalated = per.c.steps > 1
        totals = (select(per.c.policy, func.count(), func.sum(case((escalated, 1), else_=0)), func.sum(per.c.steps),
                         func.sum(per.c.cost), func.sum(per.c.added_cost), func.sum(per.c.judge_cost))
                  .group_by(per.c.policy))
        with Session(self.engine) as s:
            rows = s.execute(totals).all()
            added: dict[str | None, list[tuple[float, int]]] = {}
            for policy, ms in s.execute(select(per.c.policy, per.c.added_ms).where(escalated)):
                added.setdefault(policy, []).append((float(ms), 1))
        out = []
        for policy, n, esc, steps, cost, extra, judge_cost in rows:
            p50, p95 = _percentiles(added.get(policy, []), histogram=False)
            out.append({"policy": policy, "requests": n, "escalated": int(esc), "escalation_rate": int(esc) / n,
                        "mean_steps": int(steps) / n, "cost_usd": float(cost), "added_cost_usd": float(extra),
                        "added_cost_per_request_usd": float(extra) / n, "added_latency_p50_ms": _num(p50),
                        "added_latency_p95_ms": _num(p95), "judge_cost_usd": float(judge_cost)})
        out.sort(key=lambda d: (-d["requests"], d["policy"] or ""))
        return {"since": iso(window.since), "until": iso(window.until), "requests": sum(d["requests"] for d in out),
                "policies": out}

    def routing_time(self, window: Window) -> dict[str, Any]:
        """Per policy, how long routing took: the wait for the prompt's features (off the event
        loop) and the decision on the loop, from each routed decision's ``timing``; nearest-rank
        p50/p95 over the newest ``ROUTING_SAMPLE`` requests of the window (one bounded query on
        the created_at index: a long window of a busy proxy is read as its most recent traffic)."""
        r = RequestRow
        newest = (select(r.policy, r.decision[("timing", "features_ms")].as_float(), r.decision[("timing", "decide_ms")].as_float())
                  .where(window.where(r.created_at)).order_by(r.created_at.desc()).limit(ROUTING_SAMPLE))
        per: dict[str | None, list[tuple[float, float]]] = {}
        with Session(self.engine) as s:
            for policy, features, decide in s.execute(newest):
                if decide is not None:  # a request that named its expert was not routed
                    per.setdefault(policy, []).append((float(features or 0.0), float(decide)))
        out = []
        for policy, times in per.items():
            row: dict[str, Any] = {"policy": policy, "requests": len(times)}
            for part, values in (("features", [f for f, _ in times]), ("decide", [d for _, d in times]),
                                 ("total", [f + d for f, d in times])):
                p50, p95 = _percentiles([(v, 1) for v in values], histogram=False)
                row[f"{part}_p50_ms"], row[f"{part}_p95_ms"] = _num(p50), _num(p95)
            out.append(row)
        out.sort(key=lambda d: (-d["requests"], d["policy"] or ""))
        return {"since": iso(window.since), "until": iso(window.until), "sample": ROUTING_SAMPLE, "policies": out}

    # -- the ledger browser -----------------------------------------------------------------------
    def page(self, flt: LedgerFilter, *, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """Newest first; ``next_cursor`` continues after the last row (None on the last page)."""
        if flt.status and flt.status not in STATUSES:
            raise InvalidRequestError(f"unknown status {flt.status!r}; one of {', '.join(STATUSES)}", param="status")
        limit = max(1, min(int(limit), MAX_PAGE))
        r = RequestRow
        stmt = select(r.id, r.created_at, r.api_key_id, r.tenant, r.requested_model, r.policy, r.policy_version, r.expert,
                      r.status, r.http_status, r.latency_ms, r.ttft_ms, r.cost_usd, r.prompt_tokens, r.completion_tokens,
                      r.n_attempts, r.stream, func.substr(r.prompt_text, 1, 120).label("prompt"))
        clauses = flt.clauses()
        if cursor:
            when, rid = decode_cursor(cursor)
            # The first term alone is a plain range on the index; the OR only settles ties.
            clauses += [r.created_at <= when, or_(r.created_at < when, r.id < rid)]
        stmt = stmt.where(*clauses).order_by(r.created_at.desc(), r.id.desc()).limit(limit + 1)
        with Session(self.engine) as s:
            rows = s.execute(stmt).all()
        more = len(rows) > limit
        rows = rows[:limit]
        data = [{**row._asdict(), "created_at": iso(row.created_at)} for row in rows]
        nxt = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
        return {"object": "list", "data": data, "next_cursor": nxt, "limit": limit}

    def request(self, request_id: str) -> dict[str, Any]:
        """One request with its decision (per-candidate scores and propensities), attempts and feedback."""
        with Session(self.engine) as s:
            row = s.get(RequestRow, request_id)
            if row is None:
                raise NotFoundError(f"no request {request_id!r} in the ledger", param="request_id")
            attempts = s.scalars(select(AttemptRow).where(AttemptRow.request_id == request_id).order_by(AttemptRow.attempt_no)).all()
            feedback = s.scalars(select(FeedbackRow).where(FeedbackRow.request_id == request_id).order_by(FeedbackRow.id)).all()
            out = {c.name: getattr(row, c.key) for c in RequestRow.__table__.columns}
            out["created_at"], out["finished_at"] = iso(row.created_at), iso(row.finished_at)
            out["candidates"] = _candidates(row.decision)
            out["attempts"] = [{"attempt_no": a.attempt_no, "expert": a.expert, "started_at": iso(a.started_at),
                                "status": a.status, "error": a.error, "ttft_ms": a.ttft_ms, "latency_ms": a.latency_ms,
                                "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
                                "cost_usd": a.cost_usd, "usage_details": a.usage_details} for a in attempts]
            out["feedback"] = [{"score": fb.score, "source": fb.source, "comment": fb.comment,
                                "created_at": iso(fb.created_at)} for fb in feedback]
        return out


def _candidates(decision: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The decision's candidates in ranking order: utility score, propensity, chosen or not."""
    if not decision:
        return []
    scores, probs = decision.get("scores") or {}, decision.get("propensities") or {}
    names = list(decision.get("ranking") or []) + [n for n in scores if n not in (decision.get("ranking") or [])]
    return [{"expert": n, "score": scores.get(n), "propensity": probs.get(n), "chosen": n == decision.get("expert")}
            for n in names]


def _percentiles(values: list[tuple[float, int]], *, histogram: bool) -> tuple[float | None, float | None]:
    """Nearest-rank p50 and p95 from (histogram bin, count) pairs — the bin's geometric middle —
    or, without a histogram, from (latency, 1) pairs exactly."""
    if not values:
        return None, None
    values = sorted(values)
    counts = np.cumsum([c for _, c in values])
    out = []
    for q in (0.5, 0.95):
        v = values[int(np.searchsorted(counts, max(1, math.ceil(q * counts[-1]))))][0]
        out.append(math.exp((v + 0.5) / LN_BINS) - 1.0 if histogram else v)
    return out[0], out[1]


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, 3)

