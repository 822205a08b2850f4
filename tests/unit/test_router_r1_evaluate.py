"""Router-R1 evaluation: the one-call rows scored with the router's own reward (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from policies.data import RoutingData
from policies.router_r1.env_matrix import MatrixEnv
from policies.router_r1.evaluate import eval_rows, evaluate_query_policies, markdown_table, single_call_rewards
from policies.router_r1.reward import router_reward
from tests.support.routing_matrix import make_frame


def test_single_call_rewards_hand_computed():
    scores = np.array([[1.0, 0.0, np.nan], [0.5, 1.0, 1.0]])
    costs = np.array([[1.0, 2.0, 9.0], [1.0, 4.0, 2.0]])
    known = ~np.isnan(scores)
    r = single_call_rewards(scores, costs, known, alpha=0.25)
    # row 0: the unknown expert's price does not set the normaliser (2.0 does)
    assert r[0, 0] == pytest.approx(0.75 * 1.0 + 0.25 * (1 - 1 / 2))
    assert r[0, 1] == pytest.approx(0.0)
    assert r[1, 1] == pytest.approx(0.75)
    assert r[1, 2] == pytest.approx(0.75 + 0.25 * 0.5)
    assert r[1, 0] == pytest.approx(router_reward(well_formed=True, outcome=0.5, cost_usd=1.0, max_cost_usd=4.0, alpha=0.25).total)


def test_query_policies_carry_the_reward_and_the_reward_optimal_single_expert():
    data = RoutingData.from_frame(make_frame(n_per_task=20, seed=3), {"models": {
        "small": {"params_b": 1, "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1},
        "mid": {"params_b": 8, "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 0.5},
        "large": {"params_b": 70, "input_usd_per_mtok": 2.0, "output_usd_per_mtok": 2.0}}}, name="synthetic")
    env = MatrixEnv(data, split="test")
    rows = eval_rows(env, 30)
    plain = evaluate_query_policies(data, env, rows, ["cheapest", "strongest"])
    assert plain["cheapest"]["reward"] is None and not any(k.startswith("best single by reward") for k in plain)
    out = evaluate_query_policies(data, env, rows, ["cheapest", "strongest"], alpha=1.0)
    # α = 1: only cost counts, so the cheapest expert is reward-optimal and earns the most
    best = out["best single by reward (train, α=1)"]
    assert best["model"] == "small"
    ev = env.data.subset(rows)
    expected = single_call_rewards(ev.scores, ev.cost_matrix(), ev.known, 1.0)[:, env.models.index("small")].mean()
    assert best["reward"] == pytest.approx(expected)
    assert out["cheapest"]["reward"] == pytest.approx(best["reward"])
    picked = next(iter(out["strongest"]["adopted"]))  # one expert for every row
    strongest = single_call_rewards(ev.scores, ev.cost_matrix(), ev.known, 1.0)[:, env.models.index(picked)].mean()
    assert out["strongest"]["reward"] == pytest.approx(strongest) and strongest <= best["reward"] + 1e-9
    table = markdown_table(out)
    assert "| best single by reward (train, α=1) |" in table and "small |" in table
