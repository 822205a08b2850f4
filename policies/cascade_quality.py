"""Quality estimates for every state of a cascade: μ and σ of each expert given the answers in hand.

Two sources behind one shape (``tables(R) -> (μ, σ)``, each queries × experts, R a bitmask of
the experts run):

* ``AnswerQuality`` reads the answers. For an expert in R: its post-hoc estimate, a calibrator of
  the estimator's features fitted per (expert, other experts in hand) on train (isotonic or Platt),
  stacked with the expert's ex-ante estimate by a logistic model — the paper's post-hoc models read
  the query's features too, so an uninformative answer leaves the estimate where the prompt put
  it instead of replacing it with a base rate. For an expert not
  run yet: with nothing in hand the ex-ante estimate of a query-level policy, recalibrated per
  expert by a linear fit on out-of-fold predictions (as the paper does); with answers in hand a
  logistic model of [its ex-ante estimate, the post-hoc estimates in hand] (an easy question for
  the small expert tends to be easy for the big one). σ of an expert not run is how much its
  estimate moves once it runs: the spread, on train, of (estimate before − post-hoc after), the
  paper's default covariance rule. Every training value used downstream is cross-fitted.
* ``SimulatedQuality`` is the paper's simulation for matrices without answers: ex-ante and
  post-hoc signals are the true score plus Gaussian noise of given sizes, recalibrated per expert
  by linear fits on train (the paper's code fits them on all rows; here train only); the post-hoc
  estimate reads both signals (``combine``; the paper's reads the post-hoc one alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from policies.cascade_engine import Tables, members
from policies.posthoc import AnswerView, Calibrator, Estimator, brier, fit_calibrator, parse_logprobs


def _linear(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return (float(np.nanmean(y)) if ok.any() else 0.0), 0.0
    slope, intercept = np.polyfit(x[ok], y[ok], 1)
    return float(intercept), float(slope)


def _linear2(x1: np.ndarray, x2: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares y ≈ c + b1·x1 + b2·x2 on the finite rows (intercept, b1, b2)."""
    ok = np.isfinite(x1) & np.isfinite(x2) & np.isfinite(y)
    if ok.sum() < 3:
        return (float(np.nanmean(y)) if ok.any() else 0.0), 0.0, 0.0
    A = np.column_stack([np.ones(ok.sum()), x1[ok], x2[ok]])
    coef, *_ = np.linalg.lstsq(A, y[ok], rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])


def _stack(signal: np.ndarray, ante: np.ndarray) -> np.ndarray:
    """Features of the stacked post-hoc estimate: the answer signal's log-odds and the ex-ante estimate."""
    p = np.clip(signal, 1e-4, 1 - 1e-4)
    return np.column_stack([np.log(p / (1 - p)), ante])


def _masks(m: int, max_size: int, exclude: int = -1) -> list[int]:
    """Bitmasks of the subsets of the m experts (without ``exclude``) with 1..max_size members."""
    pool = [j for j in range(m) if j != exclude]
    return [sum(1 << j for j in c) for k in range(1, max_size + 1) for c in combinations(pool, k)]


