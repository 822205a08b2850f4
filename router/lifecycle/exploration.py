"""Exploration with logged propensities, applied to the decision of whichever policy serves.

Logged traffic is bandit feedback: only the chosen expert's outcome is ever seen. To learn from
it (and to estimate a new policy's value off-policy) the serving policy must sometimes choose
other experts, and the ledger must say with which probability each candidate was chosen:

- ``epsilon``: with probability 1 − ε the policy's own choice, else a uniform draw over the
  candidates, so p(e) = (1 − ε)·p_policy(e) + ε / k;
- ``softmax``: p(e) ∝ exp(utility(e) / temperature) over the candidates' utilities
  (quality − λ·cost, the numbers in ``decision.scores``). A policy that is already stochastic
  (``random``) keeps its own draw and propensities.

The chosen expert is drawn from p, moves to the head of the fallback ranking, and the decision
records every candidate's propensity (``propensities``) and the chosen one's (``propensity``).
A seed makes the draws reproducible (tests, simulations).
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from core.config import ExplorationConfig
from core.types import Decision


def exploration_probs(utility: np.ndarray, base: np.ndarray, cfg: ExplorationConfig) -> np.ndarray:
    """Propensities over k candidates given their utilities and the policy's own propensities."""
    k = len(utility)
    if cfg.method == "epsilon":
        return (1.0 - cfg.epsilon) * base + cfg.epsilon / k
    if base.max() < 1.0:  # already stochastic: its own propensities are the truth
        return base
    z = (utility - utility.max()) / cfg.temperature
    w = np.exp(z)
    return w / w.sum()


class Explorer:
    """Turns a policy's decision into an exploring one (thread-safe, seeded)."""

    def __init__(self, cfg: ExplorationConfig) -> None:
        self.cfg = cfg
        self._rng = np.random.default_rng(cfg.seed)
        self._lock = threading.Lock()

    def apply(self, decision: Decision) -> Decision:
        names = [n for n in decision.ranking if n in decision.scores]
        if len(names) < 2:
            return decision
        utility = np.array([decision.scores[n] for n in names], dtype=float)
        base = np.array([decision.propensities.get(n, 0.0) for n in names], dtype=float)
        if base.sum() <= 0:
            base = np.array([1.0 if n == decision.expert else 0.0 for n in names])
        base = base / base.sum()
        probs = exploration_probs(utility, base, self.cfg)
        if self.cfg.method == "epsilon":
            with self._lock:
                explore = self._rng.random() < self.cfg.epsilon
                pick = int(self._rng.integers(len(names))) if explore else None
            chosen = names[pick] if pick is not None else decision.expert
        elif probs is base:
            chosen = decision.expert
        else:
            with self._lock:
                chosen = names[int(self._rng.choice(len(names), p=probs))]
        ranking = [chosen] + [n for n in decision.ranking if n != chosen]
        how = (f"ε-greedy exploration (ε={self.cfg.epsilon:g})" if self.cfg.method == "epsilon"
               else f"softmax exploration (temperature {self.cfg.temperature:g})")
        return replace(decision, expert=chosen, ranking=ranking, reason=f"{decision.reason}; {how}",
                       propensities={n: round(float(p), 12) for n, p in zip(names, probs)})
