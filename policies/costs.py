"""Per-query cost prediction from the prompt alone, in the units λ is expressed in.

Three sources, in order of preference:

* ``learned``: the training matrix has cost columns → per model, least squares of the observed
  cost on ``[1, prompt characters]`` (an answer's cost grows with the prompt it answers);
* ``prices``: no cost columns but the experts have prices → ``ceil(chars/4)`` prompt tokens at
  the input price plus ``completion_tokens`` at the output price;
* ``uniform``: a quality-only matrix → every model costs 1 per query.

The live service keeps using ``Policy.predict_cost(prompt_tokens, completion_tokens)``, which
knows the real token counts; this model serves decisions made from prompts alone (evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.types import ExpertInfo

CHARS_PER_TOKEN = 4


def prompt_chars(prompts: Sequence[str]) -> np.ndarray:
    return np.fromiter((len(p) for p in prompts), dtype=float, count=len(prompts))


@dataclass(frozen=True)
class CostModel:
    """``cost[i, e] = intercept[e] + slope[e] · chars(prompt_i)``, clipped at 0."""

    kind: str  # "learned" | "prices" | "uniform"
    intercept: np.ndarray
    slope: np.ndarray

    @classmethod
    def uniform(cls, n_experts: int) -> CostModel:
        return cls("uniform", np.ones(n_experts), np.zeros(n_experts))

    @classmethod
    def from_prices(cls, experts: Sequence[ExpertInfo], completion_tokens: int = 256) -> CostModel:
        p_in = np.array([e.input_usd_per_mtok for e in experts], dtype=float) / 1e6
        p_out = np.array([e.output_usd_per_mtok for e in experts], dtype=float) / 1e6
        return cls("prices", p_out * completion_tokens, p_in / CHARS_PER_TOKEN)

    @classmethod
    def fit(cls, prompts: Sequence[str], costs: np.ndarray | None, experts: Sequence[ExpertInfo]) -> CostModel:
        """Learn from observed costs; without any, fall back to prices, then to uniform."""
        if costs is None:
            return cls.uniform(len(experts))
        chars = prompt_chars(prompts)
        intercept = np.zeros(len(experts))
        slope = np.zeros(len(experts))
        fallback = cls.from_prices(experts)
        overall = float(np.nanmean(costs)) if np.isfinite(costs).any() else 0.0
        for j in range(len(experts)):
            ok = np.isfinite(costs[:, j])
            if ok.sum() >= 2 and np.ptp(chars[ok]) > 0:
                X = np.column_stack([np.ones(ok.sum()), chars[ok]])
                (a, b), *_ = np.linalg.lstsq(X, costs[ok, j], rcond=None)
                intercept[j], slope[j] = a, max(b, 0.0)
            elif ok.any():
                intercept[j] = float(costs[ok, j].mean())
            elif fallback.intercept[j] > 0 or fallback.slope[j] > 0:
                intercept[j], slope[j] = fallback.intercept[j], fallback.slope[j]
            else:
                intercept[j] = overall
        return cls("learned", intercept, slope)

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        """Predicted cost, shape (n_prompts, n_experts)."""
        if self.kind == "uniform":
            return np.tile(self.intercept, (len(prompts), 1))
        chars = prompt_chars(prompts)
        return np.clip(self.intercept[None, :] + chars[:, None] * self.slope[None, :], 0.0, None)
