"""Cosine k-nearest-neighbours on query embeddings (the RouterBench kNN baseline).

The predicted quality of an expert on a query is the mean outcome of that expert on the k most
similar training queries (only neighbours with a known outcome count; none → the expert's
training mean). k is chosen by grouped cross-validation on the training rows (mean squared
error of the predicted outcomes), unless given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.learned import EmbeddingPolicy

_CHUNK = 2048  # query rows per similarity block: bounds memory to CHUNK × n_train floats


def _top_neighbours(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most cosine-similar keys per query, most similar first (unit vectors)."""
    k = min(k, len(keys))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), _CHUNK):
        sims = queries[start : start + _CHUNK] @ keys.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start : start + _CHUNK] = np.take_along_axis(part, order, axis=1)
    return out


def _neighbour_means(neigh: np.ndarray, Y: np.ndarray, known: np.ndarray, ks: Sequence[int], fallback: np.ndarray) -> list[np.ndarray]:
    """For each k: mean of the known outcomes of the first k neighbours, (n, m) each."""
    vals = np.where(known, Y, 0.0)[neigh]  # (n, K, m)
    cnts = known[neigh].astype(float)
    csum_v, csum_c = np.cumsum(vals, axis=1), np.cumsum(cnts, axis=1)
    out = []
    for k in ks:
        s, c = csum_v[:, k - 1], csum_c[:, k - 1]
        out.append(np.where(c > 0, s / np.maximum(c, 1), fallback[None, :]))
    return out


class KNNPolicy(EmbeddingPolicy):
    name = "knn"

    def __init__(
        self,
        k: int | None = None,
        k_grid: tuple[int, ...] = (5, 10, 20, 40, 80, 160),
        cv_folds: int = 5,
        encoder: str = "minilm",
        random_state: int = 0,
    ) -> None:
        self.k = k
        self.k_grid = k_grid
        self.cv_folds = cv_folds
        self.encoder = encoder
        self.random_state = random_state

    def _fit(self, train) -> None:
        X, Y, known = self._prepare(train)
        fallback = self.to_unit(self.mean_quality_)
        self.cv_mse_: dict[int, float] = {}
        if self.k is not None:
            self.k_ = int(self.k)
        else:
            self.k_ = self._choose_k(train, X, Y, known, fallback)
        self.keys_, self.values_, self.known_ = X, np.where(known, Y, 0.0), known

    def _choose_k(self, train, X, Y, known, fallback) -> int:
        folds = train.grouped_folds(self.cv_folds, seed=self.random_state) if len(train) >= 2 * self.cv_folds else []
        if not folds:
            return int(min(self.k_grid[0], len(train)))
        smallest_train = min(len(tr) for tr, _ in folds)
        ks = sorted({min(int(k), smallest_train) for k in self.k_grid})
        err = np.zeros(len(ks))
        n_known = 0
        for tr, te in folds:
            neigh = _top_neighbours(X[te], X[tr], max(ks))
            preds = _neighbour_means(neigh, Y[tr], known[tr], ks, fallback)
            mask = known[te]
            target = np.where(mask, Y[te], 0.0)
            for i, p in enumerate(preds):
                err[i] += float((((p - target) ** 2) * mask).sum())
            n_known += int(mask.sum())
        mse = err / max(n_known, 1)
        self.cv_mse_ = {k: float(e) for k, e in zip(ks, mse)}
        return int(ks[int(np.argmin(mse))])

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        E = self.embed(prompts)
        neigh = _top_neighbours(E, self.keys_, self.k_)
        k = neigh.shape[1]
        (pred,) = _neighbour_means(neigh, self.values_, self.known_, [k], self.to_unit(self.mean_quality_))
        return self.from_unit(pred)

    def _get_state(self):
        arrays, meta = self._embedding_state()
        arrays.update(keys=self.keys_.astype(np.float32), values=self.values_.astype(np.float32), known=self.known_)
        meta.update(k=int(self.k_), cv_mse={str(k): v for k, v in self.cv_mse_.items()})
        return arrays, meta

    def _set_state(self, arrays, meta):
        self._set_embedding_state(arrays, meta)
        self.keys_ = np.asarray(arrays["keys"], dtype=np.float32)
        self.values_ = np.asarray(arrays["values"], dtype=float)
        self.known_ = np.asarray(arrays["known"], dtype=bool)
        m = len(self.experts_)
        if self.values_.shape != (len(self.keys_), m) or self.known_.shape != self.values_.shape:
            raise ValueError(f"kNN tables have shapes {self.keys_.shape}, {self.values_.shape}; expected {m} experts")
        self.k_ = int(meta["k"])
        self.cv_mse_ = {int(k): float(v) for k, v in (meta.get("cv_mse") or {}).items()}
