"""Query categories: task labels when the data has them, k-means clusters of embeddings when not.

Classifier CoE, Tryage and GraphRouter all ask "what kind of query is this?" before they ask
"which expert?". ``CategoryModel`` answers with probabilities from a softmax regression on the
query embedding, trained on the categories of the training rows. Categories come from the
``task`` column (``source = "task"``) or, for a set without usable task labels, from k-means on
the embeddings (``source = "cluster"``). At prediction time only the prompt is needed.

Two kinds of held-out posteriors let policies calibrate how far to trust the classifier, without
touching evaluation data:

* ``cross_fitted_proba``: each training row predicted by a classifier fitted on the other folds
  (grouped by prompt), i.e. what the classifier says about a query of a known kind it never saw;
* ``held_out_category_proba``: each row predicted by a classifier that never saw its whole
  category, i.e. what it says about a query of a kind that does not exist in training.

The regression is fitted with L-BFGS in torch on one thread (a second ~10× faster than
scikit-learn's solver here); inference is one matrix product in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import PolicyError
from policies.data import RoutingData

MIN_TASK_ROWS = 5  # a task label with fewer training rows than this does not make a category


@dataclass
class CategoryModel:
    names: list[str]  # category names: task labels or "cluster-<i>"
    source: str  # "task" | "cluster"
    weight: np.ndarray  # (dim, K)
    bias: np.ndarray  # (K,)
    centroids: np.ndarray  # (K, dim): mean embedding of each category's training rows

    @property
    def n(self) -> int:
        return len(self.names)

    def logits(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float32) @ self.weight + self.bias

    def proba(self, X: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        return softmax(self.logits(X) / max(temperature, 1e-6))

    # ---- artifacts ----------------------------------------------------------------------------
    def state(self, prefix: str = "categories") -> tuple[dict[str, np.ndarray], dict]:
        arrays = {f"{prefix}.weight": self.weight.astype(np.float32), f"{prefix}.bias": self.bias.astype(np.float32),
                  f"{prefix}.centroids": self.centroids.astype(np.float32)}
        return arrays, {"names": list(self.names), "source": self.source}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict, prefix: str = "categories") -> CategoryModel:
        model = cls(names=list(meta["names"]), source=str(meta["source"]),
                    weight=np.asarray(arrays[f"{prefix}.weight"], dtype=np.float32),
                    bias=np.asarray(arrays[f"{prefix}.bias"], dtype=np.float32),
                    centroids=np.asarray(arrays[f"{prefix}.centroids"], dtype=np.float32))
        k = model.n
        if model.weight.shape[1] != k or model.bias.shape != (k,) or model.centroids.shape[0] != k:
            raise ValueError(f"category classifier shapes {model.weight.shape}, {model.bias.shape} do not fit {k} categories")
        return model


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ---- which categories ---------------------------------------------------------------------------
def usable_tasks(train: RoutingData) -> bool:
    """At least two task labels with ``MIN_TASK_ROWS`` rows each."""
    labels, counts = np.unique(np.asarray([t for t in train.task.tolist() if t], dtype=object), return_counts=True)
    return int((counts >= MIN_TASK_ROWS).sum()) >= 2 if len(labels) else False


def assign_categories(train: RoutingData, X: np.ndarray, *, mode: str = "auto", n_clusters: int = 16,
                      seed: int = 0) -> tuple[np.ndarray, list[str], str]:
    """Category index per training row, the category names and their source ("task" | "cluster").

    ``mode``: "task" (labels required), "cluster", or "auto" (task labels when usable). Rare
    task labels (fewer than ``MIN_TASK_ROWS`` rows) join the nearest frequent task by centroid.
    """
    if mode not in ("auto", "task", "cluster"):
        raise PolicyError(f"category mode must be auto, task or cluster, not {mode!r}")
    if mode == "task" and not usable_tasks(train):
        raise PolicyError("category mode 'task' needs at least two task labels in the training rows")
    if mode == "auto":
        mode = "task" if usable_tasks(train) else "cluster"
    if mode == "task":
        tasks = np.asarray(train.task.tolist(), dtype=object)
        names, counts = np.unique(tasks, return_counts=True)
        keep = [str(n) for n, c in zip(names, counts) if c >= MIN_TASK_ROWS and n]
        index = {n: i for i, n in enumerate(keep)}
        y = np.array([index.get(t, -1) for t in tasks], dtype=np.int64)
        if (y < 0).any():  # rare or empty labels: nearest frequent category centroid
            cents = np.stack([X[y == i].mean(axis=0) for i in range(len(keep))])
            y[y < 0] = np.argmax(X[y < 0] @ cents.T, axis=1)
        return y, keep, "task"
    from sklearn.cluster import KMeans

    k = int(max(2, min(n_clusters, len(train) // 10)))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(X)
    return km.labels_.astype(np.int64), [f"cluster-{i}" for i in range(k)], "cluster"


# ---- the classifier -----------------------------------------------------------------------------
def fit_softmax(X: np.ndarray, y: np.ndarray, n_classes: int, *, C: float = 10.0, max_iter: int = 300,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (scikit-learn's objective with inverse strength ``C``)."""
    import torch

    from policies.neural import single_thread

    with single_thread():
        torch.manual_seed(seed)
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
        W = torch.zeros(Xt.shape[1], n_classes, requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
        penalty = 1.0 / (2.0 * C * max(len(Xt), 1))
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(Xt @ W + b, yt) + penalty * (W**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return W.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32)


def fit_categories(train: RoutingData, X: np.ndarray, *, mode: str = "auto", n_clusters: int = 16, C: float = 10.0,
                   seed: int = 0) -> tuple[CategoryModel, np.ndarray]:
    """The category model fitted on every training row, and each row's category index."""
    y, names, source = assign_categories(train, X, mode=mode, n_clusters=n_clusters, seed=seed)
    W, b = fit_softmax(X, y, len(names), C=C, seed=seed)
    cents = np.stack([X[y == i].mean(axis=0) if (y == i).any() else np.zeros(X.shape[1]) for i in range(len(names))])
    return CategoryModel(names, source, W, b, cents.astype(np.float32)), y


def cross_fitted_proba(train: RoutingData, X: np.ndarray, y: np.ndarray, n_classes: int,
                       folds: Sequence[tuple[np.ndarray, np.ndarray]], *, C: float = 10.0, seed: int = 0) -> np.ndarray:
    """Posterior of every row from a classifier fitted on the folds that do not hold it."""
    out = np.zeros((len(X), n_classes), dtype=np.float32)
    for tr, te in folds:
        W, b = fit_softmax(X[tr], y[tr], n_classes, C=C, seed=seed)
        out[te] = softmax(X[te] @ W + b)
    return out


def held_out_category_proba(X: np.ndarray, y: np.ndarray, n_classes: int, *, n_groups: int = 6, C: float = 10.0,
                            seed: int = 0) -> np.ndarray | None:
    """Posterior of every row from a classifier that never saw the row's category.

    Categories are split into ``n_groups`` groups (at most one per category); each group is
    predicted by a classifier fitted on the others, over the others' categories (the held-out
    columns are 0). None with fewer than three categories.
    """
    if n_classes < 3:
        return None
    rng = np.random.default_rng(seed)
    groups = np.array_split(rng.permutation(n_classes), min(n_groups, n_classes))
    out = np.zeros((len(X), n_classes), dtype=np.float32)
    for held in groups:
        rest = np.setdiff1d(np.arange(n_classes), held)
        fit_rows = np.isin(y, rest)
        remap = -np.ones(n_classes, dtype=np.int64)
        remap[rest] = np.arange(len(rest))
        W, b = fit_softmax(X[fit_rows], remap[y[fit_rows]], len(rest), C=C, seed=seed)
        rows = np.isin(y, held)
        out[np.ix_(rows, rest)] = softmax(X[rows] @ W + b)
    return out
