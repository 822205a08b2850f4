"""RouteLLM-style matrix factorisation: a learned projection of the query embedding, dotted
with a learned embedding of each expert (plus a per-expert bias), through a sigmoid.

    quality(q, e) = σ(⟨v_e, P·emb(q)⟩ + b_e)

RouteLLM trains it on pairwise wins of a strong vs a weak model; with a full outcome matrix we
fit it pointwise on every known (query, expert) outcome, which covers any number of experts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.learned import EmbeddingPolicy
from policies.neural import TrainConfig, holdout_split, load_net_state, net_state, predict_unit, train_masked


def _build(d_in: int, n_experts: int, dim: int):
    import torch

    class _MF(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(d_in, dim, bias=False)
            self.experts = torch.nn.Parameter(torch.randn(n_experts, dim) * dim**-0.5)
            self.bias = torch.nn.Parameter(torch.zeros(n_experts))

        def forward(self, x):
            return self.proj(x) @ self.experts.T + self.bias

    return _MF()


class MFPolicy(EmbeddingPolicy):
    name = "mf"

    def __init__(
        self,
        dim: int = 128,
        epochs: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 128,
        patience: int = 10,
        val_fraction: float = 0.1,
        encoder: str = "minilm",
        random_state: int = 0,
    ) -> None:
        self.dim = dim
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.encoder = encoder
        self.random_state = random_state

    def _fit(self, train) -> None:
        import torch

        X, Y, known = self._prepare(train)
        torch.manual_seed(self.random_state)
        self.net_ = _build(X.shape[1], len(self.experts_), self.dim)
        fit_rows, val_rows = holdout_split(train, self.val_fraction, self.random_state)
        cfg = TrainConfig(self.epochs, self.lr, self.weight_decay, self.batch_size, self.patience,
                          self.val_fraction, self.random_state)
        self.train_stats_ = train_masked(self.net_, X, Y, known, fit_rows, val_rows, cfg)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        return self.from_unit(predict_unit(self.net_, self.embed(prompts)).reshape(len(prompts), -1))

    def _get_state(self):
        arrays, meta = self._embedding_state()
        arrays.update(net_state(self.net_))
        meta.update(d_in=int(self.net_.proj.in_features), train={k: float(v) for k, v in self.train_stats_.items()})
        return arrays, meta

    def _set_state(self, arrays, meta):
        self._set_embedding_state(arrays, meta)
        self.net_ = _build(int(meta["d_in"]), len(self.experts_), self.dim)
        load_net_state(self.net_, arrays)
        self.train_stats_ = dict(meta.get("train") or {})
