"""The shared decision rule and the simple policies (no network, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import NoCandidateError, PolicyError
from core.types import ExpertInfo, RouteRequest, RoutingOptions
from policies import available_policies, create_policy

EXPERTS = [
    ExpertInfo("small", input_usd_per_mtok=0.1, output_usd_per_mtok=0.2, params_b=1, prior_quality=0.3, context_window=4096),
    ExpertInfo("medium", input_usd_per_mtok=1.0, output_usd_per_mtok=2.0, params_b=8, prior_quality=0.6, context_window=8192),
    ExpertInfo("large", input_usd_per_mtok=10.0, output_usd_per_mtok=30.0, params_b=70, prior_quality=0.8, context_window=2048),
]


def req(prompt_tokens=100, completion=100, **options) -> RouteRequest:
    return RouteRequest(prompt="p", prompt_tokens=prompt_tokens, max_completion_tokens=completion, options=RoutingOptions(**options))


def fitted(name, **params):
    return create_policy(name, **params).fit(None, experts=EXPERTS)


def test_registry_knows_the_simple_policies():
    assert {"fixed", "random", "cheapest", "strongest", "prior"} <= set(available_policies())
    with pytest.raises(PolicyError, match="unknown policy 'nope'"):
        create_policy("nope")
    with pytest.raises(PolicyError, match="bad parameters"):
        create_policy("fixed", expret="x")


def test_sklearn_style_params_and_clone():
    p = create_policy("prior", default_quality=0.1)
    assert p.get_params() == {"default_quality": 0.1}
    q = p.clone()
    assert q is not p and q.get_params() == p.get_params() and not hasattr(q, "experts_")
    assert p.fit(None, experts=EXPERTS) is p
    assert all(not a.endswith("_") or a.startswith("_") for a in vars(create_policy("prior")))  # nothing learned in __init__
    with pytest.raises(PolicyError, match="no parameter"):
        p.set_params(bogus=1)


def test_strongest_cheapest_fixed():
    assert fitted("strongest").decide(req(), lambda_=1e9).expert == "large"  # λ ignored
    assert fitted("cheapest").decide(req()).expert == "small"
    d = fitted("fixed", expert="medium").decide(req())
    assert d.expert == "medium" and d.ranking[0] == "medium" and set(d.ranking) == {"small", "medium", "large"}
    with pytest.raises(PolicyError, match="unknown expert"):
        fitted("fixed", expert="nope")


def test_prior_trades_quality_against_cost_with_lambda():
    p = fitted("prior")
    assert p.decide(req(), lambda_=0).expert == "large"
    # large costs (100*10 + 100*30)/1e6 = 0.004 USD; medium 0.0003: λ=200 makes medium's utility higher
    d = p.decide(req(), lambda_=200)
    assert d.expert == "medium"
    assert d.scores["large"] == pytest.approx(0.8 - 200 * 0.004)
    assert d.propensities == {"small": 0.0, "medium": 1.0, "large": 0.0}
    assert p.decide(req(lambda_=0.0), lambda_=200).expert == "large"  # per-request λ wins


def test_constraints_filter_candidates():
    p = fitted("strongest")
    assert p.decide(req(allowed_experts=["small", "medium"])).expert == "medium"
    assert p.decide(req(max_params_b=5)).expert == "small"
    assert p.decide(req(max_cost_usd=0.001)).expert == "medium"
    assert p.decide(req(), unavailable=frozenset({"large"})).expert == "medium"
    assert p.decide(req(prompt_tokens=3000)).expert == "medium"  # over large's 2048-token window
    d = p.decide(req(allowed_experts=["small"]))
    assert d.ranking == ["small"] and set(d.propensities) == {"small"}


def test_no_candidate_error_explains_why():
    with pytest.raises(NoCandidateError, match=r"max_cost_usd=1e-09.*unavailable experts: \['small'\]"):
        fitted("strongest").decide(req(max_cost_usd=1e-9), unavailable=frozenset({"small"}))


def test_random_is_uniform_with_logged_propensities():
    p = fitted("random", random_state=0)
    picks = [p.decide(req()).expert for _ in range(600)]
    counts = np.array([picks.count(n) for n in ("small", "medium", "large")])
    assert counts.min() > 150  # each ≈ 200
    d = p.decide(req(allowed_experts=["small", "large"]))
    assert d.propensities == {"small": 0.5, "large": 0.5}
    assert d.ranking[0] == d.expert


def test_decide_before_fit_is_an_error():
    with pytest.raises(PolicyError, match="not fitted"):
        create_policy("prior").decide(req())
