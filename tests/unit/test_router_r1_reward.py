"""Router-R1 reward: hand-computed values of r = R_format + (1 − α)·R_outcome + α·R_cost."""

from __future__ import annotations

import pytest

from policies.router_r1.protocol import check_format
from policies.router_r1.reward import cost_reward, exact_match, normalize_answer, router_reward


def test_well_formed_correct_cheap():
    # cost 0.002 of C_max 0.01 → R_cost = 0.8; α = 0.2 → 0 + 0.8·1 + 0.2·0.8 = 0.96
    r = router_reward(well_formed=True, outcome=1.0, cost_usd=0.002, max_cost_usd=0.01, alpha=0.2)
    assert r.cost == pytest.approx(0.8)
    assert r.total == pytest.approx(0.96)
    assert r.format == 0.0 and r.outcome == 1.0


def test_well_formed_wrong_expensive():
    # cost 0.03 > C_max 0.01 → R_cost = 0; outcome 0 → 0.
    assert router_reward(well_formed=True, outcome=0.0, cost_usd=0.03, max_cost_usd=0.01, alpha=0.5).total == 0.0


def test_partial_task_score():
    # α = 0.5, outcome 0.6, cost 0.0025 / 0.01 → R_cost = 0.75: 0.5·0.6 + 0.5·0.75 = 0.675
    r = router_reward(well_formed=True, outcome=0.6, cost_usd=0.0025, max_cost_usd=0.01, alpha=0.5)
    assert r.total == pytest.approx(0.675)


def test_alpha_zero_is_quality_only_and_alpha_one_cost_only():
    assert router_reward(well_formed=True, outcome=1.0, cost_usd=0.01, max_cost_usd=0.01, alpha=0.0).total == 1.0
    assert router_reward(well_formed=True, outcome=1.0, cost_usd=0.01, max_cost_usd=0.01, alpha=1.0).total == 0.0
    assert router_reward(well_formed=True, outcome=0.0, cost_usd=0.0, max_cost_usd=0.01, alpha=1.0).total == 1.0


def test_malformed_earns_minus_one_whatever_the_answer():
    r = router_reward(well_formed=False, outcome=1.0, cost_usd=0.0, max_cost_usd=0.01, alpha=0.3)
    assert (r.total, r.format, r.outcome, r.cost) == (-1.0, -1.0, 0.0, 0.0)


def test_takes_a_format_report():
    good = check_format("<think>t</think><answer>4</answer>")
    bad = check_format("four")
    assert router_reward(well_formed=good, outcome=1.0, cost_usd=0, max_cost_usd=1, alpha=0.1).total == pytest.approx(1.0)
    assert router_reward(well_formed=bad, outcome=1.0, cost_usd=0, max_cost_usd=1, alpha=0.1).total == -1.0


def test_cost_reward_edges():
    assert cost_reward(0.0, 0.01) == 1.0
    assert cost_reward(0.005, 0.01) == pytest.approx(0.5)
    assert cost_reward(5.0, 0.01) == 0.0
    assert cost_reward(-1.0, 0.01) == 1.0  # a negative cost is no cost
    assert cost_reward(0.5, 0.0) == 1.0  # nothing to trade against


def test_outcome_clipped_and_alpha_checked():
    assert router_reward(well_formed=True, outcome=3.0, cost_usd=0, max_cost_usd=1, alpha=0).outcome == 1.0
    with pytest.raises(ValueError, match="alpha"):
        router_reward(well_formed=True, outcome=1.0, cost_usd=0, max_cost_usd=1, alpha=1.5)
    with pytest.raises(ValueError, match="outcome"):
        router_reward(well_formed=True, outcome=float("nan"), cost_usd=0, max_cost_usd=1, alpha=0.5)


def test_exact_match():
    assert normalize_answer("  The Eiffel-Tower! ") == "eiffeltower"
    assert exact_match("the Eiffel Tower.", "Eiffel Tower") == 1.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
