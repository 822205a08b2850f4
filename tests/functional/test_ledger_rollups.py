"""The ledger's rollups (migration 0006) equal a recomputation from the raw rows after batched
writes, late rows, a spool replay (with rows a crash had already committed) and feedback, and
the migration's backfill rebuilds exactly the same tables."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from benchmarks.ledger_seed import seed
from router.access.keys import KeyStore
from router.dashboard.queries import DashboardQueries
from router.dashboard.windows import Window, utc
from router.learning.feedback import FeedbackService
from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.models import FeedbackRollupRow, FeedbackRow, LatencyRollupRow, RequestRollupRow, RequestRow
from router.ledger.records import LedgerRecord
from router.ledger.spool import LedgerSpool
from router.ledger.writer import LedgerWriter
from tests.support.postgres import pg_bin, postgres_cluster

NOW = datetime.now(UTC)
EXPERTS = ["a", "b", None]
STATUSES = ["ok", "ok", "ok", "error", "rejected", "client_disconnected"]


def record(i: int, created_at: datetime, rng: random.Random) -> LedgerRecord:
    status = rng.choice(STATUSES)
    expert = None if status == "rejected" else rng.choice(EXPERTS[:2])
    latency = None if expert is None else rng.lognormvariate(6, 1)
    request = {"id": f"q{i:031d}", "created_at": created_at, "finished_at": created_at, "api_key_id": None, "tenant": None,
               "requested_model": "m", "policy": rng.choice(["knn", "prior", None]), "policy_version": rng.choice(["v1", None]),
               "expert": expert, "decision": None, "prompt_hash": None, "prompt_text": None,
               "prompt_tokens": rng.randrange(100), "completion_tokens": rng.randrange(100), "cost_usd": rng.random() / 100,
               "ttft_ms": latency, "latency_ms": latency, "stream": False, "status": status, "http_status": 200,
               "error": None, "n_attempts": 1 if expert else 0}
    return LedgerRecord(request=request)


def recompute(engine) -> tuple[dict, dict, dict]:
    """The rollups, computed independently from the raw rows."""
    traffic: dict[tuple, list] = {}
    hist: dict[tuple, int] = {}
    fb: dict[tuple, list] = {}
    with Session(engine) as s:
        for r in s.scalars(select(RequestRow)):
            slot = int(utc(r.created_at).timestamp()) // 1800 * 1800
            acc = traffic.setdefault((slot, r.expert or "", r.policy or "", r.status), [0, 0.0, 0.0, 0, 0, 0])
            for k, v in enumerate((1, r.cost_usd, r.latency_ms or 0.0, r.latency_ms is not None, r.prompt_tokens,
                                   r.completion_tokens)):
                acc[k] += v
            if r.status == "ok" and r.latency_ms is not None:
                key = (slot, int(math.log(r.latency_ms + 1) * 32))
                hist[key] = hist.get(key, 0) + 1
        for f, r in s.execute(select(FeedbackRow, RequestRow).join(RequestRow, RequestRow.id == FeedbackRow.request_id)):
            slot = int(utc(f.created_at).timestamp()) // 1800 * 1800
            acc = fb.setdefault((slot, r.policy or "", r.policy_version or "", r.expert or ""), [0.0, 0])
            acc[0] += f.score
            acc[1] += 1
    return traffic, hist, fb


def stored(engine) -> tuple[dict, dict, dict]:
    t, h, f = RequestRollupRow, LatencyRollupRow, FeedbackRollupRow
    with Session(engine) as s:
        return ({(r.slot, r.expert, r.policy, r.status): [r.requests, r.cost_usd, r.latency_sum_ms, r.latency_n, r.prompt_tokens,
                                                         r.completion_tokens] for r in s.scalars(select(t))},
                {(r.slot, r.bin): r.n for r in s.scalars(select(h))},
                {(r.slot, r.policy, r.policy_version, r.expert): [r.score_sum, r.n] for r in s.scalars(select(f))})


def assert_same(got: tuple[dict, dict, dict], want: tuple[dict, dict, dict]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in w:
            assert (g[k] if isinstance(g[k], list) else [g[k]]) == pytest.approx(w[k] if isinstance(w[k], list) else [w[k]])


def test_rollups_follow_writes_late_rows_replay_and_feedback(tmp_path):
    check_scenario(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)


@pytest.mark.postgres
@pytest.mark.slow
def test_rollups_and_dashboard_on_postgres(tmp_path):
    """The dialect's upserts, the backfill and the dashboard's rollup reads on PostgreSQL."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (make test installs them)")
    with postgres_cluster() as url:
        check_scenario(url, tmp_path)
        engine = make_engine(url)
        end = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
        seed(engine, rows=3000, days=2, end=end, chunk=1000)
        for hours, buckets in ((24, 48), (31, 20), (1, 48)):
            window = Window(end - timedelta(hours=hours), end - timedelta(minutes=7))
            got, want = (DashboardQueries(engine, use_rollups=u) for u in (True, False))
            a, b = got.overview(window, buckets=buckets), want.overview(window, buckets=buckets)
            assert a["experts"]["total"] == b["experts"]["total"] > 0
            assert [(x["requests"], x["errors"], x["p50_ms"], x["p95_ms"]) for x in a["timeseries"]["buckets"]] == \
                [(x["requests"], x["errors"], x["p50_ms"], x["p95_ms"]) for x in b["timeseries"]["buckets"]]
            qa, qb = got.quality(window, buckets=buckets), want.quality(window, buckets=buckets)
            assert sorted((p["policy"], p["n"]) for p in qa["by_policy"]) == sorted((p["policy"], p["n"]) for p in qb["by_policy"])
        engine.dispose()


def check_scenario(url: str, tmp_path) -> None:
    migrate.upgrade(url)
    engine = make_engine(url)
    rng = random.Random(7)
    spool = LedgerSpool(tmp_path / "spool")
    writer = LedgerWriter(engine, batch_size=16, spool=spool)
    writer.start()
    # Live traffic over the last 6 hours, then rows arriving hours late into closed slots.
    for i in range(400):
        writer.submit(record(i, NOW - timedelta(seconds=rng.random() * 6 * 3600), rng))
    for i in range(400, 450):
        writer.submit(record(i, NOW - timedelta(hours=30, seconds=rng.random() * 3600), rng))
    assert writer.flush(30)
    writer.close()
    # A spooled batch half of which a crash had already committed: replayed, counted once.
    replay = [record(i, NOW - timedelta(hours=2, seconds=rng.random() * 3600), rng) for i in range(450, 500)]
    spool.append(replay[:10] + [record(i, NOW, rng) for i in range(390, 400)] + replay[10:])
    again = LedgerWriter(engine, spool=spool)
    again.start()
    assert again.flush(30) and not spool.files()
    again.close()
    assert again.rows_replayed == 60
    # Feedback through the service (its rollup is written with the feedback row).
    service = FeedbackService(engine=engine, ledger=again, keys=KeyStore(engine, secret=b"test-secret"), auth_required=False)
    ids = [f"q{i:031d}" for i in rng.sample(range(500), 80)]
    for rid in ids:
        service.record(request_id=rid, score=rng.random(), source="user")
    want = recompute(engine)
    assert sum(v[0] for v in want[0].values()) == 500 and sum(v[1] for v in want[2].values()) == 80
    assert_same(stored(engine), want)
    # The migration's backfill rebuilds the same tables from the raw rows.
    migrate.downgrade(url, "0005_dashboard_indexes")
    migrate.upgrade(url)
    assert_same(stored(engine), want)
    engine.dispose()