# ---- the paper's simulation -----------------------------------------------------------------------
@dataclass
class SimulatedQuality:
    """``combine``: the post-hoc estimate is a linear fit of the score on BOTH noisy signals (once an
    expert ran, its ex-ante signal is still known), so a post-hoc signal noisier than the ex-ante one
    cannot make the estimate worse; ``combine=False`` is the paper's code (post-hoc signal alone)."""

    noise_ante: float
    noise_post: float
    seed: int = 0
    combine: bool = True
    ante_: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (m, [intercept, slope])
    post_: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (m, [intercept, slope post, slope ante])
    sigma_: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (m,)

    def _noisy(self, scores: np.ndarray, salt: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, salt])
        a = scores + rng.normal(0.0, self.noise_ante, scores.shape)
        p = scores + rng.normal(0.0, self.noise_post, scores.shape)
        return a, p

    def _apply(self, coef: np.ndarray, x: np.ndarray) -> np.ndarray:
        return coef[None, :, 0] + coef[None, :, 1] * x

    def _post(self, a: np.ndarray, p: np.ndarray) -> np.ndarray:
        c = self.post_
        return c[None, :, 0] + c[None, :, 1] * p + c[None, :, 2] * a

    def fit(self, scores: np.ndarray) -> SimulatedQuality:
        a, p = self._noisy(scores, 0)
        m = scores.shape[1]
        self.ante_ = np.array([_linear(a[:, j], scores[:, j]) for j in range(m)])
        if self.combine:
            self.post_ = np.array([_linear2(p[:, j], a[:, j], scores[:, j]) for j in range(m)])
        else:
            self.post_ = np.array([[*_linear(p[:, j], scores[:, j]), 0.0] for j in range(m)])
        diff = self._apply(self.ante_, a) - self._post(a, p)
        self.sigma_ = np.array([np.nanstd(diff[:, j]) for j in range(m)])
        return self

    def estimates(self, scores: np.ndarray, salt: int) -> tuple[np.ndarray, np.ndarray]:
        """Recalibrated (ex-ante, post-hoc) estimates of rows whose true scores are given."""
        a, p = self._noisy(scores, salt)
        return self._apply(self.ante_, a), self._post(a, p)

    def tables(self, ante: np.ndarray, post: np.ndarray) -> Tables:
        def table(R: int) -> tuple[np.ndarray, np.ndarray]:
            run = np.array([bool(R >> j & 1) for j in range(ante.shape[1])])
            mu = np.where(run[None, :], post, ante)
            return np.nan_to_num(mu, nan=-1e9), np.where(run[None, :], 0.0, self.sigma_[None, :]).repeat(len(mu), 0)
        return _cached(table)


def _cached(fn):
    store: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def table(R: int) -> tuple[np.ndarray, np.ndarray]:
        if R not in store:
            store[R] = fn(R)
        return store[R]
    return table


# ---- estimates from the answers ----------------------------------------------------------------------
class ViewGrid:
    """The answers of a set of queries, as ``AnswerView``s per (row, expert), parsed once."""

    def __init__(self, prompts: Sequence[str], experts: Sequence[str], answers: np.ndarray | None,
                 logprobs: np.ndarray | None, judge: np.ndarray | None = None) -> None:
        n, m = len(prompts), len(experts)
        self.n, self.m = n, m
        self.cache: dict = {}
        self.views = [[AnswerView(prompts[i], None if answers is None else answers[i, j], experts[j],
                                  None if logprobs is None else parse_logprobs(logprobs[i, j]),
                                  None if judge is None or not np.isfinite(judge[i, j]) else float(judge[i, j]))
                       for j in range(m)] for i in range(n)]

    @classmethod
    def of(cls, views: Sequence[Sequence[AnswerView]]) -> ViewGrid:
        grid = cls.__new__(cls)
        grid.views = [list(v) for v in views]
        grid.n, grid.m = len(grid.views), len(grid.views[0]) if grid.views else 0
        grid.cache = {}
        return grid

    def features(self, est: Estimator, e: int, ctx: int, rows: Sequence[int] | None = None) -> np.ndarray:
        rows = range(self.n) if rows is None else rows
        others = members(ctx, self.m)
        return np.array([est.features(self.views[i][e], [self.views[i][r] for r in others], self.cache) for i in rows],
                        dtype=float)


