"""The contracts in core are what the concrete policies and backends really offer."""

from __future__ import annotations

import numpy as np

from core.config import ExpertConfig
from core.contracts import ExpertServer, QueryPolicy
from core.types import ExpertInfo, RouteRequest
from experts.backends.remote import RemoteBackend
from policies.registry import create_policy

EXPERTS = [ExpertInfo(name="small", input_usd_per_mtok=0.1, output_usd_per_mtok=0.1, prior_quality=0.3),
           ExpertInfo(name="large", input_usd_per_mtok=5.0, output_usd_per_mtok=5.0, prior_quality=0.9)]


def test_policies_satisfy_the_query_policy_contract():
    policy = create_policy("prior").fit(experts=EXPERTS)
    assert isinstance(policy, QueryPolicy)
    quality = np.asarray(policy.predict_quality(["hello"]))
    assert quality.shape == (1, len(policy.expert_names))
    decision = policy.decide(RouteRequest(prompt="hello", prompt_tokens=3, max_completion_tokens=16), lambda_=0.0)
    assert decision.expert == "large" and set(decision.propensities) <= set(policy.expert_names)


def test_backends_satisfy_the_expert_server_contract():
    backend = RemoteBackend(ExpertConfig(name="r", backend="remote", model="m", endpoint="http://127.0.0.1:9/v1"))
    assert isinstance(backend, ExpertServer)
    assert backend.api_base == "http://127.0.0.1:9/v1" and not backend.is_local
    assert backend.health(timeout=0.2) is False  # nothing listens on port 9


def test_an_object_missing_a_method_is_not_a_policy():
    class Half:
        name = "half"
        version = "0"

        def fit(self, train=None, *, experts=None):
            return self

    assert not isinstance(Half(), QueryPolicy)
