"""Budget pacing: the controller tracks a budget, its steps are bounded, the pacer reads spend from
the ledger and downgrades near the cap to the cheapest expert the request's constraints allow."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from core.config import PacingConfig
from core.types import Decision, ExpertInfo
from router.access.keys import ApiKey
from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.models import ApiKeyRow, KeyUsageRow
from router.pacing.controller import PacingController
from router.pacing.pacer import Pacer, SpendSource, cheapest, window_bounds

DAY = 86400.0


def _simulate_day(cfg: PacingConfig, *, budget: float, burst: float, seed: int = 0):
    """A synthetic day: Poisson arrivals (rate ×``burst`` from 14:00 to 15:00), each request costing
    less the higher λ is (the policy picks cheaper experts), refused once the budget is spent (the
    hard cap); λ updated every ``update_s``. Returns (end spend, spend at noon, hour the cap was
    reached or None, the λ path)."""
    ctl = PacingController(cfg)
    s = ctl.initial(1.0)
    rng = np.random.default_rng(seed)
    t0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
    spent, noon, capped, lams = 0.0, None, None, []
    for step in range(int(DAY // cfg.update_s)):
        t = t0 + step * cfg.update_s
        ctl.update(s, now=t, spent=spent, budget=budget, t0=t0, t1=t0 + DAY)
        lams.append(s.lambda_)
        hour = step * cfg.update_s / 3600
        if noon is None and hour >= 12:
            noon = spent
        unit = 0.01 / (1 + s.lambda_ / 200.0)  # dearer experts at low λ, cheaper ones as λ rises
        for _ in range(rng.poisson(0.05 * (burst if 14 <= hour < 15 else 1.0) * cfg.update_s)):
            cost = unit * rng.lognormal(0, 0.5)
            if spent + cost > budget:
                capped = capped if capped is not None else hour
                continue
            spent += cost
    return spent, noon, capped, lams


@pytest.mark.parametrize("burst", [1.0, 4.0])
def test_the_day_ends_within_five_percent_of_the_budget_without_hitting_the_cap(burst):
    cfg = PacingConfig(update_s=60)
    budget = 10.0  # unpaced (λ = 1) the day would cost about 43 USD
    spent, noon, capped, lams = _simulate_day(cfg, budget=budget, burst=burst)
    assert abs(spent - budget) / budget <= 0.05, spent
    assert capped is None or capped >= 23.5, capped  # no refusal before the very end of the day
    assert abs(noon - budget * cfg.target_share / 2) <= 0.15 * budget / 2, noon  # on the pacing line at noon
    steps = np.abs(np.diff(np.log(lams)))
    assert steps.max() <= cfg.max_step + 1e-12  # bounded steps
    assert max(lams) > 10  # it had to raise the price of a dollar to get there


def test_without_pacing_the_same_day_hits_the_cap_by_morning():
    spent, noon, capped, _ = _simulate_day(PacingConfig(update_s=60, lambda_max=1.0001), budget=10.0, burst=4.0)
    assert capped is not None and capped < 8  # the control: a hard cap alone refuses most of the day


def test_an_ample_budget_keeps_lambda_at_its_floor():
    cfg = PacingConfig(update_s=60)
    spent, _, capped, lams = _simulate_day(cfg, budget=1000.0, burst=1.0)
    assert spent < 100 and capped is None and max(lams) == pytest.approx(cfg.lambda_min)


def test_the_plan_follows_the_traffic_profile():
    weights = [0.0] * 8 + [1.0] * 12 + [0.0] * 4  # traffic 08:00–20:00 only
    ctl = PacingController(PacingConfig(profile=weights))
    t0 = 1_767_225_600.0
    assert ctl.planned_share(t0 + 8 * 3600, t0, t0 + DAY) == 0.0
    assert ctl.planned_share(t0 + 14 * 3600, t0, t0 + DAY) == pytest.approx(0.5)
    assert ctl.planned_share(t0 + 21 * 3600, t0, t0 + DAY) == 1.0
    flat = PacingController(PacingConfig())
    assert flat.planned_share(t0 + 6 * 3600, t0, t0 + DAY) == pytest.approx(0.25)
    # all of what is left, spread over what is left of the window
    assert flat.planned_rate(t0 + 12 * 3600, t0, t0 + DAY, 6.0) == pytest.approx(6.0 / (12 * 3600))


def test_window_bounds():
    now = datetime(2026, 12, 31, 15, 30, tzinfo=UTC)
    assert window_bounds(now, "day") == (datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert window_bounds(now, "month") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


EXPERTS = [ExpertInfo("strong", 10.0, 30.0), ExpertInfo("mid", 1.0, 2.0), ExpertInfo("tiny", 0.1, 0.1, params_b=1)]


def test_cheapest_keeps_to_the_requests_candidates():
    d = Decision(expert="strong", policy="p", policy_version="v", scores={"strong": 0.9, "mid": 0.5},
                 propensities={"strong": 1.0}, ranking=["strong", "mid"])  # tiny was not feasible for this request
    out = cheapest(d, EXPERTS, prompt_tokens=100, completion_tokens=100)
    assert out.expert == "mid" and out.ranking == ["mid", "strong"] and out.propensities == {"mid": 1.0}
    assert out.as_record()["pacing"]["downgrade"] and out.as_record()["pacing"]["from"] == "strong"
    assert cheapest(d, EXPERTS, prompt_tokens=100, completion_tokens=100, alone=True).ranking == ["mid"]


def test_the_pacer_reads_spend_from_the_ledger_and_downgrades_near_the_cap(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    now = [datetime(2026, 3, 1, 12, tzinfo=UTC)]  # half the day gone
    key = ApiKey(id="k1", name="team", prefix="emx-abc", created_at=now[0], budget_usd_day=10.0)
    with engine.begin() as conn:
        conn.execute(ApiKeyRow.__table__.insert(), [{"id": "k1", "name": "team", "key_hash": "h", "prefix": "emx-abc",
                                                     "created_at": now[0], "hash_scheme": "sha256"}])
        conn.execute(KeyUsageRow.__table__.insert(), [{"key_id": "k1", "window": "day", "window_start": datetime(2026, 3, 1, tzinfo=UTC),
                                                       "requests": 10, "tokens": 0, "reserved_tokens": 0, "spent_usd": 7.0,
                                                       "reserved_usd": 0.5}])
    pacer = Pacer(PacingConfig(update_s=60), SpendSource(engine), default_lambda=0.0, clock=lambda: now[0])
    assert pacer.pace(None).lambda_ is None  # keyless, no global target: not paced
    first = pacer.pace(key)
    assert first.lambda_ == 1.0 and not first.near_cap
    pacer.update()
    assert pacer.states["key:k1"].spent == pytest.approx(7.5)  # spent plus reserved
    for _ in range(5):  # 7.5 of 9.7 planned by noon-plus: spending at 2× the rate the rest allows
        now[0] += timedelta(minutes=1)
        with engine.begin() as conn:
            conn.execute(KeyUsageRow.__table__.update().values(spent_usd=KeyUsageRow.spent_usd + 0.01))
        pacer.update()
    lam = pacer.pace(key).lambda_
    assert 1.0 < lam <= math.exp(5 * 0.2) + 1e-9  # raised, by bounded steps
    with engine.begin() as conn:
        conn.execute(KeyUsageRow.__table__.update().values(spent_usd=9.6))
    now[0] += timedelta(minutes=1)
    pacer.update()
    assert pacer.pace(key).near_cap  # 9.6 + 0.5 ≥ 95 % of 10
    status = pacer.status()[0]
    assert status["scope"] == "key:k1" and status["name"] == "team" and status["history"]
    engine.dispose()
    # a ledger that cannot be read leaves λ where it was, and raises nothing
    broken = Pacer(PacingConfig(), SpendSource(make_engine(f"sqlite:///{tmp_path / 'no' / 'x.db'}")), clock=lambda: now[0])
    broken.pace(key)
    broken.update()
    assert broken.read_failures == 1 and broken.pace(key).lambda_ == 1.0


def test_a_global_target_paces_all_traffic_from_the_ledgers_rollups(tmp_path):
    from router.ledger.models import RequestRollupRow

    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    now = [datetime(2026, 3, 1, 6, tzinfo=UTC)]
    slot = int(datetime(2026, 3, 1, 5, 30, tzinfo=UTC).timestamp())
    yesterday = int(datetime(2026, 2, 28, 23, 30, tzinfo=UTC).timestamp())
    with engine.begin() as conn:
        conn.execute(RequestRollupRow.__table__.insert(), [
            {"slot": s, "expert": "e", "policy": "p", "status": "ok", "requests": 1, "cost_usd": c, "latency_sum_ms": 0.0,
             "latency_n": 0, "prompt_tokens": 0, "completion_tokens": 0} for s, c in ((slot, 4.0), (yesterday, 100.0))])
    pacer = Pacer(PacingConfig(global_budget_usd=10.0), SpendSource(engine), clock=lambda: now[0])
    pacer.update()
    assert pacer.states["global"].spent == pytest.approx(4.0)  # today's slots only
    now[0] += timedelta(minutes=1)
    with engine.begin() as conn:  # another dollar within a minute: far faster than 6 left over 18 hours allow
        conn.execute(RequestRollupRow.__table__.update().where(RequestRollupRow.slot == slot).values(cost_usd=5.0))
    pacer.update()
    pace = pacer.pace(None)  # keyless traffic is paced by the global scope
    assert pace.scope == "global" and pace.lambda_ == pytest.approx(math.exp(0.2))
    engine.dispose()
