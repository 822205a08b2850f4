"""Read-only queries of the admin dashboard over the ledger (SQLite and PostgreSQL alike).

Every query is bounded by a time window and served by an index of migration 0005:
aggregates read the covering ``ix_requests_overview`` (created_at, expert, status, latency,
cost), the ledger browser pages with a keyset cursor on (created_at, id), so page 1,000 costs
what page 1 costs. Latency percentiles are exact: PostgreSQL computes them
(``percentile_cont``); SQLite has no percentile aggregate, so its latencies of the window are
read from the covering index and ranked here.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, Integer, and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session

from router.errors import InvalidRequestError, NotFoundError
from router.ledger.models import AttemptRow, FeedbackRow, RequestRow

STATUSES = ("ok", "error", "rejected", "client_disconnected")
MAX_PAGE = 200
MAX_BUCKETS = 500
LN_BINS = 32  # latency histogram: bins per unit of ln(1 + ms)
SETTLE_S = 300.0  # rows reach the ledger late (writer batches, spool replay): older buckets are final
CACHE_BUCKETS = 20_000


def utc(dt: datetime | None) -> datetime | None:
    """Aware UTC datetimes in, aware UTC out (SQLite hands back naive UTC values)."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _iso(dt: datetime | None) -> str | None:
    return utc(dt).isoformat() if dt is not None else None


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    @classmethod
    def last(cls, hours: float, *, now: datetime | None = None) -> Window:
        until = utc(now) or datetime.now(UTC)
        return cls(until - timedelta(hours=hours), until)

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None, *, default_hours: float = 24) -> Window:
        until = utc(until) or datetime.now(UTC)
        since = utc(since) or until - timedelta(hours=default_hours)
        if since >= until:
            raise InvalidRequestError("'since' must be before 'until'", param="since")
        return cls(since, until)

    def where(self, column) -> Any:
        return and_(column >= self.since, column < self.until)


@dataclass(frozen=True)
class LedgerFilter:
    since: datetime | None = None
    until: datetime | None = None
    expert: str | None = None
    policy: str | None = None
    status: str | None = None
    api_key_id: str | None = None

    def clauses(self) -> list[Any]:
        r = RequestRow
        out = []
        if self.since is not None:
            out.append(r.created_at >= utc(self.since))
        if self.until is not None:
            out.append(r.created_at < utc(self.until))
        for column, value in ((r.expert, self.expert), (r.policy, self.policy), (r.status, self.status),
                              (r.api_key_id, self.api_key_id)):
            if value:
                out.append(column == value)
        return out


def encode_cursor(created_at: datetime, request_id: str) -> str:
    return f"{utc(created_at).isoformat()}~{request_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        when, request_id = cursor.rsplit("~", 1)
        return utc(datetime.fromisoformat(when)), request_id
    except ValueError:
        raise InvalidRequestError("malformed pagination cursor; use the 'next_cursor' of the previous page",
                                  param="cursor") from None


