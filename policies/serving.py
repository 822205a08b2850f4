"""A policy trained on a routing matrix, serving the live experts of a deployment.

An artifact scores the models of the matrix it was trained on (``meta/llama-3.1-70b``, ...);
a deployment has experts of its own (``smollm2-135m``, ...). The config's ``expert_map`` says
which model each expert stands for: ``{model: expert}``. ``MappedPolicy`` predicts the models'
quality with the trained policy and gives each expert the mean predicted quality of the models
mapped to it. Experts that no model maps to are not candidates of this policy; costs, sizes,
context windows and release dates are the live experts' own (from config).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from policies.base import Policy
from policies.costs import CostModel
from router.errors import PolicyError
from router.types import ExpertInfo


def check_expert_map(expert_map: Mapping[str, str], models: Sequence[str], experts: Sequence[ExpertInfo],
                     *, policy: str) -> None:
    """Every key must be a model the policy knows and every value a live expert."""
    if not isinstance(expert_map, Mapping) or not expert_map:
        raise PolicyError(f"policy {policy!r}: expert_map must map at least one of the artifact's models to an expert; "
                          f"models: {list(models)}")
    unknown_models = sorted(m for m in expert_map if m not in models)
    if unknown_models:
        raise PolicyError(f"policy {policy!r}: expert_map names models the artifact was not trained on: {unknown_models}; "
                          f"it knows {list(models)}")
    live = {e.name for e in experts}
    unknown_experts = sorted({x for x in expert_map.values() if x not in live})
    if unknown_experts:
        raise PolicyError(f"policy {policy!r}: expert_map maps to experts this deployment does not have: {unknown_experts}; "
                          f"experts: {sorted(live)}")


class MappedPolicy(Policy):
    """Wraps a fitted policy; columns are live experts, predictions come from the mapped models."""

    requires_training = False

    def __init__(self, inner: Policy, experts: Sequence[ExpertInfo], expert_map: Mapping[str, str]) -> None:
        self.inner = inner
        self.experts = experts
        self.expert_map = expert_map
        inner._check_fitted()
        check_expert_map(expert_map, inner.expert_names, experts, policy=inner.name)
        self.name = inner.name
        self.version = inner.version
        self.fixed_lambda = inner.fixed_lambda
        targets = set(expert_map.values())
        self.experts_ = [e for e in experts if e.name in targets]
        models = inner.expert_names
        # (n_models × n_experts) averaging matrix: expert quality = mean over its mapped models
        weights = np.zeros((len(models), len(self.experts_)))
        for j, expert in enumerate(self.experts_):
            cols = [models.index(m) for m, x in expert_map.items() if x == expert.name]
            weights[cols, j] = 1.0 / len(cols)
        self.weights_ = weights
        self.cost_model_ = CostModel.from_prices(self.experts_)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.inner.predict_quality(prompts), dtype=float) @ self.weights_

    def propensities(self, utility, feasible):
        return self.inner.propensities(utility, feasible)

    def choose(self, utility, probs, feasible):
        return self.inner.choose(utility, probs, feasible)
