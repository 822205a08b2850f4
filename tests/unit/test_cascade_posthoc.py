"""Post-hoc estimators and the cascade decision rule, on hand-made numbers (no models, no data)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from policies.cascade_engine import choose_step, normal_draws, run_cascades, search_space, set_values
from policies.posthoc import (
    ESTIMATORS,
    AnswerView,
    Calibrator,
    auroc,
    brier,
    ece,
    fit_calibrator,
    get_estimator,
    normalise_answer,
    own_features,
    pair_features,
    parse_logprobs,
)


def view(answer, lps=None, expert="e", top=None):
    toks = None
    if lps is not None:
        toks = json.dumps([[f"t{i}", lp, top if i == 0 and top else None] for i, lp in enumerate(lps)])
    return AnswerView("q", answer, expert, parse_logprobs(toks))


def test_logprobs_parse_from_json_and_lists():
    assert parse_logprobs(None) is None and parse_logprobs("not json") is None and parse_logprobs("[]") is None
    parsed = parse_logprobs('[["A", -0.1, [["B", -2.5]]], ["x", -1.0], ["bad"]]')
    assert parsed == (("A", -0.1, {"B": -2.5}), ("x", -1.0, None))
    assert parse_logprobs([["A", -0.2, {"B": -3.0}]]) == (("A", -0.2, {"B": -3.0}),)


def test_answers_compare_by_their_normal_form():
    assert normalise_answer("B) Paris") == normalise_answer("The answer is (B).") == "B"
    assert normalise_answer("So 1,200 apples.") == normalise_answer("1200") == "1200"
    assert normalise_answer("a cat sat") == "a cat sat"  # an article is not a choice letter
    assert normalise_answer(None) == ""


def test_own_and_pair_features():
    v = view("42", [-0.1, -2.0, -0.3], top=[["41", -3.0]])
    f = own_features(v)
    assert f["lp_mean"] == pytest.approx(-0.8) and f["lp_min"] == -2.0 and f["lp_sum"] == pytest.approx(-2.4)
    assert f["first_lp"] == -0.1 and f["entropy"] > 0
    assert math.isnan(own_features(view("42"))["lp_mean"])  # no logprobs: NaN, never a guess
    w = view("42.", [-0.5], top=[["41", -1.0]])
    agree, js = pair_features(v, w)
    assert agree == 1.0 and js > 0
    assert pair_features(v, view("7", [-0.1]))[0] == 0.0


def test_estimators_are_pure_functions_of_the_answers_in_hand():
    v, o = view("42", [-0.1, -2.0]), view("42", [-0.3])
    assert get_estimator("logprob_min").features(v).tolist() == [-2.0]
    assert get_estimator("agreement").features(v, [o, view("9")]).tolist() == [0.5]
    assert np.isnan(get_estimator("agreement").features(v)[0])  # alone: nothing to agree with
    paper = get_estimator("paper")
    assert len(paper.features(v, [o])) == len(paper.own) + 3
    assert get_estimator("none").features(v).shape == (0,)
    with pytest.raises(Exception, match="unknown post-hoc estimator"):
        get_estimator("vibes")
    assert {"logprob_mean", "logprob_min", "logprob_sum", "agreement", "paper", "judge"} <= set(ESTIMATORS)


def test_calibrators_learn_probabilities_and_survive_a_round_trip():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-s))).astype(float)
    raw = 3 * s + 1  # a monotone but miscalibrated signal
    for method in ("isotonic", "platt"):
        cal = fit_calibrator(raw[:, None], y, method)
        p = cal.predict(raw[:, None])
        assert brier(p, y) < brier(np.full_like(y, y.mean()), y) - 0.05
        assert ece(p, y) < 0.03
        again = Calibrator.from_state(cal.method, cal.state())
        np.testing.assert_allclose(again.predict(raw[:, None]), p)
    # missing features fall back to the training mean; an empty feature set to the base rate
    cal = fit_calibrator(np.c_[raw, np.where(rng.random(4000) < 0.5, np.nan, s)], y)
    assert cal.method == "logistic" and np.isfinite(cal.predict(np.array([[np.nan, np.nan]]))).all()
    assert fit_calibrator(np.zeros((10, 0)), np.r_[np.ones(3), np.zeros(7)]).predict(np.zeros((2, 0))).tolist() == [0.3, 0.3]
    # graded scores are soft labels
    soft = fit_calibrator(raw[:, None], 1 / (1 + np.exp(-s)), "platt")
    assert 0.45 < soft.predict(np.array([[1.0]]))[0] < 0.55


def test_metrics():
    y = np.array([1, 0, 1, 1.0])
    assert brier(y, y) == 0 and ece(y, y) == 0
    assert ece(np.full(4, 0.75), y) == pytest.approx(0.0)
    assert auroc(np.array([0.9, 0.1, 0.8, 0.7]), y) == 1.0 and auroc(np.ones(3), np.ones(3)) != auroc(np.ones(3), np.ones(3))


# ---- the decision rule -----------------------------------------------------------------------------
def test_search_spaces_of_the_strategies():
    order = [0, 1, 2]
    cr = search_space(0, 3, order, strategy="cascade_routing", max_depth=3, force_order=True)
    assert sorted(cr.sets.tolist()) == list(range(1, 8)) and 0 not in cr.sets  # something must run first
    assert cr.first[cr.sets.tolist().index(0b110)] == 1  # the cheaper member runs first
    after = search_space(0b010, 3, order, strategy="cascade_routing", max_depth=3, force_order=True)
    assert sorted(after.sets.tolist()) == [0, 0b100]  # force_order: only dearer experts follow
    assert sorted(search_space(0, 3, order, strategy="cascade", max_depth=3, force_order=True).sets.tolist()) == [1, 3, 7]
    assert sorted(search_space(0, 3, order, strategy="routing", max_depth=1, force_order=True).sets.tolist()) == [1, 2, 4]
    assert search_space(0b001, 3, order, strategy="cascade_routing", max_depth=1, force_order=True).sets.tolist() == [0]


def test_expected_max_matches_the_closed_form():
    z = normal_draws(4096, 2, 0)
    mu, sd = np.array([[0.5, 0.5]]), np.array([[0.1, 0.1]])
    space = search_space(0, 2, [0, 1], strategy="cascade_routing", max_depth=2, force_order=True)
    V, C = set_values(mu, sd, np.array([[1.0, 2.0]]), np.ones((1, 2), bool), 0, space, z)
    both = V[0, space.sets.tolist().index(3)]
    assert both == pytest.approx(0.5 + 0.1 / math.sqrt(math.pi), abs=2e-3)  # E[max] of two iid normals
    assert C[0, space.sets.tolist().index(3)] == 3.0


def _tables(mu_ante, mu_post, sigma):
    def table(R):
        run = np.array([bool(R >> j & 1) for j in range(mu_ante.shape[1])])
        return np.where(run, mu_post, mu_ante), np.where(run, 0.0, sigma) + np.zeros_like(mu_ante)
    return table


def test_a_confident_cheap_answer_stops_and_a_doubtful_one_escalates():
    ante = np.array([[0.6, 0.8], [0.6, 0.8]])
    post = np.array([[0.97, 0.8], [0.05, 0.8]])  # row 0: the cheap answer looks right; row 1: wrong
    cost = np.array([[1.0, 10.0], [1.0, 10.0]])
    run = run_cascades(_tables(ante, post, np.array([0.3, 0.3])), cost, np.ones((2, 2), bool), [0.02],
                       order=[0, 1], strategy="cascade_routing")
    assert run.runmask[0].tolist() == [0b01, 0b11] and run.selected[0].tolist() == [0, 1]
    assert run.steps[0].tolist() == [1, 2]
    # routing never reads an answer; the threshold cascade stops at τ
    route = run_cascades(_tables(ante, post, np.array([0.3, 0.3])), cost, np.ones((2, 2), bool), [0.02],
                         order=[0, 1], strategy="routing")
    assert (route.steps == 1).all()
    thr = run_cascades(_tables(ante, post, np.array([0.3, 0.3])), cost, np.ones((2, 2), bool), [], order=[0, 1],
                       strategy="threshold", taus=[0.5, 2.0])
    assert thr.runmask.tolist() == [[0b01, 0b11], [0b11, 0b11]] and thr.selected.tolist() == [[0, 1], [1, 1]]
    # an expert not allowed on a row never runs there
    allowed = np.array([[True, False], [True, False]])
    blocked = run_cascades(_tables(ante, post, np.array([0.3, 0.3])), cost, allowed, [0.0], order=[0, 1])
    assert (blocked.runmask == 0b01).all()


def test_one_live_step_agrees_with_the_vectorised_run():
    z = normal_draws(128, 2, 0)
    ante, post, sigma = np.array([[0.6, 0.8]]), np.array([[0.05, 0.8]]), np.array([0.3, 0.3])
    cost, allowed = np.array([[1.0, 10.0]]), np.ones((1, 2), bool)
    t = _tables(ante, post, sigma)
    first, values = choose_step(*t(0), cost, allowed, 0, 0.005, order=[0, 1], strategy="cascade_routing", max_depth=2,
                                force_order=True, z=z)
    assert first == 0 and set(values) == {0, 1}
    second, _ = choose_step(*t(1), cost, allowed, 1, 0.005, order=[0, 1], strategy="cascade_routing", max_depth=2,
                            force_order=True, z=z)
    assert second == 1
    stop, _ = choose_step(*t(1), cost, allowed, 1, 0.005, order=[0, 1], strategy="cascade_routing", max_depth=1,
                          force_order=True, z=z)
    assert stop == -1  # the step cap
