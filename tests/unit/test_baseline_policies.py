"""Baseline policies under the sklearn-style contract, fitted on a synthetic routing matrix."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from core.errors import PolicyError  # noqa: E402
from core.types import ExpertInfo, RouteRequest  # noqa: E402
from policies import create_policy  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import configure_encoders  # noqa: E402
from tests.support.routing_matrix import make_frame  # noqa: E402

LEARNED = {"knn": {"k_grid": (3, 9)}, "mlp": {"epochs": 30}, "mf": {"epochs": 30}}
SIMPLE = ["random", "cheapest", "best_single"]


@pytest.fixture(scope="module")
def data():
    return RoutingData.from_frame(make_frame(n_per_task=50, nan_fraction=0.1, seed=3), name="synthetic")


@pytest.fixture(autouse=True)
def _no_disk_cache():
    configure_encoders(cache_dir=None)


def make(name):
    params = dict(LEARNED.get(name, {}))
    if name in LEARNED:
        params["encoder"] = "hashing"
    return create_policy(name, **params)


def split(data):
    return data.subset(data.rows_of("train")), data.subset(data.rows_of("test"))


@pytest.mark.parametrize("name", [*SIMPLE, *LEARNED, "oracle"])
def test_sklearn_contract(name, data):
    if name in ("mlp", "mf"):
        pytest.importorskip("torch")
    p = make(name)
    params = p.get_params()
    q = p.clone()
    assert q is not p and q.get_params() == params and not hasattr(q, "experts_")
    assert not [a for a in vars(p) if a.endswith("_")]  # __init__ learns nothing
    train, _ = split(data)
    assert p.fit(train) is p
    learned = [a for a in vars(p) if a not in params]
    assert learned and all(a.endswith("_") for a in learned), learned
    assert p.get_params() == params  # fitting does not touch hyperparameters
    assert p.expert_names == data.models  # the matrix's models became the experts


@pytest.mark.parametrize("name", [*SIMPLE, *LEARNED])
def test_decisions_use_only_candidates_and_match_decide(name, data):
    if name in ("mlp", "mf"):
        pytest.importorskip("torch")
    train, test = split(data)
    p = make(name).fit(train)
    lambdas = np.r_[0.0, np.logspace(-2, 6, 20)]
    choices = p.decide_many(test.prompts, lambdas, candidates=test.known)
    assert choices.shape == (len(lambdas), len(test))
    rows = np.arange(len(test))
    assert test.known[rows[None, :], choices].all()  # never a model with an unknown outcome
    if name != "random":  # the vectorised rule is the per-request rule
        full = make(name).fit(train)
        for i in range(5):
            single = full.decide_many([test.prompts[i]], [0.0])[0, 0]
            d = full.decide(RouteRequest(prompt=test.prompts[i], prompt_tokens=10, max_completion_tokens=10), lambda_=0.0)
            assert d.expert == full.expert_names[single]


def test_random_is_uniform_among_candidates(data):
    p = create_policy("random", random_state=1).fit(data)
    cand = np.zeros((3000, 3), dtype=bool)
    cand[:, [0, 2]] = True
    picks = p.choose_many(np.zeros((3000, 3)), np.ones((3000, 3)), [0.0, 5.0], cand)
    assert set(np.unique(picks)) == {0, 2} and (picks[0] == picks[1]).all()  # λ plays no part
    assert abs((picks[0] == 0).mean() - 0.5) < 0.05


def test_cheapest_and_best_single(data):
    train, test = split(data)
    cheap = create_policy("cheapest").fit(train)
    assert (cheap.decide_many(test.prompts, [0.0])[0] == 0).all()  # "small" has the lowest price
    best = create_policy("best_single").fit(train)
    means = np.nanmean(train.scores, axis=0)
    assert (best.decide_many(test.prompts, [0.0])[0] == int(np.argmax(means))).all()
    assert best.mean_quality_ == pytest.approx(means)


def test_knn_chooses_k_by_cross_validation(data):
    train, _ = split(data)
    p = create_policy("knn", k_grid=(1, 5, 25), encoder="hashing").fit(train)
    assert p.k_ in (1, 5, 25) and set(p.cv_mse_) == {1, 5, 25}
    assert p.k_ == min(p.cv_mse_, key=p.cv_mse_.get)
    assert create_policy("knn", k=7, encoder="hashing").fit(train).k_ == 7


@pytest.mark.parametrize("name", list(LEARNED))
def test_learned_policies_read_the_prompt(name, data):
    """On the synthetic set the best model depends on the task named in the prompt."""
    if name in ("mlp", "mf"):
        pytest.importorskip("torch")
    train, test = split(data)
    p = make(name).fit(train)
    chosen = p.decide_many(test.prompts, [0.0], candidates=test.known)[0]
    routed = np.nanmean(test.scores[np.arange(len(test)), chosen])
    best_single = np.nanmax(np.nanmean(test.scores, axis=0))
    assert routed > best_single + 0.05


def test_fit_on_given_experts_restricts_the_matrix(data):
    experts = [ExpertInfo("large", 2.0, 2.0), ExpertInfo("small", 0.1, 0.1)]
    p = create_policy("knn", k=5, encoder="hashing").fit(data, experts=experts)
    assert p.expert_names == ["large", "small"] and p.predict_quality(["compute sum"]).shape == (1, 2)
    with pytest.raises(PolicyError, match="no outcomes for"):
        create_policy("best_single").fit(data, experts=[ExpertInfo("nope")])


def test_service_path_still_works_and_learned_policies_need_data():
    experts = [ExpertInfo("a", 1, 1, prior_quality=0.2), ExpertInfo("b", 2, 2, prior_quality=0.9)]
    req = RouteRequest(prompt="hi", prompt_tokens=5, max_completion_tokens=5)
    assert create_policy("best_single").fit(None, experts=experts).decide(req).expert == "b"  # priors
    with pytest.raises(PolicyError, match="learns from a routing matrix"):
        create_policy("knn").fit(None, experts=experts)
    with pytest.raises(PolicyError, match="needs experts"):
        create_policy("random").fit(None)


def test_oracle_is_evaluation_only(data):
    p = create_policy("oracle").fit(data)
    with pytest.raises(PolicyError, match="evaluation-only"):
        p.predict_quality(["x"])
    scores = np.array([[1.0, 1.0, 0.0], [0.0, np.nan, 1.0]])
    costs = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 9.0]])
    assert p.decide_labeled(scores, costs, [0.0]).tolist() == [[1, 2]]  # best, cheapest among equals
    assert p.decide_labeled(scores, costs, [1.0]).tolist() == [[1, 0]]  # λ=1: 0 − 1 > 1 − 9
