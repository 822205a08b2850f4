"""A multi-output MLP on query embeddings: one predicted outcome per expert."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.learned import EmbeddingPolicy
from policies.neural import TrainConfig, holdout_split, load_net_state, net_state, predict_unit, train_masked


class MLPPolicy(EmbeddingPolicy):
    name = "mlp"

    def __init__(
        self,
        hidden: int = 256,
        dropout: float = 0.2,
        epochs: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 128,
        patience: int = 10,
        val_fraction: float = 0.1,
        encoder: str = "minilm",
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.encoder = encoder
        self.random_state = random_state

    def _make_net(self, d_in: int, n_out: int):
        import torch

        return torch.nn.Sequential(
            torch.nn.Linear(d_in, self.hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, n_out),
        )

    def _fit(self, train) -> None:
        import torch

        X, Y, known = self._prepare(train)
        torch.manual_seed(self.random_state)
        self.net_ = self._make_net(X.shape[1], len(self.experts_))
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
        meta.update(d_in=int(self.net_[0].in_features), train={k: float(v) for k, v in self.train_stats_.items()})
        return arrays, meta

    def _set_state(self, arrays, meta):
        self._set_embedding_state(arrays, meta)
        self.net_ = self._make_net(int(meta["d_in"]), len(self.experts_))
        load_net_state(self.net_, arrays)
        self.train_stats_ = dict(meta.get("train") or {})
