"""Exploration: propensities as documented, draws that follow them, reproducible under a seed,
and decisions that log every candidate's propensity and the chosen one's."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from core.config import AppConfig, ExplorationConfig, PolicyConfig
from core.types import Decision, ExpertInfo, RouteRequest
from router.lifecycle.exploration import Explorer, exploration_probs
from router.lifecycle.policy_set import PolicySet

EXPERTS = [ExpertInfo("a", prior_quality=0.9), ExpertInfo("b", prior_quality=0.5), ExpertInfo("c", prior_quality=0.1)]


def decision() -> Decision:
    return Decision(expert="a", policy="prior", policy_version="builtin", scores={"a": 0.9, "b": 0.5, "c": 0.1},
                    propensities={"a": 1.0, "b": 0.0, "c": 0.0}, ranking=["a", "b", "c"], reason="argmax")


def test_epsilon_propensities_and_draw_frequencies():
    ex = Explorer(ExplorationConfig(method="epsilon", epsilon=0.3, seed=7))
    first = ex.apply(decision())
    assert first.propensities == pytest.approx({"a": 0.8, "b": 0.1, "c": 0.1})
    rec = first.as_record()
    assert rec["propensity"] == pytest.approx(first.propensities[first.expert]) and "ε-greedy" in rec["reason"]
    draws = [ex.apply(decision()) for _ in range(6000)]
    freq = Counter(d.expert for d in draws)
    for name, p in {"a": 0.8, "b": 0.1, "c": 0.1}.items():
        assert freq[name] / len(draws) == pytest.approx(p, abs=0.02)
    for d in draws[:50]:  # the chosen expert leads the fallback ranking; the rest keep their order
        assert d.ranking[0] == d.expert and sorted(d.ranking) == ["a", "b", "c"]


def test_softmax_follows_utilities():
    cfg = ExplorationConfig(method="softmax", temperature=0.2, seed=1)
    u = np.array([0.9, 0.5, 0.1])
    expected = np.exp(u / 0.2) / np.exp(u / 0.2).sum()
    assert exploration_probs(u, np.array([1.0, 0, 0]), cfg) == pytest.approx(expected)
    ex = Explorer(cfg)
    draws = Counter(ex.apply(decision()).expert for _ in range(6000))
    for j, name in enumerate("abc"):
        assert draws[name] / 6000 == pytest.approx(expected[j], abs=0.02)


def test_stochastic_policy_keeps_its_propensities_under_softmax():
    d = decision()
    d.propensities = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    out = Explorer(ExplorationConfig(method="softmax", seed=0)).apply(d)
    assert out.expert == "a" and out.propensities == pytest.approx(d.propensities)


def test_same_seed_same_draws_and_single_candidate_untouched():
    cfg = ExplorationConfig(method="epsilon", epsilon=0.5, seed=42)
    a, b = Explorer(cfg), Explorer(cfg)
    assert [a.apply(decision()).expert for _ in range(200)] == [b.apply(decision()).expert for _ in range(200)]
    one = Decision(expert="a", policy="p", policy_version="v", scores={"a": 1.0}, propensities={"a": 1.0}, ranking=["a"])
    assert a.apply(one) is one and one.as_record()["propensity"] == 1.0


def test_config_and_policy_set_wiring():
    cfg = AppConfig.model_validate({"experts": [{"name": "a", "backend": "remote", "model": "m"}],
                                    "policy": {"exploration": {"method": "softmax", "temperature": 0.05}}})
    assert cfg.policy.exploration.method == "softmax" and cfg.policy.exploration.epsilon == 0.1
    assert AppConfig.model_validate({"experts": [{"name": "a", "backend": "remote", "model": "m"}]}).policy.exploration is None
    with pytest.raises(ValueError):
        ExplorationConfig(method="epsilon", epsilon=1.5)
    ps = PolicySet(PolicyConfig.model_validate({"active": "strongest", "exploration": {"method": "epsilon", "epsilon": 1.0,
                                                                                     "seed": 3}}), EXPERTS)
    d = ps.explorer.apply(ps.get("strongest").decide(RouteRequest(prompt="hi", prompt_tokens=1, max_completion_tokens=8)))
    assert d.propensities == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert PolicySet(PolicyConfig(), EXPERTS).explorer is None
