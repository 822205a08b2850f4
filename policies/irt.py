"""Multidimensional item response theory: query difficulty and discrimination from the prompt,
one ability vector per expert.

    P(expert e answers query q well) = σ( a(q) · θ_e + β_e − b(q) )

``a(q) ∈ R^D`` (discrimination: which skills the query tests) and ``b(q)`` (difficulty) are
linear maps of the top ``n_components`` principal components of the query's features
(``policies.features``: MiniLM, activations, or both); each expert has an ability vector
``θ_e`` and an offset ``β_e``. Fitted on every known outcome of the training matrix (binary
cross-entropy, soft targets for graded scores, weight decay, early stopping on a grouped
hold-out), as RouteLLM's matrix factorisation is, plus the difficulty term that makes a query
hard for everyone.

An expert added later gets its ability from a few calibrated answers (``add_expert``): with the
query side frozen, (θ, β) is the MAP estimate of a logistic regression under a Gaussian prior
fitted to the training experts' abilities, so zero answers give the average expert and each
answer moves it toward the new model's own profile. ``exclude_models`` + ``calibration_answers``
run exactly that inside ``fit`` (the unseen-model benchmark): excluded models are left out of the
main fit and calibrated from that many of their training answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import PolicyError
from core.types import ExpertInfo
from policies.base import Policy
from policies.features import compute, standardiser
from policies.neural import TrainConfig, holdout_split, train_masked


def _build(d_in: int, n_experts: int, dim: int):
    import torch

    class _IRT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.discrimination = torch.nn.Linear(d_in, dim)
            self.difficulty = torch.nn.Linear(d_in, 1)
            self.ability = torch.nn.Parameter(torch.randn(n_experts, dim) * dim**-0.5)
            self.offset = torch.nn.Parameter(torch.zeros(n_experts))

        def forward(self, x):
            return self.discrimination(x) @ self.ability.T + self.offset - self.difficulty(x)

    return _IRT()


class IRTPolicy(Policy):
    name = "irt"
    requires_training = True
    reads_prompt = True

    def __init__(
        self,
        features: str = "minilm",
        dim: int = 8,
        n_components: int = 32,
        epochs: int = 300,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 256,
        patience: int = 15,
        val_fraction: float = 0.1,
        prior_strength: float = 1.0,
        exclude_models: tuple[str, ...] = (),
        calibration_answers: int = 0,
        max_tokens: int = 64,
        random_state: int = 0,
    ) -> None:
        self.features = features
        self.dim = dim
        self.n_components = n_components
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.prior_strength = prior_strength
        self.exclude_models = exclude_models
        self.calibration_answers = calibration_answers
        self.max_tokens = max_tokens
        self.random_state = random_state

    def _z(self, prompts: Sequence[str]) -> np.ndarray:
        X = compute(self.features, prompts, max_tokens=self.max_tokens)
        return ((X - self.mean_) / self.scale_) @ self.basis_

    # ---- fitting ------------------------------------------------------------------------------
    def _fit(self, train) -> None:
        import torch

        names = self.expert_names
        unknown = sorted(set(self.exclude_models) - set(names))
        if unknown:
            raise PolicyError(f"policy 'irt': exclude_models {unknown} are not experts of this fit; experts: {names}")
        X = compute(self.features, train.prompts, max_tokens=self.max_tokens)
        self.mean_, self.scale_ = standardiser(X)
        Z = (X - self.mean_) / self.scale_
        # the query side reads the top principal components (one common scale, so the strong
        # directions stay strong): fewer weights to over-fit
        k = int(min(self.n_components, Z.shape[1], len(Z) - 1))
        _, sv, vt = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
        self.basis_ = (vt[:k].T / np.sqrt(np.mean(sv[:k] ** 2) / len(Z))).astype(np.float32)
        Z = Z @ self.basis_
        lo, hi = float(np.nanmin(train.scores)), float(np.nanmax(train.scores))
        self.score_lo_, self.score_hi_ = lo, (hi if hi > lo else lo + 1.0)
        Y = (train.scores - self.score_lo_) / (self.score_hi_ - self.score_lo_)
        excluded = np.array([n in set(self.exclude_models) for n in names])
        seen = np.flatnonzero(~excluded)
        if not len(seen):
            raise PolicyError("policy 'irt': every expert is excluded; nothing to learn the query side from")
        known = ~np.isnan(Y[:, seen])
        torch.manual_seed(self.random_state)
        net = _build(Z.shape[1], len(seen), self.dim)
        fit_rows, val_rows = holdout_split(train, self.val_fraction, self.random_state)
        cfg = TrainConfig(self.epochs, self.lr, self.weight_decay, self.batch_size, self.patience, self.val_fraction,
                          self.random_state)
        self.train_stats_ = train_masked(net, Z, np.nan_to_num(Y[:, seen]), known, fit_rows, val_rows, cfg)
        self.disc_w_ = net.discrimination.weight.detach().numpy().T.copy()  # (d, D)
        self.disc_b_ = net.discrimination.bias.detach().numpy().copy()
        self.diff_w_ = net.difficulty.weight.detach().numpy()[0].copy()  # (d,)
        self.diff_b_ = float(net.difficulty.bias.detach().numpy()[0])
        ability = np.zeros((len(names), self.dim))
        offset = np.zeros(len(names))
        ability[seen] = net.ability.detach().numpy()
        offset[seen] = net.offset.detach().numpy()
        self.ability_, self.offset_ = ability, offset
        self._fit_prior(seen)
        self.calibrated_: dict[str, int] = {}
        rng = np.random.default_rng(self.random_state)
        for j in np.flatnonzero(excluded):  # unseen models: a few answers each, or none (the prior)
            rows = np.flatnonzero(~np.isnan(Y[:, j]))
            take = rng.choice(rows, size=min(int(self.calibration_answers), len(rows)), replace=False)
            self.ability_[j], self.offset_[j] = self._calibrate(Z[take], Y[take, j])
            self.calibrated_[names[j]] = int(len(take))

    def _fit_prior(self, seen: np.ndarray) -> None:
        """Gaussian prior over (θ, β): the training experts' mean and (shrunk) covariance."""
        P = np.hstack([self.ability_[seen], self.offset_[seen, None]])
        self.prior_mean_ = P.mean(axis=0)
        cov = np.cov(P.T) if len(P) > 1 else np.eye(P.shape[1])
        cov = np.atleast_2d(cov)
        # few training experts make a degenerate covariance: add the mean variance in every direction
        self.prior_cov_ = cov + (np.trace(cov) / cov.shape[0] + 1e-3) * np.eye(cov.shape[0])

    def _query_side(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return Z @ self.disc_w_ + self.disc_b_, Z @ self.diff_w_ + self.diff_b_

    def _calibrate(self, Z: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[np.ndarray, float]:
        """MAP (θ, β) of one expert from its answers (y in [0, 1]) by Newton's method."""
        mu = self.prior_mean_
        if not len(Z):
            return mu[:-1].copy(), float(mu[-1])
        A, b = self._query_side(Z)
        F = np.hstack([A, np.ones((len(A), 1))])  # logit = F·p − b
        prec = np.linalg.inv(self.prior_cov_) * self.prior_strength
        p = mu.copy()
        for _ in range(iters):
            s = 1.0 / (1.0 + np.exp(-(F @ p - b)))
            grad = F.T @ (s - y) + prec @ (p - mu)
            H = (F * (s * (1 - s))[:, None]).T @ F + prec
            step = np.linalg.solve(H, grad)
            p -= step
            if np.abs(step).max() < 1e-6:
                break
        return p[:-1], float(p[-1])

    def add_expert(self, expert: ExpertInfo, prompts: Sequence[str], outcomes: Sequence[float]) -> IRTPolicy:
        """A copy that also scores ``expert``, its ability calibrated from its answers to ``prompts``
        (outcomes on the training scale); no answers: the average training expert."""
        self._check_fitted()
        from policies.costs import CostModel

        y = (np.asarray(outcomes, dtype=float) - self.score_lo_) / (self.score_hi_ - self.score_lo_)
        theta, beta = self._calibrate(self._z(prompts) if len(prompts) else np.zeros((0, self.basis_.shape[1])), y)
        policy = self.clone()
        policy.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_")})
        policy.experts_ = [*self.experts_, expert]
        policy.ability_ = np.vstack([self.ability_, theta])
        policy.offset_ = np.r_[self.offset_, beta]
        fresh = CostModel.from_prices([expert])
        policy.cost_model_ = CostModel(self.cost_model_.kind, np.r_[self.cost_model_.intercept, fresh.intercept],
                                       np.r_[self.cost_model_.slope, fresh.slope])
        policy.calibrated_ = {**self.calibrated_, expert.name: len(prompts)}
        return policy

    # ---- prediction -----------------------------------------------------------------------------
    def predict_features(self, Z: np.ndarray) -> np.ndarray:
        A, b = self._query_side(Z)
        logit = A @ self.ability_.T + self.offset_[None, :] - b[:, None]
        return self.score_lo_ + (self.score_hi_ - self.score_lo_) / (1.0 + np.exp(-logit))

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        return self.predict_features(self._z(prompts))

    def difficulty(self, prompts: Sequence[str]) -> np.ndarray:
        """Predicted difficulty b(q) per prompt (higher: harder for every expert)."""
        return self._query_side(self._z(prompts))[1]

    # ---- artifacts ------------------------------------------------------------------------------
    def _get_state(self):
        arrays = {"mean": self.mean_, "scale": self.scale_, "basis": self.basis_, "disc_w": self.disc_w_, "disc_b": self.disc_b_,
                  "diff_w": self.diff_w_, "ability": self.ability_, "offset": self.offset_,
                  "prior_mean": self.prior_mean_, "prior_cov": self.prior_cov_}
        meta = {"diff_b": self.diff_b_, "score_lo": self.score_lo_, "score_hi": self.score_hi_,
                "calibrated": self.calibrated_, "train": {k: float(v) for k, v in self.train_stats_.items()}}
        return arrays, meta

    def _set_state(self, arrays, meta):
        for key in ("mean", "scale", "basis", "disc_w", "disc_b", "diff_w", "ability", "offset", "prior_mean", "prior_cov"):
            setattr(self, key + "_", np.asarray(arrays[key], dtype=np.float32 if key in ("mean", "scale", "basis") else float))
        m = len(self.experts_)
        if self.ability_.shape != (m, self.dim) or self.disc_w_.shape != (self.basis_.shape[1], self.dim):
            raise ValueError(f"IRT abilities {self.ability_.shape} / discrimination {self.disc_w_.shape} do not fit "
                             f"{m} experts of dimension {self.dim}")
        self.diff_b_ = float(meta["diff_b"])
        self.score_lo_, self.score_hi_ = float(meta["score_lo"]), float(meta["score_hi"])
        self.calibrated_ = {str(k): int(v) for k, v in (meta.get("calibrated") or {}).items()}
        self.train_stats_ = dict(meta.get("train") or {})

