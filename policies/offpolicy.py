"""Off-policy estimates of a candidate policy's value on logged bandit feedback (numpy only).

Logged traffic shows one outcome per request: the chosen expert's. A request i was routed to
expert a_i with probability p_i (its logged propensity); a candidate policy π would have chosen
that expert with probability π_i = π(a_i | x_i). With importance weights w_i = π_i / p_i:

* ``ips``: inverse propensity scoring, V = mean(w·r). Unbiased when every action π may take had
  p > 0; its variance grows with the weights.
* ``snips``: self-normalised IPS, V = Σ w·r / Σ w. Slightly biased, much steadier when the
  weights are large or their mean drifts from 1 (a candidate that rarely agrees with the log).
* ``dr``: doubly robust, V = mean(v̂ + w·(r − q̂)), where q̂ = a reward model's prediction for the
  logged action and v̂ = Σ_e π(e|x)·q̂(x, e) its value under the candidate. Unbiased if either
  the propensities or the reward model are right; a good q̂ shrinks the variance.
* ``dm``: the direct method, mean(v̂): the reward model alone (biased, reported for comparison).

Deterministic candidates (π_i ∈ {0, 1}) are the common case: only the rows where the candidate
agrees with the log carry weight. Weights can be clipped at ``clip`` (a bias towards zero for
IPS traded for variance; the share of clipped rows is reported).

Intervals: by default the central limit theorem on the per-row terms (``ci="clt"``; for SNIPS
the delta method of the ratio), or a percentile bootstrap over rows (``ci="bootstrap"``).
The same estimators apply to cost: pass the logged cost as the reward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

METHODS = ("ips", "snips", "dr", "dm")


@dataclass(frozen=True)
class Estimate:
    """One estimate of a policy's value with its (1 − α) interval and weight diagnostics."""

    method: str
    value: float
    lo: float
    hi: float
    se: float
    n: int
    ci: str  # "clt" | "bootstrap" | "none"
    ess: float = float("nan")  # effective sample size of the importance weights, (Σw)² / Σw²
    clipped: float = 0.0  # share of rows whose weight hit the clip
    agree: float = float("nan")  # mean probability the candidate gives the logged action

    def covers(self, truth: float) -> bool:
        return bool(self.lo <= truth <= self.hi)

    def as_dict(self) -> dict[str, float | int | str]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def importance_weights(target_prob: np.ndarray, logged_prob: np.ndarray,
                       clip: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """w = π(a|x) / p(a|x), optionally clipped at ``clip``; also the mask of clipped rows.

    A logged propensity of 0 (or missing) for a chosen action is a broken log: ValueError.
    """
    pi = np.asarray(target_prob, dtype=float)
    p = np.asarray(logged_prob, dtype=float)
    if pi.shape != p.shape:
        raise ValueError(f"target and logged probabilities differ in shape: {pi.shape} vs {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p <= 0) or np.any(p > 1 + 1e-9):
        raise ValueError("logged propensities of the chosen actions must lie in (0, 1]")
    if np.any(pi < 0) or np.any(pi > 1 + 1e-9):
        raise ValueError("target probabilities must lie in [0, 1]")
    w = pi / p
    clipped = np.zeros(w.shape, dtype=bool)
    if clip is not None:
        clipped = w > clip
        w = np.minimum(w, clip)
    return w, clipped


def _bootstrap(terms: np.ndarray, weights: np.ndarray | None, level: float, n_boot: int,
               seed: int) -> tuple[float, float, float]:
    """Percentile interval of mean(terms) (or Σterms/Σweights when ``weights``), Poisson bootstrap.

    Poisson(1) row counts approximate multinomial resampling and need no (n_boot × n) index
    table: boots are drawn in blocks so memory stays bounded on a million rows.
    """
    rng = np.random.default_rng(seed)
    n = len(terms)
    stats = np.empty(n_boot)
    block = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        counts = rng.poisson(1.0, size=(b, n)).astype(float)
        num = counts @ terms
        den = counts @ weights if weights is not None else counts.sum(axis=1)
        stats[start : start + b] = num / np.where(den > 0, den, np.nan)
    stats = stats[np.isfinite(stats)]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha]) if len(stats) else (np.nan, np.nan)
    return float(lo), float(hi), float(stats.std(ddof=1)) if len(stats) > 1 else float("nan")


