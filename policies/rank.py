"""Ranking heads: linear scores per expert trained with a loss over the experts of each query.

Pointwise regression (ridge, BCE) asks every head to get the *level* of its expert's outcome
right; routing only needs the *order* of the experts on each query, of ``quality − λ·cost``.
Here one linear score per expert, ``s_e(q) = w_eᵀ z(q) + c_e`` on standardised features
(``policies.features``), is trained with

* ``listwise``: cross-entropy between softmax(s(q)/1) and the target distribution
  softmax(u(q)/τ) with ``u_e = y_e − λ_train · cost_e / median cost`` (ListNet);
* ``pairwise``: logistic loss on every pair of experts whose utilities differ, weighted by the
  difference (RankNet);
* ``pointwise``: binary cross-entropy per expert (the same model and optimiser, the reference
  at equal features).

Every loss here is convex in the linear scores: the objective plus an L2 penalty is solved to
its optimum by full-batch L-BFGS, the penalty chosen from ``l2_grid`` by the loss on a grouped
hold-out of the training rows (then refitted on all of them).

Scores become predicted quality through one shared scale fitted on the training rows,
``q_e = mean_quality + a · (s_e − mean_f s_f)``: a per-query shift leaves the order at λ = 0
intact, and the scale ``a`` puts score differences in quality units for the λ trade-off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import PolicyError
from policies.base import Policy
from policies.features import compute, standardiser
from policies.neural import holdout_split, single_thread
from policies.progress import report

LOSSES = ("listwise", "pairwise", "pointwise")


def _loss(name: str, s, u, known, tau: float):
    import torch

    if name == "pointwise":
        target = u.clamp(0.0, 1.0)
        return (torch.nn.functional.binary_cross_entropy_with_logits(s, target, reduction="none") * known).sum() / known.sum()
    if name == "listwise":
        neg = torch.finfo(s.dtype).min / 4
        logp = torch.log_softmax(torch.where(known > 0, s, neg), dim=1)
        target = torch.softmax(torch.where(known > 0, u / tau, neg), dim=1)
        return -(target * torch.where(known > 0, logp, 0.0)).sum(dim=1).mean()
    diff_u = u[:, :, None] - u[:, None, :]
    both = known[:, :, None] * known[:, None, :]
    weight = torch.relu(diff_u) * both
    margin = s[:, :, None] - s[:, None, :]
    return (weight * torch.nn.functional.softplus(-margin)).sum() / weight.sum().clamp_min(1e-6)


class RankPolicy(Policy):
    name = "rank"
    requires_training = True
    reads_prompt = True

    def __init__(
        self,
        features: str = "minilm",
        loss: str = "listwise",
        tau: float = 0.1,
        lambda_train: float = 0.0,
        l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1),
        max_iter: int = 200,
        val_fraction: float = 0.2,
        max_tokens: int = 64,
        random_state: int = 0,
    ) -> None:
        self.features = features
        self.loss = loss
        self.tau = tau
        self.lambda_train = lambda_train
        self.l2_grid = l2_grid
        self.max_iter = max_iter
        self.val_fraction = val_fraction
        self.max_tokens = max_tokens
        self.random_state = random_state

    def _fit(self, train) -> None:
        if self.loss not in LOSSES:
            raise PolicyError(f"policy 'rank': loss must be one of {LOSSES}, got {self.loss!r}")
        X = compute(self.features, train.prompts, max_tokens=self.max_tokens)
        self.mean_, self.scale_ = standardiser(X)
        Z = (X - self.mean_) / self.scale_
        scores = train.scores
        known = ~np.isnan(scores)
        lo, hi = float(np.nanmin(scores)), float(np.nanmax(scores))
        self.score_lo_, self.score_hi_ = lo, (hi if hi > lo else lo + 1.0)
        y = np.nan_to_num((scores - lo) / (self.score_hi_ - lo))
        u = y
        if self.lambda_train and train.has_costs:
            costs = train.cost_matrix()
            u = y - self.lambda_train * np.nan_to_num(costs / np.median(costs[known]))
        with np.errstate(invalid="ignore"):
            self.mean_quality_ = np.where(known.any(axis=0), np.nanmean(scores, axis=0), lo)
        fit_rows, val_rows = holdout_split(train, self.val_fraction, self.random_state)
        with single_thread():
            W, c, self.train_stats_ = self._train(Z, u, known, fit_rows, val_rows)
        self.weight_, self.intercept_ = W, c
        S = Z @ W + c
        Sc = S - S.mean(axis=1, keepdims=True)
        Yc = np.where(known, scores - np.nanmean(np.where(known, scores, np.nan), axis=1, keepdims=True), 0.0)
        Sk = np.where(known, Sc, 0.0)
        self.scale_out_ = float(max((Sk * Yc).sum() / max((Sk**2).sum(), 1e-12), 1e-6))

    def _solve(self, Zt, Ut, Kt, rows, l2: float):
        """The convex objective (linear scores, convex loss, L2) solved by full-batch L-BFGS."""
        import torch

        W = torch.zeros((Zt.shape[1], Ut.shape[1]), requires_grad=True)
        c = torch.zeros(Ut.shape[1], requires_grad=True)
        opt = torch.optim.LBFGS([W, c], lr=1.0, max_iter=self.max_iter, history_size=20, line_search_fn="strong_wolfe")
        r = torch.as_tensor(rows)

        def closure():
            opt.zero_grad()
            loss = _loss(self.loss, Zt[r] @ W + c, Ut[r], Kt[r], self.tau) + l2 * (W**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return W.detach(), c.detach()

    def _train(self, Z, u, known, fit_rows, val_rows):
        """L2 strength chosen on a grouped hold-out of the training rows (its loss), then refitted."""
        import torch

        Zt = torch.as_tensor(Z, dtype=torch.float32)
        Ut = torch.as_tensor(u, dtype=torch.float32)
        Kt = torch.as_tensor(known, dtype=torch.float32)
        grid = [float(a) for a in self.l2_grid]
        val_loss = {}
        if len(val_rows) and len(grid) > 1:
            for i, l2 in enumerate(grid):
                report("ranking heads", i, len(grid) + 1)
                W, c = self._solve(Zt, Ut, Kt, fit_rows, l2)
                v = torch.as_tensor(val_rows)
                with torch.no_grad():
                    val_loss[l2] = float(_loss(self.loss, Zt[v] @ W + c, Ut[v], Kt[v], self.tau))
            self.l2_ = min(val_loss, key=val_loss.get)
        else:
            self.l2_ = grid[len(grid) // 2]
        W, c = self._solve(Zt, Ut, Kt, np.arange(len(Z)), self.l2_)
        report("ranking heads", len(grid) + 1, len(grid) + 1)
        stats = {"l2": self.l2_, **{f"val_loss@{k:g}": v for k, v in val_loss.items()}}
        return W.numpy().astype(np.float32), c.numpy().astype(float), stats

    def predict_features(self, Z: np.ndarray) -> np.ndarray:
        S = np.asarray(Z, dtype=np.float32) @ self.weight_ + self.intercept_
        base = float(np.mean(self.mean_quality_))
        return base + self.scale_out_ * (S - S.mean(axis=1, keepdims=True))

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        X = compute(self.features, prompts, max_tokens=self.max_tokens)
        return self.predict_features((X - self.mean_) / self.scale_)

    def _get_state(self):
        arrays = {"mean": self.mean_, "scale": self.scale_, "weight": self.weight_, "intercept": self.intercept_,
                  "mean_quality": np.asarray(self.mean_quality_, dtype=float)}
        meta = {"scale_out": self.scale_out_, "score_lo": self.score_lo_, "score_hi": self.score_hi_, "l2": self.l2_,
                "train": {k: float(v) for k, v in self.train_stats_.items()}}
        return arrays, meta

    def _set_state(self, arrays, meta):
        self.mean_ = np.asarray(arrays["mean"], dtype=np.float32)
        self.scale_ = np.asarray(arrays["scale"], dtype=np.float32)
        self.weight_ = np.asarray(arrays["weight"], dtype=np.float32)
        self.intercept_ = np.asarray(arrays["intercept"], dtype=float)
        self.mean_quality_ = np.asarray(arrays["mean_quality"], dtype=float)
        m = len(self.experts_)
        if self.weight_.shape != (len(self.mean_), m) or self.intercept_.shape != (m,):
            raise ValueError(f"ranking head has shape {self.weight_.shape}; expected ({len(self.mean_)}, {m})")
        self.scale_out_, self.l2_ = float(meta["scale_out"]), float(meta.get("l2", 0.0))
        self.score_lo_, self.score_hi_ = float(meta["score_lo"]), float(meta["score_hi"])
        self.train_stats_ = dict(meta.get("train") or {})
