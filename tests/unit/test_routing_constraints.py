"""User-weighted constraints (Tryage's flags) and hard limits in the shared decision rule, and the
Pareto front; parsing of the new ``expertmux`` body fields."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidRequestError, NoCandidateError
from core.types import ExpertInfo, RouteRequest, RoutingOptions
from policies import create_policy
from policies.constraints import constraint_penalties, pareto_indices
from router.request.protocol import parse_chat_request

EXPERTS = [  # equal priors: only the constraints tell them apart
    ExpertInfo("old-small", params_b=1.0, release_date="2022-01-01", prior_quality=0.5, input_usd_per_mtok=1, output_usd_per_mtok=1),
    ExpertInfo("new-large", params_b=100.0, release_date="2025-01-01", prior_quality=0.5, input_usd_per_mtok=1, output_usd_per_mtok=1),
    ExpertInfo("unknown", prior_quality=0.5, input_usd_per_mtok=1, output_usd_per_mtok=1),
]


def prior(quality=(0.5, 0.5, 0.5)):
    experts = [ExpertInfo(**{**{f: getattr(e, f) for f in e.__slots__}, "prior_quality": q}) for e, q in zip(EXPERTS, quality)]
    return create_policy("prior").fit(None, experts=experts)


def req(latency=None, **options) -> RouteRequest:
    return RouteRequest(prompt="p", prompt_tokens=10, max_completion_tokens=10, options=RoutingOptions(**options),
                        expected_latency_s=latency)


def test_size_weight_prefers_small_experts():
    p = prior((0.5, 0.6, 0.5))
    assert p.decide(req()).expert == "new-large"
    d = p.decide(req(size_weight=0.1))  # 100× parameters = 2 decades = 0.2 points
    assert d.expert == "old-small" and "user-weighted" in d.reason
    # an unknown size counts as the mean of the known ones (log10 1 and 100 → 1 decade)
    pen = constraint_penalties(req(size_weight=0.1), EXPERTS, np.full(3, np.nan))
    np.testing.assert_allclose(pen, [0.0, 0.2, 0.1])


def test_recency_weight_prefers_recent_experts():
    p = prior((0.6, 0.5, 0.5))
    assert p.decide(req()).expert == "old-small"
    assert p.decide(req(recency_weight=0.05)).expert == "new-large"  # 3 years older = 0.15 points


def test_latency_weight_uses_the_services_estimates():
    p = prior((0.6, 0.5, 0.5))
    fast = {"old-small": 3.0, "new-large": 0.5, "unknown": 1.0}
    assert p.decide(req(latency=fast)).expert == "old-small"  # no weight: latency plays no part
    assert p.decide(req(latency=fast, latency_weight=0.1)).expert == "new-large"
    assert p.decide(req(latency_weight=0.1)).expert == "old-small"  # no estimates: nothing to weigh


def test_hard_limits():
    p = prior((0.6, 0.7, 0.5))
    assert p.decide(req(max_latency_s=1.0, latency={"old-small": 0.2, "new-large": 2.0})).expert == "old-small"
    assert p.decide(req(min_release_date="2024-01-01")).expert == "new-large"
    d = p.decide(req(min_release_date="2024-01-01", max_params_b=10))
    assert d.expert == "unknown"  # unknown date and size pass the limits; the two known ones do not
    with pytest.raises(NoCandidateError, match="min_release_date=2030-01-01"):
        p.decide(req(min_release_date="2030-01-01", allowed_experts=["old-small", "new-large"]))
    with pytest.raises(NoCandidateError, match="max_latency_s=0.1"):
        p.decide(req(max_latency_s=0.1, latency={"old-small": 1.0, "new-large": 1.0, "unknown": 1.0}))


def test_pareto_front():
    q = np.array([0.5, 0.7, 0.6, 0.7])
    c = np.array([1.0, 3.0, 3.0, 2.0])
    assert pareto_indices(q, c, np.ones(4, bool)) == [0, 3]
    assert pareto_indices(q, c, np.array([True, True, True, False])) == [0, 1]
    p = create_policy("prior").fit(None, experts=[
        ExpertInfo("cheap", prior_quality=0.4, input_usd_per_mtok=0.1, output_usd_per_mtok=0.1),
        ExpertInfo("mid", prior_quality=0.6, input_usd_per_mtok=1, output_usd_per_mtok=1),
        ExpertInfo("dominated", prior_quality=0.5, input_usd_per_mtok=2, output_usd_per_mtok=2),
        ExpertInfo("best", prior_quality=0.9, input_usd_per_mtok=5, output_usd_per_mtok=5)])
    out = p.pareto_front(req(), lambda_=0.0)
    assert out["front"] == ["cheap", "mid", "best"] and out["chosen"] == "best"
    assert [e["expert"] for e in out["experts"]] == ["cheap", "mid", "dominated", "best"]
    assert p.pareto_front(req(), lambda_=1e6)["chosen"] == "cheap"
    assert p.pareto_front(req(allowed_experts=["dominated", "mid"]))["front"] == ["mid"]


def test_new_routing_options_parse_and_validate():
    body = b'{"model": "expertmux/tryage", "messages": [{"role": "user", "content": "hi"}], "expertmux": ' \
           b'{"lambda": 100, "size_weight": 0.1, "latency_weight": 0.2, "recency_weight": 0.3, "max_latency_s": 2, ' \
           b'"min_release_date": "2024-06-01", "max_params_b": 10}}'
    opts = parse_chat_request(body).expertmux.to_options()
    assert (opts.lambda_, opts.size_weight, opts.latency_weight, opts.recency_weight) == (100, 0.1, 0.2, 0.3)
    assert (opts.max_latency_s, opts.min_release_date, opts.max_params_b) == (2, "2024-06-01", 10)
    for bad in (b'"size_weight": -1', b'"min_release_date": "soon"', b'"max_latency_s": 0', b'"recency_weight": "x"'):
        with pytest.raises(InvalidRequestError, match="expertmux"):
            parse_chat_request(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "expertmux": {' + bad + b"}}")
