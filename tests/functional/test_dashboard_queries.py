"""The dashboard's ledger queries against a real SQLite ledger (migrated, seeded with the
benchmark's synthetic traffic), checked against the same numbers computed in Python."""

from __future__ import annotations

import math
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from benchmarks.ledger_seed import seed
from core.errors import InvalidRequestError, NotFoundError
from router.dashboard.queries import DashboardQueries
from router.dashboard.windows import LedgerFilter, Window, decode_cursor, utc
from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.models import FeedbackRow, RequestRow

END = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
Row = namedtuple("Row", "id created_at expert policy status latency_ms cost_usd api_key_id")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'ledger.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    seeded = seed(engine, rows=4000, days=2, end=END, chunk=1500)
    with Session(engine) as s:
        rows = s.execute(select(RequestRow.id, RequestRow.created_at, RequestRow.expert, RequestRow.policy, RequestRow.status,
                                RequestRow.latency_ms, RequestRow.cost_usd, RequestRow.api_key_id)).all()
        fb = s.execute(select(FeedbackRow.created_at, FeedbackRow.score, RequestRow.policy, RequestRow.expert)
                       .join(RequestRow, RequestRow.id == FeedbackRow.request_id)).all()
    yield DashboardQueries(engine), seeded, [Row(**{**r._asdict(), "created_at": utc(r.created_at)}) for r in rows], fb
    engine.dispose()


def test_timeseries_counts_cost_and_percentiles(ledger):
    q, _, rows, _ = ledger
    window = Window(END - timedelta(hours=24), END)
    out = q.overview(window, buckets=24)["timeseries"]
    assert len(out["buckets"]) == 24 and out["bucket_s"] == 3600
    inside = [r for r in rows if window.since <= r.created_at < window.until]
    assert sum(b["requests"] for b in out["buckets"]) == len(inside)
    assert sum(b["errors"] for b in out["buckets"]) == sum(r.status != "ok" for r in inside)
    assert sum(b["cost_usd"] for b in out["buckets"]) == pytest.approx(sum(r.cost_usd for r in inside))
    b5 = [r.latency_ms for r in inside if r.status == "ok" and int((r.created_at - window.since).total_seconds() // 3600) == 5]
    # Nearest-rank percentiles read from a histogram of 3 %-wide bins: within 1.6 % of the exact value.
    ranked = sorted(b5)
    for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95)):
        exact = ranked[math.ceil(q * len(ranked)) - 1]
        assert out["buckets"][5][key] == pytest.approx(exact, rel=0.017)


def test_expert_shares_and_error_rates(ledger):
    q, _, rows, _ = ledger
    window = Window(END - timedelta(hours=48), END)
    out = q.overview(window)["experts"]
    assert out["total"] == len(rows)
    by = {d["expert"]: d for d in out["data"]}
    small = [r for r in rows if r.expert == "smollm2-135m"]
    assert by["smollm2-135m"]["requests"] == len(small)
    assert by["smollm2-135m"]["error_rate"] == pytest.approx(sum(r.status != "ok" for r in small) / len(small))
    assert by[None]["error_rate"] == 1.0  # rejected before routing
    assert sum(d["share"] for d in out["data"]) == pytest.approx(1.0)


def test_quality_per_policy_and_expert(ledger):
    q, _, _, fb = ledger
    window = Window(END - timedelta(hours=12), END + timedelta(hours=1))
    out = q.quality(window)
    since = datetime.fromisoformat(out["since"])  # the first aligned bucket's start
    assert since <= window.since
    inside = [f for f in fb if since <= utc(f.created_at) < window.until]
    knn = [f.score for f in inside if f.policy == "knn"]
    got = {p["policy"]: p for p in out["by_policy"]}
    assert got["knn"]["n"] == len(knn) and got["knn"]["mean_score"] == pytest.approx(np.mean(knn))
    assert sum(e["n"] for e in out["by_expert"]) == len(inside)