@dataclass
class AnswerQuality:
    estimator: Estimator
    calibration: str = "isotonic"
    max_depth: int = 3
    folds: int = 5
    seed: int = 0
    ante_: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    post_: dict[tuple[int, int], Calibrator] = field(default_factory=dict)  # (expert, others in hand) → calibrator
    stack_: dict[tuple[int, int], Calibrator] = field(default_factory=dict)  # [calibrated answer signal, ex-ante] → μ
    cond_: dict[tuple[int, int], Calibrator] = field(default_factory=dict)  # (expert not run, R) → calibrator
    sigma_: dict[tuple[int, int], float] = field(default_factory=dict)  # (expert not run, R) → σ
    oof_brier_: float = float("nan")

    def ctx(self, R: int) -> int:
        return R if self.estimator.uses_others else 0

    def post_keys(self, m: int) -> list[tuple[int, int]]:
        size = self.max_depth - 1 if self.estimator.uses_others else 0
        return [(e, c) for e in range(m) for c in [0, *_masks(m, size, exclude=e)]]

    def _folds(self, n: int) -> np.ndarray:
        return np.random.default_rng(self.seed).permutation(n) % max(2, self.folds)

    def _crossfit(self, X: np.ndarray, y: np.ndarray, ok: np.ndarray, method: str, fold: np.ndarray
                  ) -> tuple[Calibrator, np.ndarray]:
        """Calibrator on all usable rows, and out-of-fold predictions for every row."""
        oof = np.full(len(y), np.nan)
        for f in np.unique(fold):
            tr, te = ok & (fold != f), fold == f
            oof[te] = fit_calibrator(X[tr], y[tr], method).predict(X[te])
        return fit_calibrator(X[ok], y[ok], method), oof

    def fit(self, grid: ViewGrid, scores: np.ndarray, ante_raw: np.ndarray, *, posthoc_only: bool = False) -> AnswerQuality:
        """``ante_raw``: the ex-ante policy's OUT-OF-FOLD predictions on these training rows.
        ``posthoc_only``: stop after the post-hoc calibrators (enough to compare estimators)."""
        n, m = scores.shape
        known = np.isfinite(scores)
        fold = self._folds(n)
        self.ante_ = np.array([_linear(ante_raw[:, j], scores[:, j]) for j in range(m)])
        ante = self.ante_[None, :, 0] + self.ante_[None, :, 1] * ante_raw
        post_oof: dict[tuple[int, int], np.ndarray] = {}
        cond_oof: dict[tuple[int, int], np.ndarray] = {}
        errors = []
        for e, c in self.post_keys(m):
            ok = known[:, e] & known[:, members(c, m)].all(axis=1) if c else known[:, e]
            self.post_[(e, c)], signal = self._crossfit(grid.features(self.estimator, e, c), scores[:, e], ok,
                                                        self.calibration, fold)
            # the post-hoc estimate stacks the answer's calibrated signal on the ex-ante estimate, so reading
            # an answer never forgets what the prompt told (a weak signal leaves the estimate where it was)
            self.stack_[(e, c)], post_oof[(e, c)] = self._crossfit(_stack(signal, ante[:, e]), scores[:, e], ok,
                                                                   "logistic", fold)
            errors.append(brier(post_oof[(e, c)][ok], scores[ok, e]))
        self.oof_brier_ = float(np.nanmean(errors)) if errors else float("nan")
        if posthoc_only:
            return self
        for e in range(m):
            after = post_oof[(e, 0)]
            self.sigma_[(e, 0)] = float(np.nanstd(ante[:, e] - after)) if np.isfinite(after).any() else 0.25
            for R in _masks(m, self.max_depth - 1, exclude=e):
                run = members(R, m)
                ok = known[:, e] & known[:, run].all(axis=1)
                X = self._cond_features(ante[:, e], [post_oof[(r, self.ctx(R & ~(1 << r)))] for r in run])
                self.cond_[(e, R)], before = self._crossfit(X, scores[:, e], ok, "logistic", fold)
                after = post_oof[(e, self.ctx(R))]
                d = (before - after)[ok]
                self.sigma_[(e, R)] = float(np.nanstd(d)) if np.isfinite(d).any() else self.sigma_[(e, 0)]
                cond_oof[(e, R)] = before
        self._oof = (ante, post_oof, cond_oof)  # transient: the train rows' cross-fitted estimates
        return self

    def oof_tables(self) -> Tables:
        """μ, σ per state for the TRAINING rows from cross-fitted estimates (for fitting on train)."""
        ante, post, cond = self._oof
        m = ante.shape[1]

        def table(R: int) -> tuple[np.ndarray, np.ndarray]:
            mu, sd = ante.copy(), np.zeros_like(ante)
            for e in range(m):
                if R >> e & 1:
                    mu[:, e] = post[(e, self.ctx(R & ~(1 << e)))]
                else:
                    if R:
                        mu[:, e] = cond.get((e, R), ante[:, e])
                    sd[:, e] = self.sigma_.get((e, R), self.sigma_.get((e, 0), 0.25))
            return np.nan_to_num(mu, nan=-1e9), sd
        return _cached(table)

    @staticmethod
    def _cond_features(ante_e: np.ndarray, posts: list[np.ndarray]) -> np.ndarray:
        return np.column_stack([ante_e, *posts])

    def tables(self, grid: ViewGrid, ante_raw: np.ndarray) -> Tables:
        """μ, σ per state for the queries of ``grid``; post-hoc features read only the answers in R."""
        n, m = ante_raw.shape
        ante = self.ante_[None, :, 0] + self.ante_[None, :, 1] * ante_raw
        post: dict[tuple[int, int], np.ndarray] = {}

        def posthoc(e: int, others: int) -> np.ndarray:
            key = (e, self.ctx(others))
            if key not in post:
                key = key if key in self.post_ else (e, 0)
                signal = self.post_[key].predict(grid.features(self.estimator, e, key[1]))
                stack = self.stack_.get(key)
                post[key] = stack.predict(_stack(signal, ante[:, e])) if stack is not None else signal
            return post[key]

        def table(R: int) -> tuple[np.ndarray, np.ndarray]:
            run = members(R, m)
            mu, sd = np.empty((n, m)), np.zeros((n, m))
            for e in range(m):
                if e in run:
                    mu[:, e] = posthoc(e, R & ~(1 << e))
                elif not R:
                    mu[:, e], sd[:, e] = ante[:, e], self.sigma_.get((e, 0), 0.25)
                else:
                    cal = self.cond_.get((e, R))
                    X = self._cond_features(ante[:, e], [posthoc(r, R & ~(1 << r)) for r in run])
                    mu[:, e] = cal.predict(X) if cal is not None else ante[:, e]
                    sd[:, e] = self.sigma_.get((e, R), self.sigma_.get((e, 0), 0.25))
            return np.nan_to_num(mu, nan=-1e9), sd
        return _cached(table)

    # ---- artifacts: plain arrays + JSON ----------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays: dict[str, np.ndarray] = {"ante": self.ante_}
        methods = {}
        for kind, table in (("post", self.post_), ("stack", self.stack_), ("cond", self.cond_)):
            for (e, c), cal in table.items():
                methods[f"{kind}.{e}.{c}"] = cal.method
                arrays.update({f"{kind}.{e}.{c}.{k}": v for k, v in cal.state().items()})
        meta = {"estimator": self.estimator.name, "calibration": self.calibration, "max_depth": self.max_depth,
                "methods": methods, "sigma": {f"{e}.{R}": s for (e, R), s in self.sigma_.items()},
                "oof_brier": self.oof_brier_}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> AnswerQuality:
        from policies.posthoc import get_estimator

        q = cls(get_estimator(meta["estimator"]), meta["calibration"], int(meta["max_depth"]))
        q.ante_ = np.asarray(arrays["ante"], dtype=float)
        for key, method in meta["methods"].items():
            kind, e, c = key.split(".")
            part = {k.rsplit(".", 1)[1]: v for k, v in arrays.items() if k.startswith(key + ".")}
            {"post": q.post_, "stack": q.stack_, "cond": q.cond_}[kind][(int(e), int(c))] = Calibrator.from_state(method, part)
        q.sigma_ = {tuple(int(x) for x in k.split(".")): float(v) for k, v in meta["sigma"].items()}
        q.oof_brier_ = float(meta.get("oof_brier", float("nan")))
        return q
