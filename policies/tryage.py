"""Tryage: a perceptive router predicts every expert's quality (and cost) on the prompt; the
decision maximises predicted quality minus user-weighted constraints sent with the request.

The paper fine-tunes a language model to predict each expert's loss on a prompt. Here the
perceptive model is a frozen sentence encoder (MiniLM) with category-conditioned linear heads,
which trains in seconds on a CPU and decides in well under a millisecond after the embedding:

    quality(q, e) = Σ_c π_c(q) · (b_ce + w_ceᵀ x_q)

``x_q`` is the query embedding, ``π(q)`` the category posterior (task labels or clusters, see
``policies.categories``) sharpened by a temperature, and (b_ce, w_ce) a ridge regression of
expert e's outcomes on the embeddings of category c's training queries: the intercept carries
the category's mean and the slope what the embedding adds inside it. A query of an unfamiliar
kind gets a flat posterior, hence an average of the heads. The ridge strength and the
temperature are chosen on the training rows by squared error of the predicted outcomes: three
quarters on grouped cross-validation (cross-fitted posteriors: validation rows are never seen by
the classifier that routes them), one quarter (``unseen_weight``) on rows whose whole category
was held out of the classifier, standing for queries of kinds the training data lacks.

Cost: where the training data has per-query costs, the prompt-length cost model
(``policies.costs``) gets a per-category correction (e.g. code answers run longer), weighted by
the same posterior; on quality-only data every expert costs 1.

User-weighted constraints and the Pareto front are part of the shared decision rule
(``Policy.decide`` / ``Policy.pareto_front``): weights on cost (λ), size, latency and recency,
hard limits on cost, size, latency and release date, all per request in the ``expertmux`` body.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.categories import CategoryModel, cross_fitted_proba, fit_categories, held_out_category_proba, softmax
from policies.learned import EmbeddingPolicy
from policies.neural import single_thread
from policies.progress import report


class TryagePolicy(EmbeddingPolicy):
    name = "tryage"

    def __init__(
        self,
        categories: str = "auto",
        n_clusters: int = 16,
        alphas: tuple[float, ...] = (3.0, 10.0, 30.0, 100.0, 300.0),
        temperatures: tuple[float, ...] = (2.0, 1.0, 0.5, 0.25),
        unseen_weight: float = 0.25,
        C: float = 10.0,
        cv_folds: int = 5,
        cost_shrinkage: float = 20.0,
        encoder: str = "minilm",
        random_state: int = 0,
    ) -> None:
        self.categories = categories
        self.n_clusters = n_clusters
        self.alphas = alphas
        self.temperatures = temperatures
        self.unseen_weight = unseen_weight
        self.C = C
        self.cv_folds = cv_folds
        self.cost_shrinkage = cost_shrinkage
        self.encoder = encoder
        self.random_state = random_state

    # ---- fitting --------------------------------------------------------------------------------
    def _fit(self, train) -> None:
        with single_thread():
            self._fit_heads_and_classifier(train)

    def _fit_heads_and_classifier(self, train) -> None:
        X, _, known = self._prepare(train)
        scores = np.where(known, train.scores, np.nan)
        stage = "perceptive model"
        folds = train.grouped_folds(self.cv_folds, seed=self.random_state) if len(train) >= 4 * self.cv_folds else []
        total = 3 + len(folds)
        report(stage, 0, total)
        model, y = fit_categories(train, X, mode=self.categories, n_clusters=self.n_clusters, C=self.C,
                                  seed=self.random_state)
        k, alphas, temps = model.n, [float(a) for a in self.alphas], [float(t) for t in self.temperatures]
        report(stage, 1, total)
        self.cv_mse_: dict[str, float] = {}
        if folds and (len(alphas) > 1 or len(temps) > 1):
            oof = cross_fitted_proba(train, X, y, k, folds, C=self.C, seed=self.random_state)
            err = np.zeros((len(alphas), len(temps)))
            n_known = 0
            for i, (tr, te) in enumerate(folds):
                W, b = _fit_heads(X[tr], scores[tr], y[tr], k, alphas, self.mean_quality_)
                logp = np.log(np.clip(oof[te], 1e-12, 1.0))
                target, mask = np.nan_to_num(scores[te]), known[te]
                for ai in range(len(alphas)):
                    heads = np.einsum("nd,kde->nke", X[te], W[ai]) + b[ai][None]
                    for ti, t in enumerate(temps):
                        pred = np.einsum("nk,nke->ne", softmax(logp / t), heads)
                        err[ai, ti] += float((((pred - target) ** 2) * mask).sum())
                n_known += int(mask.sum())
                report(stage, 2 + i, total)
            err /= max(n_known, 1)
            held = held_out_category_proba(X, y, k, C=self.C, seed=self.random_state) if self.unseen_weight > 0 else None
            if held is not None:  # queries of kinds the classifier never saw: how flat should π get?
                W, b = _fit_heads(X, scores, y, k, alphas, self.mean_quality_)
                logp = np.log(np.clip(held, 1e-12, 1.0))
                target, mask = np.nan_to_num(scores), known
                err_held = np.zeros_like(err)
                for ai in range(len(alphas)):
                    heads = np.einsum("nd,kde->nke", X, W[ai]) + b[ai][None]
                    for ti, t in enumerate(temps):
                        pred = np.einsum("nk,nke->ne", softmax(logp / t), heads)
                        err_held[ai, ti] = float((((pred - target) ** 2) * mask).sum()) / max(int(mask.sum()), 1)
                err = (1 - self.unseen_weight) * err + self.unseen_weight * err_held
            self.cv_mse_ = {f"alpha={a:g},T={t:g}": round(float(err[ai, ti]), 6)
                            for ai, a in enumerate(alphas) for ti, t in enumerate(temps)}
            ai, ti = np.unravel_index(int(np.argmin(err)), err.shape)
            self.alpha_, self.temperature_ = alphas[ai], temps[ti]
        else:
            self.alpha_, self.temperature_ = alphas[len(alphas) // 2], temps[0]
        W, b = _fit_heads(X, scores, y, k, [self.alpha_], self.mean_quality_)
        self.head_weight_, self.head_bias_ = W[0].astype(np.float32), b[0]
        self.categories_ = model
        self.cost_offset_ = self._fit_cost_offsets(train, y, k)
        report(stage, total, total)

    def _fit_cost_offsets(self, train, y: np.ndarray, k: int) -> np.ndarray:
        """Per-category mean residual of the observed cost over the length model (shrunk to 0)."""
        m = len(self.experts_)
        if not train.has_costs or self.cost_model_.kind != "learned":
            return np.zeros((k, m))
        resid = train.costs - self.cost_model_.predict(train.prompts)
        ok = np.isfinite(resid)
        onehot = np.eye(k)[y]
        sums = onehot.T @ np.where(ok, resid, 0.0)
        counts = onehot.T @ ok.astype(float)
        return sums / (counts + self.cost_shrinkage)

    # ---- prediction -----------------------------------------------------------------------------
    def _posterior(self, X: np.ndarray) -> np.ndarray:
        return self.categories_.proba(X, self.temperature_)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        X = self.embed(prompts)
        P = self._posterior(X)
        heads = np.einsum("nd,kde->nke", X, self.head_weight_) + self.head_bias_[None]
        return np.clip(np.einsum("nk,nke->ne", P, heads), self.score_lo_, self.score_hi_)

    def predict_query_cost(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        base = self.cost_model_.predict(prompts)
        if not np.any(self.cost_offset_):
            return base
        P = self._posterior(self.embed(prompts))
        return np.clip(base + P @ self.cost_offset_, 0.0, None)

    # ---- artifacts ------------------------------------------------------------------------------
    def _get_state(self):
        arrays, meta = self._embedding_state()
        cat_arrays, cat_meta = self.categories_.state()
        arrays.update(cat_arrays, head_weight=self.head_weight_, head_bias=self.head_bias_, cost_offset=self.cost_offset_)
        meta.update(categories=cat_meta, alpha=self.alpha_, temperature=self.temperature_, cv_mse=self.cv_mse_)
        return arrays, meta

    def _set_state(self, arrays, meta):
        self._set_embedding_state(arrays, meta)
        self.categories_ = CategoryModel.from_state(arrays, meta["categories"])
        self.head_weight_ = np.asarray(arrays["head_weight"], dtype=np.float32)
        self.head_bias_ = np.asarray(arrays["head_bias"], dtype=float)
        self.cost_offset_ = np.asarray(arrays["cost_offset"], dtype=float)
        k, m = self.categories_.n, len(self.experts_)
        if self.head_weight_.shape[0] != k or self.head_weight_.shape[2] != m or self.head_bias_.shape != (k, m):
            raise ValueError(f"heads have shape {self.head_weight_.shape}; expected ({k}, dim, {m})")
        self.alpha_, self.temperature_ = float(meta["alpha"]), float(meta["temperature"])
        self.cv_mse_ = dict(meta.get("cv_mse") or {})


def _fit_heads(X: np.ndarray, scores: np.ndarray, y: np.ndarray, k: int, alphas: Sequence[float],
               fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge heads per category and expert for every alpha: weights (A, k, d, m), biases (A, k, m).

    One eigendecomposition of the centred Gram matrix per category serves every alpha; experts
    with unknown outcomes in a category get their own, over the rows where they are known. A
    category with fewer than two known outcomes keeps a flat head at the overall mean.
    """
    d, m = X.shape[1], scores.shape[1]
    W = np.zeros((len(alphas), k, d, m))
    b = np.tile(np.asarray(fallback, dtype=float), (len(alphas), k, 1))
    known = ~np.isnan(scores)
    for c in range(k):
        rows = y == c
        Xc, Sc, Kc = X[rows].astype(float), scores[rows], known[rows]
        full = Kc.all(axis=0) if len(Xc) else np.zeros(m, dtype=bool)
        groups = [(np.ones(len(Xc), dtype=bool), np.flatnonzero(full))] if full.any() else []
        groups += [(Kc[:, e], np.array([e])) for e in np.flatnonzero(~full)]
        for mask, cols in groups:
            if mask.sum() < 2:
                if mask.any():
                    b[:, c, cols] = Sc[mask][:, cols].mean(axis=0)
                continue
            Xm, Ym = Xc[mask], Sc[mask][:, cols]
            xm, ym = Xm.mean(axis=0), Ym.mean(axis=0)
            for ai, w in enumerate(_ridge_path(Xm - xm, Ym - ym, alphas)):
                W[ai, c][:, cols] = w
                b[ai, c, cols] = ym - xm @ w
    return W, b


def _ridge_path(Xz: np.ndarray, Yz: np.ndarray, alphas: Sequence[float]) -> list[np.ndarray]:
    """Ridge weights (d × m) of centred data for every alpha, from one eigendecomposition of the
    smaller of the Gram matrices (d × d, or n × n when a category has fewer rows than dimensions)."""
    n, d = Xz.shape
    out = []
    if n < d:
        s, U = np.linalg.eigh(Xz @ Xz.T)
        proj = U.T @ Yz
        for a in alphas:
            out.append(Xz.T @ (U @ (proj / (np.clip(s, 0.0, None) + a)[:, None])))
    else:
        s, V = np.linalg.eigh(Xz.T @ Xz)
        proj = V.T @ (Xz.T @ Yz)
        for a in alphas:
            out.append(V @ (proj / (np.clip(s, 0.0, None) + a)[:, None]))
    return out
