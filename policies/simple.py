"""Policies that need no training data: they read the experts' configured prices and priors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import PolicyError
from policies.base import Policy


class FixedPolicy(Policy):
    """Always the configured expert (others stay in the ranking as fallbacks)."""

    name = "fixed"
    fixed_lambda = 0.0

    def __init__(self, expert: str | None = None) -> None:
        self.expert = expert

    def _fit(self, train) -> None:
        if self.expert is None:
            raise PolicyError("policy 'fixed' needs the parameter 'expert'")
        if self.expert not in self.expert_names:
            raise PolicyError(f"policy 'fixed': unknown expert {self.expert!r}; known: {self.expert_names}")

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        row = np.array([1.0 if n == self.expert else 0.0 for n in self.expert_names])
        return np.tile(row, (len(prompts), 1))



class RandomPolicy(Policy):
    """Uniform choice among feasible experts; propensity 1/k each (the exploration baseline)."""

    name = "random"

    def __init__(self, random_state: int | None = None) -> None:
        self.random_state = random_state

    def _fit(self, train) -> None:
        self.rng_ = np.random.default_rng(self.random_state)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(prompts), len(self.experts_)))

    def propensities(self, utility, feasible):
        return feasible / feasible.sum()

    def choose(self, utility, probs, feasible):
        return int(self.rng_.choice(len(probs), p=probs))

    def choose_many(self, quality, cost, lambdas, candidates=None):
        """One uniform draw among each prompt's candidates, the same for every λ (λ plays no part)."""
        n, m = quality.shape
        lams = np.atleast_1d(np.asarray(lambdas, dtype=float))
        if candidates is None:
            candidates = np.ones((n, m), dtype=bool)
        counts = candidates.sum(axis=1)
        if not counts.all():
            raise PolicyError("random: some prompts have no candidate expert")
        pick = np.floor(self.rng_.random(n) * counts).astype(np.int64)  # k-th candidate of each row
        ranks = np.cumsum(candidates, axis=1) - 1
        chosen = np.argmax(candidates & (ranks == pick[:, None]), axis=1)
        return np.tile(chosen, (len(lams), 1))


class CheapestPolicy(Policy):
    """The lowest expected cost for this request (ties: the earlier expert in config)."""

    name = "cheapest"
    fixed_lambda = 1.0  # utility = −cost: only the cost ordering matters

    def __init__(self) -> None:
        pass

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(prompts), len(self.experts_)))


class PriorPolicy(Policy):
    """Configured prior quality per expert, traded against expected cost with λ.

    The embedded default: with λ = 0 it is ``strongest``; a larger λ moves long prompts (which
    cost more) to cheaper experts.
    """

    name = "prior"

    def __init__(self, default_quality: float = 0.5) -> None:
        self.default_quality = default_quality

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        row = np.array([e.prior_quality if e.prior_quality is not None else self.default_quality for e in self.experts_])
        return np.tile(row, (len(prompts), 1))


class BestSinglePolicy(PriorPolicy):
    """The expert with the best mean quality on the training matrix (λ trades it against cost).

    Learns one number per expert, the mean training outcome, and otherwise behaves like
    ``prior``: with λ = 0 every query goes to the best single model; a larger λ moves queries to
    cheaper experts by their mean quality alone, never by what the query asks. Without training
    data it falls back to the configured priors.
    """

    name = "best_single"

    def _fit(self, train) -> None:
        prior = np.array([e.prior_quality if e.prior_quality is not None else self.default_quality for e in self.experts_])
        if train is None:
            self.mean_quality_ = prior
            return
        known = ~np.isnan(train.scores)
        sums = np.where(known, train.scores, 0.0).sum(axis=0)
        counts = known.sum(axis=0)
        self.mean_quality_ = np.where(counts > 0, sums / np.maximum(counts, 1), prior)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        return np.tile(self.mean_quality_, (len(prompts), 1))


class StrongestPolicy(PriorPolicy):
    """The highest configured prior quality, cost ignored."""

    name = "strongest"
    fixed_lambda = 0.0
