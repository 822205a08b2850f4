"""The contract every routing policy keeps, seed policies included (synthetic matrix, hashing encoder).

fit returns self; clone gives an unfitted twin; a seed makes fitting deterministic; an expert
becoming unavailable is never chosen (and none left is a clear error); sweeping λ up never
raises the cost of what is chosen.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")
pytest.importorskip("torch", reason="the ml extra is not installed")

from core.errors import NoCandidateError  # noqa: E402
from core.types import RouteRequest  # noqa: E402
from policies import available_policies, create_policy  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import configure_encoders  # noqa: E402
from policies.registry import SEED_POLICIES, get_policy_class  # noqa: E402
from tests.support.routing_matrix import make_frame  # noqa: E402

# Small, fast settings; everything else at its default.
FAST = {
    "knn": {"k_grid": (3, 9)},
    "mlp": {"epochs": 20},
    "mf": {"epochs": 20},
    "coe": {"cv_folds": 3},
    "coe_cluster": {"cv_folds": 3, "n_clusters": 4},
    "tryage": {"cv_folds": 3, "alphas": (1.0, 10.0), "temperatures": (1.0, 0.5)},
    "graphrouter": {"epochs": 25, "patience": 5, "hidden": 16},
    "fixed": {"expert": "mid"},
}
SERVABLE = [n for n in available_policies() if not get_policy_class(n).uses_labels]
LAMBDAS = np.r_[0.0, np.logspace(-1, 7, 40)]


@pytest.fixture(scope="module")
def data():
    configure_encoders(cache_dir=None)
    return RoutingData.from_frame(make_frame(n_per_task=40, seed=5), name="synthetic")


@pytest.fixture(scope="module")
def train(data):
    return data.subset(data.rows_of("train"))


@pytest.fixture(scope="module")
def test_prompts(data):
    return data.subset(data.rows_of("test")).prompts[:25]


def make(name, **extra):
    params = dict(FAST.get(name, {}))
    cls = get_policy_class(name)
    if "encoder" in cls._param_names():
        params["encoder"] = "hashing"
    if "random_state" in cls._param_names():
        params.setdefault("random_state", 7)
    params.update(extra)
    return create_policy(name, **params)


@pytest.fixture(scope="module")
def fitted(train):
    configure_encoders(cache_dir=None)
    return {name: make(name).fit(train) for name in SERVABLE}


def request(prompt: str, **kw) -> RouteRequest:
    return RouteRequest(prompt=prompt, prompt_tokens=max(1, len(prompt) // 4), max_completion_tokens=64, **kw)


def test_the_seed_policies_are_registered():
    assert set(SEED_POLICIES) <= set(available_policies())
    assert all(get_policy_class(n).requires_training for n in SEED_POLICIES)


@pytest.mark.parametrize("name", SERVABLE)
def test_fit_returns_self_and_clone_is_unfitted(name, train):
    p = make(name)
    params = p.get_params()
    assert not [a for a in vars(p) if a.endswith("_")]  # __init__ learns nothing
    twin = p.clone()
    assert twin is not p and twin.get_params() == params and not hasattr(twin, "experts_")
    assert p.fit(train) is p
    assert p.get_params() == params  # fitting leaves hyperparameters alone
    learned = [a for a in vars(p) if a not in params]
    assert learned and all(a.endswith("_") for a in learned), learned
    assert not hasattr(twin, "experts_")  # the clone shares no state


@pytest.mark.parametrize("name", SERVABLE)
def test_deterministic_with_a_seed(name, train, test_prompts, fitted):
    if name == "random":
        a, b = make(name).fit(train), make(name).fit(train)
        assert (a.decide_many(test_prompts, [0.0]) == b.decide_many(test_prompts, [0.0])).all()
        return
    again = make(name).fit(train)
    np.testing.assert_allclose(fitted[name].predict_quality(test_prompts), again.predict_quality(test_prompts), atol=1e-6)


@pytest.mark.parametrize("name", SERVABLE)
def test_an_unavailable_expert_is_never_chosen(name, fitted, test_prompts):
    p = fitted[name]
    experts = p.expert_names
    for prompt in test_prompts[:8]:
        first = p.decide(request(prompt))
        assert first.expert in experts and first.ranking[0] == first.expert
        second = p.decide(request(prompt), unavailable=frozenset({first.expert}))
        assert second.expert != first.expert and first.expert not in second.ranking
        assert first.expert not in second.scores and first.expert not in second.propensities
        assert abs(sum(second.propensities.values()) - 1.0) < 1e-9
    with pytest.raises(NoCandidateError, match="unavailable experts"):
        p.decide(request(test_prompts[0]), unavailable=frozenset(experts))


@pytest.mark.parametrize("name", SERVABLE)
def test_offline_candidates_play_the_role_of_availability(name, fitted, test_prompts):
    p = fitted[name]
    cand = np.ones((len(test_prompts), len(p.expert_names)), dtype=bool)
    cand[:, 0] = False  # the first expert is down for every query
    cand[::2, 1] = False  # and the second for every other query
    choices = p.decide_many(test_prompts, LAMBDAS, candidates=cand)
    rows = np.arange(len(test_prompts))
    assert cand[rows[None, :], choices].all()


@pytest.mark.parametrize("name", SERVABLE)
def test_lambda_sweep_is_monotone_in_cost(name, fitted, test_prompts):
    p = fitted[name]
    choices = p.decide_many(test_prompts, LAMBDAS)
    cost = p.predict_query_cost(test_prompts)
    chosen_cost = cost[np.arange(len(test_prompts))[None, :], choices]  # (n_lambdas, n)
    # per query, a higher willingness-to-pay penalty never picks a more expensive expert
    assert (np.diff(chosen_cost, axis=0) <= 1e-12).all()
    if p.fixed_lambda is None and name not in ("random", "fixed"):
        assert chosen_cost[-1].mean() <= chosen_cost[0].mean()
    # and the single-request rule agrees with the vectorised one at λ = 0 (a cascade's decide is its
    # first call, cheap-first where escalating may pay: not the one-shot rule decide_many sweeps)
    if name != "random" and not hasattr(p, "next_step"):
        for i, prompt in enumerate(test_prompts[:4]):
            d = p.decide(RouteRequest(prompt=prompt, prompt_tokens=10, max_completion_tokens=10), lambda_=0.0)
            assert d.expert == p.expert_names[choices[0, i]]
