"""Shared plumbing of policies that learn quality from query embeddings (kNN, MLP, MF).

``EmbeddingPolicy`` embeds prompts with a named encoder (``policies.embeddings``) and turns a
training matrix into targets: outcomes rescaled to [0, 1] by the training range, a mask of known
outcomes, and per-expert training means as the fallback where a prediction has nothing to go on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.base import Policy
from policies.data import RoutingData
from policies.embeddings import get_encoder


class EmbeddingPolicy(Policy):
    """A policy whose only input is the embedding of the prompt."""

    requires_training = True
    reads_prompt = True
    encoder: str = "minilm"

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        return get_encoder(self.encoder).encode(list(prompts))

    def _prepare(self, train: RoutingData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embeddings, targets in [0, 1] (NaN kept) and the known mask of the training rows.

        Sets ``score_lo_``/``score_hi_`` (the training range) and ``mean_quality_`` (per-expert
        training mean, in original units).
        """
        known = ~np.isnan(train.scores)
        if not known.any():
            from core.errors import PolicyError

            raise PolicyError(f"policy {self.name!r}: the training matrix has no known outcome")
        lo, hi = float(np.nanmin(train.scores)), float(np.nanmax(train.scores))
        self.score_lo_, self.score_hi_ = lo, (hi if hi > lo else lo + 1.0)
        sums = np.where(known, train.scores, 0.0).sum(axis=0)
        counts = known.sum(axis=0)
        overall = float(np.nanmean(train.scores))
        self.mean_quality_ = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
        X = self.embed(train.prompts)
        return X, self.to_unit(train.scores), known

    def to_unit(self, scores: np.ndarray) -> np.ndarray:
        return (scores - self.score_lo_) / (self.score_hi_ - self.score_lo_)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        return self.score_lo_ + unit * (self.score_hi_ - self.score_lo_)

    # ---- artifacts: what every embedding policy learns besides its model ----------------------
    def _embedding_state(self) -> tuple[dict[str, np.ndarray], dict]:
        return ({"mean_quality": np.asarray(self.mean_quality_, dtype=float)},
                {"score_lo": float(self.score_lo_), "score_hi": float(self.score_hi_)})

    def _set_embedding_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.score_lo_, self.score_hi_ = float(meta["score_lo"]), float(meta["score_hi"])
        self.mean_quality_ = np.asarray(arrays["mean_quality"], dtype=float)
        if self.mean_quality_.shape != (len(self.experts_),):
            raise ValueError(f"mean_quality has shape {self.mean_quality_.shape}, expected ({len(self.experts_)},)")