def _finish(method: str, value: float, terms: np.ndarray, se_clt: float, *, w: np.ndarray | None,
            clipped: np.ndarray | None, pi: np.ndarray | None, level: float, ci: str, n_boot: int, seed: int,
            ratio_weights: np.ndarray | None = None) -> Estimate:
    n = len(terms)
    if ci == "bootstrap" and n > 1:
        lo, hi, se = _bootstrap(terms, ratio_weights, level, n_boot, seed)
    elif ci == "clt":
        se = se_clt
        half = _z(level) * se
        lo, hi = value - half, value + half
    else:
        raise ValueError(f"ci must be 'clt' or 'bootstrap', not {ci!r}")
    ess = float(w.sum() ** 2 / (w**2).sum()) if w is not None and (w**2).sum() > 0 else float("nan")
    return Estimate(method=method, value=float(value), lo=float(lo), hi=float(hi), se=float(se), n=n, ci=ci, ess=ess,
                    clipped=float(clipped.mean()) if clipped is not None and n else 0.0,
                    agree=float(pi.mean()) if pi is not None and n else float("nan"))


def _check(reward: np.ndarray, *others: np.ndarray) -> np.ndarray:
    r = np.asarray(reward, dtype=float)
    if r.ndim != 1 or not len(r):
        raise ValueError("off-policy estimates need at least one logged row")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite (drop rows without feedback first)")
    for o in others:
        if np.shape(o) != r.shape:
            raise ValueError(f"every per-row array must have shape {r.shape}, got {np.shape(o)}")
    return r


