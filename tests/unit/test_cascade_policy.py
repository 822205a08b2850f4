"""The cascade policy on the simulated three-expert matrix (hashing encoder: fast, no model files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from core.errors import PolicyError  # noqa: E402
from core.types import RouteRequest  # noqa: E402
from policies import create_policy  # noqa: E402
from policies.artifacts import load_artifact, save_artifact  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import configure_encoders  # noqa: E402
from policies.posthoc import AnswerView, parse_logprobs  # noqa: E402
from tests.support import cascade_matrix  # noqa: E402
from tests.support.routing_matrix import make_frame  # noqa: E402

LAMBDAS = np.r_[0.0, np.logspace(0, 5, 30)]


@pytest.fixture(scope="module")
def data():
    configure_encoders(cache_dir=None)
    df, meta = cascade_matrix.make_frame(n_per_task=80, seed=3)
    return RoutingData.from_frame(df, meta, name="cascade-sim")


@pytest.fixture(scope="module")
def split(data):
    return data.subset(data.rows_of("train")), data.subset(data.rows_of("test"))


@pytest.fixture(scope="module")
def fitted(split):
    train, _ = split
    return {name: create_policy(name, encoder="hashing", folds=3).fit(train)
            for name in ("cascade", "cascade_route", "cascade_threshold")}


def answer(expert: str, text: str, first_lp: float) -> AnswerView:
    return AnswerView("q", text, expert, parse_logprobs(json.dumps([[text, first_lp, [["7", -4.0]]], [" ok", -0.2]])))


def test_the_matrix_keeps_answers_and_logprobs(data, split):
    assert data.answers is not None and data.logprobs is not None and data.answers.shape == data.scores.shape
    train, _ = split
    sub = train.select_models(["large", "small"])
    assert sub.answers[0, 0] == train.answers[0, 2] and len(train.subset([0, 1]).logprobs) == 2


def test_fit_picks_an_estimator_by_cross_fitted_brier(fitted):
    p = fitted["cascade"]
    scores = p.estimator_scores_
    assert p.quality_.estimator.name == min(scores, key=scores.get)
    assert scores[p.quality_.estimator.name] < scores["length"]  # the answer's confidence beats its length
    assert p.strategy_ == "cascade_routing" and p.expert_names[p.order_[0]] == "small"


def test_offline_runs_pay_for_every_call(fitted, split):
    _, test = split
    out = fitted["cascade"].cascade_many(test, LAMBDAS)
    n = len(test)
    assert out["choices"].shape == out["spent"].shape == (len(LAMBDAS), n)
    chosen_cost = test.cost_matrix()[np.arange(n)[None, :], out["choices"]]
    assert (out["spent"] >= chosen_cost - 1e-15).all()
    assert out["steps"][0].mean() > out["steps"][-1].mean() >= 1  # paying more buys more calls
    route = fitted["cascade_route"].cascade_many(test, LAMBDAS)
    assert (route["steps"] == 1).all()
    thr = fitted["cascade_threshold"].cascade_many(test, LAMBDAS)
    assert thr["steps"].max() > 1


def test_next_step_escalates_on_doubt_and_stops_on_confidence(fitted):
    p = fitted["cascade"]
    req = RouteRequest(prompt="trivia question 3: capital river famous?", prompt_tokens=20, max_completion_tokens=16)
    lam = 3000.0
    first = p.next_step(req, [], lambda_=lam)
    assert first.expert is not None and set(first.estimates) == set(p.expert_names)
    sure = p.next_step(req, [answer(first.expert, "42", -0.001)], lambda_=lam)
    doubt = p.next_step(req, [answer(first.expert, "42", -3.5)], lambda_=lam)
    assert sure.expert is None and sure.answer_with == first.expert
    assert doubt.expert is not None and doubt.expert != first.expert
    assert doubt.estimates[first.expert] < sure.estimates[first.expert]
    # caps: no step left, or nothing affordable, means answering with what is in hand
    assert p.next_step(req, [answer(first.expert, "42", -3.5)], lambda_=lam, max_steps=0).expert is None
    assert p.next_step(req, [answer(first.expert, "42", -3.5)], lambda_=lam, budget_usd=0.0).expert is None
    assert p.next_step(req, [answer(first.expert, "42", -3.5)], lambda_=lam,
                       unavailable=frozenset(set(p.expert_names) - {first.expert})).expert is None
    d = p.decide(req, lambda_=lam)
    assert d.expert == first.expert and d.ranking[0] == d.expert and d.propensities[d.expert] == 1.0


def test_artifact_round_trip_keeps_every_decision(fitted, tmp_path):
    p = fitted["cascade"]
    path = save_artifact(p, tmp_path / "cascade")
    q = load_artifact(path, policy="cascade").policy
    req = RouteRequest(prompt="math question 9: sum integer?", prompt_tokens=20, max_completion_tokens=16)
    for answers in ([], [answer("small", "12", -0.01)], [answer("small", "12", -4.0)],
                    [answer("small", "12", -4.0), answer("mid", "13", -2.0)]):
        a, b = p.next_step(req, answers, lambda_=300.0), q.next_step(req, answers, lambda_=300.0)
        assert (a.expert, a.answer_with) == (b.expert, b.answer_with)
        assert a.estimates == pytest.approx(b.estimates)
    assert q.for_experts(p.experts_, {n: n for n in p.expert_names}) is q
    with pytest.raises(PolicyError, match="own names"):
        q.for_experts(p.experts_, {"small": "mid"})


def test_a_matrix_without_answers_still_trains(tmp_path):
    data = RoutingData.from_frame(make_frame(n_per_task=30, seed=1), name="no-answers")
    p = create_policy("cascade", encoder="hashing", folds=3).fit(data.subset(data.rows_of("train")))
    assert p.quality_.estimator.name == "none"
    out = p.cascade_many(data.subset(data.rows_of("test")), LAMBDAS)
    assert out["steps"].min() >= 1


def test_simulation_mode_is_for_evaluation_only(split):
    train, test = split
    p = create_policy("cascade", simulate=[0.3, 0.1]).fit(train)
    out = p.cascade_many(test, LAMBDAS)
    assert out["choices"].shape == (len(LAMBDAS), len(test))
    with pytest.raises(PolicyError, match="evaluation only"):
        p.predict_quality(["x"])
    with pytest.raises(PolicyError, match="no servable form"):
        p.artifact_state()


def test_expertmux_eval_scores_a_cascade_by_every_call_it_made(data):
    from policies.evaluation.harness import EvalConfig, evaluate

    cfg = EvalConfig(encoder="hashing", n_lambdas=100, policy_params={"cascade": {"folds": 3}, "cascade_route": {"folds": 3}})
    report = evaluate(data, ["best_single", "cascade_route", "cascade"], cfg)
    res = report["policies"]["cascade"]
    calls = res["learned"]["cascade"]["mean_calls"]
    assert len(calls) == len(res["curve"]["cost"]) and max(calls) > 1.0
    assert res["learned"]["cascade"]["estimator"] in res["learned"]["cascade"]["estimator_brier"]
    # λ = 0: the cascade calls more than one expert per query, and pays for all of them
    top = report["reference"]["models"]
    assert res["curve"]["cost"][0] > min(m["cost"] for m in top.values())
    assert max(report["policies"]["cascade_route"]["learned"]["cascade"]["mean_calls"]) == 1.0


def test_expertmux_train_writes_a_servable_cascade_scored_as_a_cascade(data, tmp_path):
    from policies.training import train_policy

    result = train_policy("cascade", data, params={"encoder": "hashing", "folds": 3, "ex_ante_params": ("k=15",)},
                          out=tmp_path / "cascade")
    test = result.manifest["metrics"]["test"]
    assert test["quality_max"] > test["best_single"]["quality"]  # calling several experts beats the best one alone
    loaded = load_artifact(result.path, policy="cascade").policy
    assert loaded.ante_policy_.k_ == 15 and tuple(loaded.get_params()["ex_ante_params"]) == ("k=15",)
