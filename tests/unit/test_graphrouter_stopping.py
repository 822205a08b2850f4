"""GraphRouter stops on what routing reads: the per-query differences between its LLMs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from policies.graphrouter import routing_error  # noqa: E402


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def test_a_constant_per_query_costs_nothing_a_wrong_order_does():
    y = _t([[1, 0], [0, 1], [1, 1]])
    m = torch.ones_like(y)
    right = _t([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    shifted = right + _t([[0.05], [-0.08], [0.3]])  # every query's level moved, its differences kept
    swapped = right[:, [1, 0]]
    assert routing_error(shifted, y, m) == pytest.approx(routing_error(right, y, m), abs=1e-7)
    assert routing_error(swapped, y, m) > routing_error(right, y, m) + 0.3


def test_queries_with_one_known_llm_are_left_out():
    y = _t([[1, 0], [1, 0]])
    p = _t([[0.8, 0.2], [0.0, 0.9]])
    only_first = torch.ones_like(y)
    only_first[1, 1] = 0  # the second query knows one LLM: no difference to judge
    assert routing_error(p, y, only_first) == pytest.approx(routing_error(p[:1], y[:1], torch.ones_like(y[:1])))
    assert routing_error(p[1:], y[1:], only_first[1:]) == float("inf")


def test_training_runs_at_least_min_epochs_before_it_may_stop(monkeypatch):
    """A hold-out loss that only gets worse would stop at the first patience window; the
    warm-up keeps training going until ``min_epochs``, then stops ``patience`` epochs later."""
    from policies import graphrouter
    from policies.data import RoutingData

    rng = np.random.default_rng(0)
    n = 120
    prompts = [f"question {i} about {'maths' if i % 2 else 'poems'}" for i in range(n)]
    scores = rng.integers(0, 2, size=(n, 2)).astype(float)
    data = RoutingData(prompts=prompts, scores=scores, models=["expert-a", "expert-b"],
                       split=np.array(["train"] * n, dtype=object))
    worse = iter(np.linspace(0.1, 1.0, 1000))
    monkeypatch.setattr(graphrouter.GraphRouterPolicy, "_routing_loss", lambda self, *a: float(next(worse)))
    policy = graphrouter.GraphRouterPolicy(encoder="hashing", hidden=8, epochs=200, min_epochs=50, eval_every=5,
                                           patience=20, val_fraction=0.2)
    policy.fit(data)
    assert policy.train_stats_["epochs"] == 50 + 20  # best at 50 (its first reading), stopped four readings on
