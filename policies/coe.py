"""Classifier Composition of Experts (SambaNova's CoE), two steps:

1. a classifier assigns the query to a category: a task label when the training data has them,
   else a k-means cluster of query embeddings (``categories``: auto | task | cluster);
2. a category → expert map, chosen on validation data for the cost target λ: for category c the
   expert maximising ``mean quality − λ · mean cost`` over the validation queries the classifier
   put in c.

The validation data is the training rows themselves, cross-fitted: each row's category is
predicted by a classifier that did not see it (grouped K-fold), so the map accounts for the
classifier's own mistakes (a row of task A predicted as B counts for B). The map's quality table
``table_[c, e]`` (shrunk towards the overall mean where a category has few rows) is what
``predict_quality`` returns for a query of category c; the shared decision rule then takes
``argmax_e table_[c, e] − λ · cost[e]``, i.e. the category's map at that λ, with the request's
own expected cost. ``category_map(λ)`` lists the map itself.

Queries of a kind the training data lacks: a query whose top category probability is below
``confidence_`` uses the overall table row (the best experts on average) instead of its
category's. As in out-of-distribution detection, the threshold fixes the share of queries of
known kinds that fall back (``fallback_rate`` of the cross-fitted rows); it is kept only if,
on rows whose whole category was held out of the classifier (kinds it never saw), falling back
does better than trusting the map, and is 0 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import PolicyError
from policies.categories import CategoryModel, cross_fitted_proba, fit_categories, held_out_category_proba
from policies.learned import EmbeddingPolicy
from policies.progress import report


class ClassifierCoEPolicy(EmbeddingPolicy):
    name = "coe"

    def __init__(
        self,
        categories: str = "auto",
        n_clusters: int = 16,
        assignment: str = "hard",
        C: float = 10.0,
        cv_folds: int = 5,
        shrinkage: float = 5.0,
        fallback_rate: float = 0.1,
        encoder: str = "minilm",
        random_state: int = 0,
    ) -> None:
        self.categories = categories
        self.n_clusters = n_clusters
        self.assignment = assignment
        self.C = C
        self.cv_folds = cv_folds
        self.shrinkage = shrinkage
        self.fallback_rate = fallback_rate
        self.encoder = encoder
        self.random_state = random_state

    # ---- fitting --------------------------------------------------------------------------------
    def _fit(self, train) -> None:
        if self.assignment not in ("hard", "soft"):
            raise PolicyError(f"policy 'coe': assignment must be 'hard' or 'soft', not {self.assignment!r}")
        X, _, known = self._prepare(train)
        steps = 4
        report("classifier and map", 0, steps)
        model, y = fit_categories(train, X, mode=self.categories, n_clusters=self.n_clusters, C=self.C,
                                  seed=self.random_state)
        report("classifier and map", 1, steps)
        k = model.n
        folds = train.grouped_folds(self.cv_folds, seed=self.random_state) if len(train) >= 4 * self.cv_folds else []
        oof = cross_fitted_proba(train, X, y, k, folds, C=self.C, seed=self.random_state) if folds else np.eye(k)[y]
        report("classifier and map", 2, steps)
        scores, costs = np.where(known, train.scores, np.nan), train.cost_matrix()
        weights = self._assign(oof)
        self.table_, self.mean_cost_, self.rows_ = _tables(weights, scores, costs, self.shrinkage)
        self.overall_ = np.nanmean(scores, axis=0)
        self.overall_ = np.where(np.isnan(self.overall_), np.nanmean(scores), self.overall_)
        self.overall_cost_ = np.nanmean(costs, axis=0)
        self.confidence_ = 0.0
        if self.fallback_rate > 0 and self.assignment == "hard" and folds:
            held = held_out_category_proba(X, y, k, C=self.C, seed=self.random_state)
            if held is not None:
                self.confidence_ = _choose_threshold(oof, held, self.table_, self.overall_, scores, self.fallback_rate)
        report("classifier and map", 3, steps)
        self.categories_ = model
        self.validation_accuracy_ = float((oof.argmax(axis=1) == y).mean()) if folds else float("nan")
        report("classifier and map", steps, steps)

    def _assign(self, proba: np.ndarray) -> np.ndarray:
        """Category weights per query: one-hot of the top category (hard) or the posterior (soft)."""
        if self.assignment == "soft":
            return proba
        return np.eye(proba.shape[1])[np.argmax(proba, axis=1)]

    # ---- prediction -----------------------------------------------------------------------------
    def category_proba(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        return self.categories_.proba(self.embed(prompts))

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        proba = self.category_proba(prompts)
        quality = self._assign(proba) @ self.table_
        if self.confidence_ > 0:
            unsure = proba.max(axis=1) < self.confidence_
            quality[unsure] = self.overall_
        return quality

    def category_map(self, lambda_: float = 0.0) -> dict[str, str]:
        """The category → expert map at this λ (mean quality − λ · mean cost per category)."""
        self._check_fitted()
        names = self.expert_names
        out = {}
        for c, cat in enumerate(self.categories_.names):
            out[cat] = names[int(np.argmax(self.table_[c] - lambda_ * self.mean_cost_[c]))]
        out["(unsure)"] = names[int(np.argmax(self.overall_ - lambda_ * self.overall_cost_))]
        return out

    # ---- artifacts ------------------------------------------------------------------------------
    def _get_state(self):
        arrays, meta = self._embedding_state()
        cat_arrays, cat_meta = self.categories_.state()
        arrays.update(cat_arrays, table=self.table_, mean_cost=self.mean_cost_, rows=self.rows_,
                      overall=self.overall_, overall_cost=self.overall_cost_)
        meta.update(categories=cat_meta, confidence=float(self.confidence_),
                    validation_accuracy=None if np.isnan(self.validation_accuracy_) else self.validation_accuracy_,
                    map_at_zero=self.category_map(0.0))
        return arrays, meta

    def _set_state(self, arrays, meta):
        self._set_embedding_state(arrays, meta)
        self.categories_ = CategoryModel.from_state(arrays, meta["categories"])
        self.table_ = np.asarray(arrays["table"], dtype=float)
        self.mean_cost_ = np.asarray(arrays["mean_cost"], dtype=float)
        self.rows_ = np.asarray(arrays["rows"], dtype=float)
        self.overall_ = np.asarray(arrays["overall"], dtype=float)
        self.overall_cost_ = np.asarray(arrays["overall_cost"], dtype=float)
        if self.table_.shape != (self.categories_.n, len(self.experts_)):
            raise ValueError(f"map table has shape {self.table_.shape}; expected ({self.categories_.n}, {len(self.experts_)})")
        self.confidence_ = float(meta["confidence"])
        acc = meta.get("validation_accuracy")
        self.validation_accuracy_ = float("nan") if acc is None else float(acc)


class ClusterCoEPolicy(ClassifierCoEPolicy):
    """Classifier CoE over k-means clusters of query embeddings, whatever labels the data has."""

    name = "coe_cluster"

    def __init__(
        self,
        categories: str = "cluster",
        n_clusters: int = 16,
        assignment: str = "hard",
        C: float = 10.0,
        cv_folds: int = 5,
        shrinkage: float = 5.0,
        fallback_rate: float = 0.1,
        encoder: str = "minilm",
        random_state: int = 0,
    ) -> None:
        super().__init__(categories, n_clusters, assignment, C, cv_folds, shrinkage, fallback_rate, encoder, random_state)


def _tables(weights: np.ndarray, scores: np.ndarray, costs: np.ndarray, shrinkage: float):
    """Per-category mean quality (shrunk to the overall mean) and mean cost; rows per category."""
    known = ~np.isnan(scores)
    s = np.where(known, scores, 0.0)
    n = weights.T @ known.astype(float)  # (K, m) weighted counts of known outcomes
    overall = np.nanmean(scores, axis=0)
    overall = np.where(np.isnan(overall), np.nanmean(scores), overall)
    table = (weights.T @ s + shrinkage * overall[None, :]) / (n + shrinkage)
    w = weights.sum(axis=0)[:, None]
    overall_cost = np.nanmean(costs, axis=0)
    mean_cost = np.where(w > 0, (weights.T @ np.nan_to_num(costs)) / np.maximum(w, 1e-12), overall_cost[None, :])
    return table, mean_cost, weights.sum(axis=0)


def _choose_threshold(oof: np.ndarray, held: np.ndarray, table: np.ndarray, overall: np.ndarray,
                      scores: np.ndarray, rate: float) -> float:
    """The ``rate`` quantile of the cross-fitted top probabilities, if falling back below it
    helps the rows of held-out categories; else 0 (never fall back)."""
    filled = np.nan_to_num(scores, nan=0.0)
    rows = np.arange(len(scores))
    tau = float(np.quantile(oof.max(axis=1), min(max(rate, 0.0), 1.0)))

    def realised(proba: np.ndarray, threshold: float) -> float:
        pick_cat = np.argmax(table[np.argmax(proba, axis=1)], axis=1)
        pick = np.where(proba.max(axis=1) < threshold, int(np.argmax(overall)), pick_cat)
        return float(filled[rows, pick].mean())

    return tau if realised(held, tau) > realised(held, 0.0) else 0.0