def ips(reward, target_prob, logged_prob, *, clip: float | None = None, level: float = 0.95, ci: str = "clt",
        n_boot: int = 500, seed: int = 0) -> Estimate:
    """Inverse propensity scoring: mean(w · r)."""
    r = _check(reward, target_prob, logged_prob)
    w, clipped = importance_weights(target_prob, logged_prob, clip)
    terms = w * r
    se = float(terms.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else float("nan")
    return _finish("ips", float(terms.mean()), terms, se, w=w, clipped=clipped, pi=np.asarray(target_prob, float),
                   level=level, ci=ci, n_boot=n_boot, seed=seed)


def snips(reward, target_prob, logged_prob, *, clip: float | None = None, level: float = 0.95, ci: str = "clt",
          n_boot: int = 500, seed: int = 0) -> Estimate:
    """Self-normalised IPS: Σ w·r / Σ w; the delta method gives its standard error."""
    r = _check(reward, target_prob, logged_prob)
    w, clipped = importance_weights(target_prob, logged_prob, clip)
    total = float(w.sum())
    pi = np.asarray(target_prob, float)
    if total <= 0:  # the candidate never agrees with the log: nothing to say
        return Estimate("snips", float("nan"), float("nan"), float("nan"), float("nan"), len(r), ci, 0.0,
                        float(clipped.mean()), float(pi.mean()))
    value = float((w * r).sum() / total)
    se = float(np.sqrt(((w * (r - value)) ** 2).sum()) / total)
    return _finish("snips", value, w * r, se, w=w, clipped=clipped, pi=pi, level=level, ci=ci, n_boot=n_boot,
                   seed=seed, ratio_weights=w)


def doubly_robust(reward, target_prob, logged_prob, q_logged, v_target, *, clip: float | None = None,
                  level: float = 0.95, ci: str = "clt", n_boot: int = 500, seed: int = 0) -> Estimate:
    """Doubly robust: mean(v̂ + w · (r − q̂)).

    ``q_logged``: the reward model's prediction for the logged action of each row;
    ``v_target``: Σ_e π(e|x)·q̂(x, e), the reward model's value of the candidate on each row.
    """
    r = _check(reward, target_prob, logged_prob, q_logged, v_target)
    w, clipped = importance_weights(target_prob, logged_prob, clip)
    terms = np.asarray(v_target, float) + w * (r - np.asarray(q_logged, float))
    se = float(terms.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else float("nan")
    return _finish("dr", float(terms.mean()), terms, se, w=w, clipped=clipped, pi=np.asarray(target_prob, float),
                   level=level, ci=ci, n_boot=n_boot, seed=seed)


def direct_method(v_target, *, level: float = 0.95) -> Estimate:
    """The reward model's own estimate, mean(v̂). Its interval covers sampling noise only, not the model's bias."""
    v = _check(v_target)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return _finish("dm", float(v.mean()), v, se, w=None, clipped=None, pi=None, level=level, ci="clt", n_boot=0, seed=0)


def evaluate_policy(reward: np.ndarray, action: np.ndarray, logged_prob: np.ndarray, target: np.ndarray,
                    q_hat: np.ndarray | None = None, *, clip: float | None = None, level: float = 0.95,
                    ci: str = "clt", n_boot: int = 500, seed: int = 0) -> dict[str, Estimate]:
    """Every estimator at once for a candidate given as action probabilities.

    ``target`` (n × K): the candidate's probability of each action per row (one-hot for a
    deterministic policy); ``action`` (n,): index of the logged action; ``q_hat`` (n × K,
    optional): a reward model, which enables ``dr`` and ``dm``.
    """
    target = np.asarray(target, dtype=float)
    action = np.asarray(action, dtype=np.int64)
    rows = np.arange(len(action))
    pi = target[rows, action]
    kw = dict(clip=clip, level=level, ci=ci, n_boot=n_boot, seed=seed)
    out = {"ips": ips(reward, pi, logged_prob, **kw), "snips": snips(reward, pi, logged_prob, **kw)}
    if q_hat is not None:
        q_hat = np.asarray(q_hat, dtype=float)
        v = (target * q_hat).sum(axis=1)
        out["dr"] = doubly_robust(reward, pi, logged_prob, q_hat[rows, action], v, **kw)
        out["dm"] = direct_method(v, level=level)
    return out


def one_hot(choice: np.ndarray, k: int) -> np.ndarray:
    """A deterministic policy's choices (n,) as action probabilities (n × k)."""
    choice = np.asarray(choice, dtype=np.int64)
    out = np.zeros((len(choice), k))
    out[np.arange(len(choice)), choice] = 1.0
    return out


def unsupported_mass(target: np.ndarray, logged: np.ndarray) -> float:
    """Mean probability the candidate puts on actions the logging policy never takes there
    (logged propensity 0). IPS cannot see those choices: a large share means the log does not
    support the candidate (deterministic logging, or no exploration), and only the reward model
    in DR speaks for them."""
    target = np.asarray(target, dtype=float)
    return float(np.where(np.asarray(logged) > 0, 0.0, target).sum(axis=1).mean()) if len(target) else 0.0


def mean_reward_model(reward: np.ndarray, action: np.ndarray, logged_prob: np.ndarray, k: int) -> np.ndarray:
    """The simplest reward model: each action's self-normalised IPS mean reward (k,).

    Weights 1/p undo the logging policy's preference (an expert chosen where it is weak would
    otherwise look weak everywhere); actions never logged get the overall mean.
    """
    r = np.asarray(reward, float)
    a = np.asarray(action, np.int64)
    w = 1.0 / np.asarray(logged_prob, float)
    num = np.bincount(a, weights=w * r, minlength=k)
    den = np.bincount(a, weights=w, minlength=k)
    overall = float(r.mean()) if len(r) else 0.0
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), overall)
