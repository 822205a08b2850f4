"""The per-query oracle: routes with the TRUE outcomes of the rows it routes.

Evaluation only (``uses_labels``): it is the ceiling every policy is measured against, never
servable. At a given λ it picks ``argmax_e score − λ·cost`` on the real outcomes and costs;
ties go to the cheaper expert, so at λ = 0 it is "the cheapest of the best answers".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import PolicyError
from policies.base import Policy


class OraclePolicy(Policy):
    name = "oracle"
    uses_labels = True

    def __init__(self) -> None:
        pass

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        raise PolicyError("policy 'oracle' is evaluation-only: it needs the outcomes (decide_labeled)")

    def decide_labeled(self, scores: np.ndarray, costs: np.ndarray, lambdas: Sequence[float] | float) -> np.ndarray:
        """Chosen expert per λ and row from the true outcomes (NaN = not a candidate)."""
        self._check_fitted()
        known = ~np.isnan(scores)
        span = float(np.nanmax(costs) - np.nanmin(costs)) if np.isfinite(costs).any() else 0.0
        # A tie-break far below any real utility difference: equal outcomes → the cheaper expert.
        eps = 1e-9 / span if span > 0 else 0.0
        quality = np.where(known, scores, 0.0) - eps * np.nan_to_num(costs)
        return self.choose_many(quality, np.nan_to_num(costs), lambdas, known)