def test_keyset_pagination_visits_every_row_once_newest_first(ledger):
    q, _, rows, _ = ledger
    flt = LedgerFilter(expert="gemma3-270m", status="ok")
    seen, cursor = [], None
    while True:
        page = q.page(flt, limit=97, cursor=cursor)
        seen += [r["id"] for r in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    want = sorted((r for r in rows if r.expert == "gemma3-270m" and r.status == "ok"), key=lambda r: (r.created_at, r.id),
                  reverse=True)
    assert seen == [r.id for r in want]


def test_filters_by_key_policy_and_time(ledger):
    q, _, rows, _ = ledger
    since, until = END - timedelta(hours=30), END - timedelta(hours=6)
    page = q.page(LedgerFilter(since=since, until=until, api_key_id="key07", policy="tryage"), limit=200)
    want = [r for r in rows if since <= r.created_at < until and r.api_key_id == "key07" and r.policy == "tryage"]
    assert [r["id"] for r in page["data"]] == [r.id for r in sorted(want, key=lambda r: (r.created_at, r.id), reverse=True)][:200]
    assert all(r["policy"] == "tryage" and r["api_key_id"] == "key07" for r in page["data"])


def test_request_detail_has_candidates_attempts_and_bad_input_is_refused(ledger):
    q, seeded, rows, _ = ledger
    fallback = next(r for r in rows if r.status == "ok" and len(q.request(r.id)["attempts"]) == 2)
    detail = q.request(fallback.id)
    assert [a["attempt_no"] for a in detail["attempts"]] == [1, 2]
    chosen = [c for c in detail["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["expert"] == detail["expert"] and chosen[0]["propensity"] == pytest.approx(0.92)
    assert len(detail["candidates"]) == 5
    with pytest.raises(NotFoundError):
        q.request("does-not-exist")
    with pytest.raises(InvalidRequestError):
        q.page(LedgerFilter(status="exploded"))
    with pytest.raises(InvalidRequestError):
        decode_cursor("garbage")
    with pytest.raises(InvalidRequestError):
        Window.of(END, END - timedelta(hours=1))


@pytest.mark.parametrize("hours, minutes, buckets", [(24, 0, 48), (7, 13, 20), (40, 0, 7), (1, 0, 48), (3, 0, 1), (0, 50, 1)])
def test_rollups_give_the_figures_of_the_raw_rows(ledger, hours, minutes, buckets):
    """Aligned grids (whole slots from the rollups), grids whose edges cut slots, and buckets
    narrower than a slot: the same figures as a scan of every raw row."""
    q, _, rows, _ = ledger
    window = Window(END - timedelta(hours=hours, minutes=minutes), END - timedelta(minutes=7))  # a partial last slot
    got = q.overview(window, buckets=buckets)
    want = DashboardQueries(q.engine, use_rollups=False).overview(window, buckets=buckets)
    assert got["timeseries"]["since"] == want["timeseries"]["since"]
    first = datetime.fromisoformat(got["timeseries"]["since"])
    assert got["experts"]["total"] == sum(first <= r.created_at < window.until for r in rows) > 0
    for a, b in zip(got["timeseries"]["buckets"], want["timeseries"]["buckets"], strict=True):
        assert (a["t"], a["requests"], a["errors"], a["p50_ms"], a["p95_ms"]) == (b["t"], b["requests"], b["errors"],
                                                                                  b["p50_ms"], b["p95_ms"])
        assert a["cost_usd"] == pytest.approx(b["cost_usd"])
    by = {d["expert"]: d for d in want["experts"]["data"]}
    for d in got["experts"]["data"]:
        w = by[d["expert"]]
        assert (d["requests"], d["errors"]) == (w["requests"], w["errors"])
        assert d["cost_usd"] == pytest.approx(w["cost_usd"]) and d["mean_latency_ms"] == pytest.approx(w["mean_latency_ms"])
    qa, qb = q.quality(window, buckets=buckets), DashboardQueries(q.engine, use_rollups=False).quality(window, buckets=buckets)
    assert {(p["policy"], p["version"], p["n"]) for p in qa["by_policy"]} == {(p["policy"], p["version"], p["n"]) for p in qb["by_policy"]}
    assert sorted(e["mean_score"] for e in qa["by_expert"]) == pytest.approx(sorted(e["mean_score"] for e in qb["by_expert"]))


def test_exact_percentiles_without_ln(ledger):
    """SQLite built without math functions: exact percentiles from the raw rows, close to the histogram's."""
    q, _, _, _ = ledger
    window = Window(END - timedelta(hours=7, minutes=13), END)
    binned = q.overview(window, buckets=20)
    exact = DashboardQueries(q.engine)
    exact._ln = False
    plain = exact.overview(window, buckets=20)
    assert [b["requests"] for b in plain["timeseries"]["buckets"]] == [b["requests"] for b in binned["timeseries"]["buckets"]]
    for a, b in zip(plain["timeseries"]["buckets"], binned["timeseries"]["buckets"]):
        assert b["p95_ms"] == pytest.approx(a["p95_ms"], rel=0.017)


# -- cascade escalations per policy -----------------------------------------------------------------
def seed_cascades(engine) -> None:
    """Cascade requests of two policies inside [END − 24 h, END), one on each side outside, and
    requests without a cascade (a fallback too), written by the ledger writer."""
    from router.ledger.writer import LedgerWriter
    from tests.support.cascade_ledger import Step, cascade_record, plain_record

    at = lambda h: END - timedelta(hours=h)  # noqa: E731
    records = [
        cascade_record("c1", at(20), "cascade", [Step("small", 0.001, 200, True)]),
        cascade_record("c2", at(10), "cascade", [Step("small", 0.001, 300), Step("mid", 0.01, 800, True)]),
        # the middle answer is returned: the last step was paid for and discarded
        cascade_record("c3", at(5), "cascade", [Step("small", 0.001, 250), Step("mid", 0.01, 900, True),
                                                 Step("large", 0.05, 2000)]),
        cascade_record("c4", at(3), "cascade", [Step("small", 0.0, 100, status="error"), Step("mid", 0.01, 700, True)]),
        cascade_record("c5", at(1), "cascade", [Step("small", 0.001, 200, True)], judge_usd=0.0005),
        cascade_record("t1", at(8), "cascade_threshold", [Step("small", 0.002, 400), Step("mid", 0.02, 1000, True)]),
        cascade_record("t2", at(2), "cascade_threshold", [Step("small", 0.002, 350, True)]),
        cascade_record("old", at(25), "cascade", [Step("small", 0.001, 300), Step("mid", 0.01, 800, True)]),
        cascade_record("new", END, "cascade", [Step("small", 0.001, 300), Step("mid", 0.01, 800, True)]),
        plain_record("p1", at(4), "knn", "mid"),
    ]
    fallback = plain_record("p2", at(6), "knn", "small", status="error")  # a failed call and its fallback: no cascade
    fallback.attempts.append({**fallback.attempts[0], "attempt_no": 2, "expert": "mid", "status": "ok", "error": None})
    fallback.request.update(status="ok", n_attempts=2)
    writer = LedgerWriter(engine)
    writer.start()
    for r in [*records, fallback]:
        writer.submit(r)
    assert writer.flush(30)
    writer.close()


def check_cascades(engine) -> None:
    q = DashboardQueries(engine)
    out = q.cascades(Window(END - timedelta(hours=24), END))
    assert out["requests"] == 7 and [p["policy"] for p in out["policies"]] == ["cascade", "cascade_threshold"]
    c, t = out["policies"]
    assert (c["requests"], c["escalated"], c["escalation_rate"], c["mean_steps"]) == (5, 3, 0.6, 1.8)
    # discarded: c2 small 0.001; c3 small 0.001 + large 0.05; c4's failed step 0
    assert c["cost_usd"] == pytest.approx(0.084) and c["added_cost_usd"] == pytest.approx(0.052)
    assert c["added_cost_per_request_usd"] == pytest.approx(0.0104) and c["judge_cost_usd"] == pytest.approx(0.0005)
    # added latency per escalated request: 300, 250 + 2000, 100 ms; nearest rank of 3 values
    assert (c["added_latency_p50_ms"], c["added_latency_p95_ms"]) == (300.0, 2250.0)
    assert (t["requests"], t["escalated"], t["escalation_rate"], t["mean_steps"]) == (2, 1, 0.5, 1.5)
    assert t["added_cost_usd"] == pytest.approx(0.002) and t["added_cost_per_request_usd"] == pytest.approx(0.001)
    assert (t["added_latency_p50_ms"], t["added_latency_p95_ms"], t["judge_cost_usd"]) == (400.0, 400.0, 0.0)
    # a window with only one-step cascades: nothing escalated, no added latency to rank
    one = q.cascades(Window(END - timedelta(hours=2, minutes=30), END))
    assert [(p["policy"], p["requests"], p["escalated"], p["added_cost_usd"], p["added_latency_p50_ms"])
            for p in one["policies"]] == [("cascade", 1, 0, 0.0, None), ("cascade_threshold", 1, 0, 0.0, None)]
    none = q.cascades(Window(END - timedelta(hours=48), END - timedelta(hours=30)))
    assert none == {"since": (END - timedelta(hours=48)).isoformat(), "until": (END - timedelta(hours=30)).isoformat(),
                    "requests": 0, "policies": []}


def on_sqlite(tmp_path, seed, check) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    seed(engine)
    check(engine)
    engine.dispose()


def test_cascade_escalations_per_policy(tmp_path):
    on_sqlite(tmp_path, seed_cascades, check_cascades)


def test_a_ledger_without_cascades_has_none(ledger):
    q, _, rows, _ = ledger
    assert rows and q.cascades(Window(END - timedelta(hours=48), END))["policies"] == []


@pytest.mark.postgres
@pytest.mark.slow
def test_cascade_escalations_per_policy_on_postgres():
    """The JSON paths and casts of the cascade query in PostgreSQL's dialect."""
    on_postgres(seed_cascades, check_cascades)


def on_postgres(seed, check) -> None:
    """``seed`` then ``check`` a migrated ledger in a throw-away PostgreSQL cluster."""
    from tests.support.postgres import pg_bin, postgres_cluster

    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (make test installs them)")
    with postgres_cluster() as url:
        migrate.upgrade(url)
        engine = make_engine(url)
        seed(engine)
        check(engine)
        engine.dispose()


# -- routing time per policy ------------------------------------------------------------------------
def seed_routing_times(engine) -> None:
    """knn: 5 routed requests in the window with known timings, one outside it; prior: 2; a
    request that named its expert (no timing)."""
    from router.ledger.writer import LedgerWriter
    from tests.support.cascade_ledger import plain_record

    def timed(rid, hours, policy, features_ms, decide_ms):
        r = plain_record(rid, END - timedelta(hours=hours), policy, "small")
        r.request["decision"]["timing"] = {"features_ms": features_ms, "decide_ms": decide_ms}
        return r

    records = [timed(f"k{i}", 1 + i, "knn", f, d) for i, (f, d) in enumerate([(30, 0.4), (10, 0.2), (50, 0.6),
                                                                               (20, 0.3), (40, 0.5)])]
    records += [timed("old", 30, "knn", 900, 9.0), timed("p1", 2, "prior", 0.01, 0.3), timed("p2", 3, "prior", 0.02, 0.1),
                plain_record("direct", END - timedelta(hours=4), "direct", "small")]
    writer = LedgerWriter(engine)
    writer.start()
    for r in records:
        writer.submit(r)
    assert writer.flush(30)
    writer.close()


def check_routing_times(engine) -> None:
    q = DashboardQueries(engine)
    out = q.routing_time(Window(END - timedelta(hours=24), END))
    assert [(p["policy"], p["requests"]) for p in out["policies"]] == [("knn", 5), ("prior", 2)]
    knn, prior = out["policies"]
    # nearest rank over 5: p50 is the 3rd smallest, p95 the largest
    assert (knn["features_p50_ms"], knn["features_p95_ms"], knn["decide_p50_ms"], knn["decide_p95_ms"]) == (30, 50, 0.4, 0.6)
    assert (knn["total_p50_ms"], knn["total_p95_ms"]) == (30.4, 50.6)
    assert (prior["features_p50_ms"], prior["decide_p50_ms"], prior["decide_p95_ms"]) == (0.01, 0.1, 0.3)
    assert q.routing_time(Window(END - timedelta(hours=48), END - timedelta(hours=40)))["policies"] == []


def test_routing_time_per_policy(tmp_path):
    on_sqlite(tmp_path, seed_routing_times, check_routing_times)


@pytest.mark.postgres
@pytest.mark.slow
def test_routing_time_per_policy_on_postgres():
    """The decision's JSON path and cast in PostgreSQL's dialect."""
    on_postgres(seed_routing_times, check_routing_times)
