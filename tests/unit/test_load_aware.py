"""Expected latency from observed service times and queues; the decision adjusted for it."""

from __future__ import annotations

import pytest

from core.types import Decision
from router.request.load import LatencyTracker, adjust_for_load


def decision(**overrides) -> Decision:
    base = dict(expert="a", policy="prior", policy_version="builtin", scores={"a": 0.8, "b": 0.7},
                propensities={"a": 1.0, "b": 0.0}, ranking=["a", "b"], reason="r")
    return Decision(**{**base, **overrides})


def test_service_time_excludes_queueing_and_queue_scales_expectation():
    t = LatencyTracker(default_service_s=2.0)
    assert t.expected_s("a", in_flight=0, slots=1) == 2.0  # nothing observed yet
    t.observe("a", latency_s=3.0, queue_at_start=2, slots=1)  # waited for two others: service 1 s
    assert t.service_s("a") == pytest.approx(1.0)
    assert t.expected_s("a", in_flight=4, slots=1) == pytest.approx(5.0)
    assert t.expected_s("a", in_flight=4, slots=8) == pytest.approx(1.5)
    assert t.service_s("unseen") == pytest.approx(1.0)  # like the others until measured
    t.set_server_queue("a", running=3, waiting=7)  # a server's own count (vLLM) wins when larger
    assert t.queue("a", in_flight=1) == 10


def test_latency_term_reranks_deterministic_decisions():
    d = adjust_for_load(decision(), {"a": 5.0, "b": 0.5}, weight=0.1, slo_s=None)
    assert d.expert == "b" and d.ranking == ["b", "a"]
    assert d.scores == {"a": pytest.approx(0.3), "b": pytest.approx(0.65)}
    assert d.propensities == {"a": 0.0, "b": 1.0} and d.expected_latency_s == {"a": 5.0, "b": 0.5}
    assert "load-aware" in d.reason and d.as_record()["expected_latency_s"]["a"] == 5.0
    assert adjust_for_load(decision(), {"a": 5.0, "b": 0.5}, weight=0.01, slo_s=None).expert == "a"  # small weight: quality wins


def test_slo_steers_around_slow_experts_but_keeps_them_as_fallbacks():
    d = adjust_for_load(decision(), {"a": 5.0, "b": 0.5}, weight=0.0, slo_s=2.0)
    assert d.expert == "b" and d.ranking == ["b", "a"]
    both_slow = adjust_for_load(decision(), {"a": 5.0, "b": 4.0}, weight=0.0, slo_s=2.0)
    assert both_slow.expert == "a"  # nobody meets the SLO: the policy's order stands


def test_exploration_draws_are_left_alone():
    explore = decision(propensities={"a": 0.5, "b": 0.5})
    assert adjust_for_load(explore, {"a": 50.0, "b": 0.5}, weight=1.0, slo_s=1.0) is explore
    assert adjust_for_load(decision(), {"a": 5.0}, weight=0.0, slo_s=None).expert == "a"  # knob off