class DashboardQueries:
    """The dashboard's numbers. Methods are synchronous (call them from a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._ln: bool | None = None
        self._cache: OrderedDict[tuple[str, float, float], Any] = OrderedDict()  # settled buckets
        self._lock = threading.Lock()

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

    def overview(self, window: Window, *, buckets: int = 48, now: float | None = None) -> dict[str, Any]:
        """Per time bucket: requests, errors, cost, latency p50/p95 of answered requests; per
        expert: share, error rate, cost, mean latency.

        Buckets are aligned to multiples of their width since 1970 (the first one may start a
        little before ``since``), so a bucket that ended more than ``SETTLE_S`` ago never
        changes: its figures are kept in memory and a refresh reads only the newer buckets.
        Reading a bucket is two scans of the covering index:

        1. GROUP BY (bucket, expert, status): counts, cost and latency sums (a few hundred groups);
        2. a latency histogram, GROUP BY (bucket, bin) with bins of 1/32 in ln(1 + ms) (3 %
           wide): nearest-rank p50/p95 are read from it, within ±1.6 %. Exact percentiles would
           sort every latency of the window; a histogram is one pass and can be merged.
        """
        cacheable = self._has_ln()
        origin, width, parts = self._bucketed("traffic", window, buckets, now, cacheable,
                                              lambda o, w, lo, n, until: self._scan(o, w, lo, n, until, histogram=cacheable))
        points, experts = [], {}
        for i, (traffic, hist) in enumerate(parts):
            count = errors = 0
            cost_sum = 0.0
            for expert, status, cnt, cost, lat_sum, lat_n in traffic:
                count += cnt
                errors += 0 if status == "ok" else cnt
                cost_sum += cost
                e = experts.setdefault(expert, [0, 0, 0.0, 0.0, 0])
                e[0], e[1], e[2], e[3], e[4] = (e[0] + cnt, e[1] + (0 if status == "ok" else cnt), e[2] + cost,
                                                e[3] + lat_sum, e[4] + lat_n)
            p50, p95 = _percentiles(hist, histogram=cacheable)
            points.append({"t": _iso(datetime.fromtimestamp(origin + i * width, UTC)), "requests": count, "errors": errors,
                           "cost_usd": cost_sum, "p50_ms": _num(p50), "p95_ms": _num(p95)})
        total = sum(e[0] for e in experts.values())
        per_expert = [{"expert": ex, "requests": cnt, "share": cnt / total, "errors": err, "error_rate": err / cnt,
                       "cost_usd": cost, "mean_latency_ms": _num(lat_sum / lat_n) if lat_n else None}
                      for ex, (cnt, err, cost, lat_sum, lat_n) in experts.items()]
        per_expert.sort(key=lambda d: -d["requests"])
        return {"timeseries": {"since": points[0]["t"], "until": _iso(window.until), "bucket_s": width, "buckets": points},
                "experts": {"total": total, "data": per_expert}}

    def _bucketed(self, kind: str, window: Window, buckets: int, now: float | None, cacheable: bool, scan) -> tuple[float, float, list]:
        """(origin, width, per-bucket parts) over the window's aligned buckets: settled buckets
        from the cache, the rest from one ``scan(origin, width, first, n, until)``."""
        buckets = max(1, min(int(buckets), MAX_BUCKETS))
        width = (window.until - window.since).total_seconds() / buckets
        until = window.until.timestamp()
        origin = math.floor(window.since.timestamp() / width) * width
        n = max(1, math.ceil((until - origin) / width - 1e-9))
        settled = min(until, (time.time() if now is None else now) - SETTLE_S)
        parts: list[Any] = [None] * n
        if cacheable:
            with self._lock:
                parts = [self._cache.get((kind, width, origin + i * width)) for i in range(n)]
        first = next((i for i, part in enumerate(parts) if part is None), n)
        if first < n:
            fresh = scan(origin, width, first, n, until)
            for i in range(first, n):
                parts[i] = fresh.get(i) or ([], [])
                if cacheable and origin + (i + 1) * width <= settled:
                    self._remember((kind, width, origin + i * width), parts[i])
        return origin, width, parts

    def _scan(self, origin: float, width: float, lo: int, n: int, until: float, *, histogram: bool) -> dict[int, tuple[list, list]]:
        """Buckets lo..n-1 from the ledger: {bucket: (traffic rows, histogram rows or latencies)}."""
        r = RequestRow
        b = self._bucket(origin, width).label("b")
        since = datetime.fromtimestamp(origin + lo * width, UTC)
        in_range = and_(r.created_at >= since, r.created_at < datetime.fromtimestamp(until, UTC))
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
        clamp = lambda k: min(max(int(k), lo), n - 1)  # noqa: E731  float rounding at the range's ends
        with Session(self.engine) as s:
            for k, expert, status, cnt, cost, lat_sum, lat_n in s.execute(traffic):
                out.setdefault(clamp(k), ([], []))[0].append((expert, status, int(cnt), float(cost), float(lat_sum), int(lat_n)))
            for k, v, cnt in s.execute(latencies):
                if v is not None:
                    out.setdefault(clamp(k), ([], []))[1].append((float(v), int(cnt)))
        return out

    def _remember(self, key: tuple[str, float, float], part: Any) -> None:
        with self._lock:
            self._cache[key] = part
            while len(self._cache) > CACHE_BUCKETS:
                self._cache.popitem(last=False)

    # -- quality from feedback --------------------------------------------------------------------
    def quality(self, window: Window, *, buckets: int = 48, now: float | None = None) -> dict[str, Any]:
        """Mean feedback score and count per policy (and version) and per expert, over feedback
        given in the window (its buckets aligned and cached as ``overview``'s)."""
        origin, _, parts = self._bucketed("quality", window, buckets, now, True, self._scan_quality)
        policies: dict[tuple, list[float]] = {}
        experts: dict[str | None, list[float]] = {}
        for rows, _ in parts:
            for policy, version, expert, total, cnt in rows:
                for acc in (policies.setdefault((policy, version), [0.0, 0]), experts.setdefault(expert, [0.0, 0])):
                    acc[0] += total
                    acc[1] += cnt
        pol = [{"policy": p, "version": v, "mean_score": t / c, "n": c} for (p, v), (t, c) in policies.items()]
        exp = [{"expert": e, "mean_score": t / c, "n": c} for e, (t, c) in experts.items()]
        pol.sort(key=lambda d: -d["n"])
        exp.sort(key=lambda d: -d["n"])
        return {"since": _iso(datetime.fromtimestamp(origin, UTC)), "by_policy": pol, "by_expert": exp}

    def _scan_quality(self, origin: float, width: float, lo: int, n: int, until: float) -> dict[int, tuple[list, list]]:
        f, r = FeedbackRow, RequestRow
        b = self._bucket(origin, width, f.created_at).label("b")
        stmt = (select(b, r.policy, r.policy_version, r.expert, func.sum(f.score), func.count())
                .join(r, r.id == f.request_id)
                .where(f.created_at >= datetime.fromtimestamp(origin + lo * width, UTC),
                       f.created_at < datetime.fromtimestamp(until, UTC))
                .group_by(b, r.policy, r.policy_version, r.expert))
        out: dict[int, tuple[list, list]] = {}
        with Session(self.engine) as s:
            for k, policy, version, expert, total, cnt in s.execute(stmt):
                out.setdefault(min(max(int(k), lo), n - 1), ([], []))[0].append((policy, version, expert, float(total), int(cnt)))
        return out

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
        data = [{**row._asdict(), "created_at": _iso(row.created_at)} for row in rows]
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
            out["created_at"], out["finished_at"] = _iso(row.created_at), _iso(row.finished_at)
            out["candidates"] = _candidates(row.decision)
            out["attempts"] = [{"attempt_no": a.attempt_no, "expert": a.expert, "started_at": _iso(a.started_at),
                                "status": a.status, "error": a.error, "ttft_ms": a.ttft_ms, "latency_ms": a.latency_ms,
                                "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
                                "cost_usd": a.cost_usd, "usage_details": a.usage_details} for a in attempts]
            out["feedback"] = [{"score": fb.score, "source": fb.source, "comment": fb.comment,
                                "created_at": _iso(fb.created_at)} for fb in feedback]
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

