"""Post-hoc quality estimators: how likely an answer in hand is right, read from the answer itself.

The contract is small. An ``AnswerView`` is one answer in hand — (prompt, answer, expert, token
logprobs, and an LLM judge's verdict when the router layer asked for one). An estimator is a pure
function ``features(view, others) -> vector`` of that answer and of the other answers already in
hand (for agreement); it never calls anything. A ``Calibrator`` turns the features into the
probability that the answer is right (the expected score for graded sets), fitted per expert on
the TRAIN rows of a calibration matrix: isotonic regression or Platt scaling for one feature,
a logistic regression (Platt's generalisation) for several. ``calibration_report`` measures each
estimator's Brier score and expected calibration error per expert on held-out rows.

Estimators (``ESTIMATORS``):

* ``logprob_mean`` — mean token logprob (the length-normalised log-likelihood);
* ``logprob_min`` — the least likely token of the answer;
* ``logprob_sum`` — the total log-likelihood (not normalised: long answers look less certain);
* ``answer_prob`` / ``entropy`` — the paper's features for multiple choice and short answers:
  the logprob of the answer's first token and the entropy of its top-k alternatives;
* ``agreement`` — the share of the other answers in hand that give the same (normalised) answer;
* ``paper`` — all of the above as one logistic model per (expert, answers in hand), with the
  pairwise agreement and Jensen–Shannon divergence of the first-token distributions
  (Dekoninck et al., "A Unified Approach to Routing and Cascading for LLMs", §5 features);
* ``judge`` — an LLM judge's verdict, obtained by the router layer (a policy never calls an expert);
* ``length`` — the answer's length in tokens, a baseline any estimator should beat;
* ``none`` — no signal at all (the expert's training mean): what a matrix without answers allows.

Labels are scores in [0, 1]: 0/1 correctness, or graded (soft labels for the logistic fits).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import PolicyError

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")
_CHOICE = re.compile(r"^\s*\(?([A-J])\)?(?:[\.\):]|\s*$)")
_CHOICE_PHRASE = re.compile(r"answer(?: is)?\s*:?\s*\(?([A-J])\)?\b")


@dataclass(frozen=True)
class AnswerView:
    """One answer in hand, as an estimator may see it."""

    prompt: str
    answer: str | None
    expert: str
    logprobs: tuple[tuple[str, float, dict[str, float] | None], ...] | None = None
    judge: float | None = None  # verdict in [0, 1] from an LLM judge, when the router layer asked one


def parse_logprobs(raw: Any) -> tuple[tuple[str, float, dict[str, float] | None], ...] | None:
    """``[[token, logprob], ...]`` or ``[[token, logprob, top], ...]`` (top: ``[[alt, lp], ...]``
    or ``{alt: lp}``), as JSON text or lists; None when absent or unreadable."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    out = []
    for item in raw or ():
        if not isinstance(item, list | tuple) or len(item) < 2 or not isinstance(item[1], int | float):
            continue
        top = None
        if len(item) > 2 and item[2]:
            pairs = item[2].items() if isinstance(item[2], dict) else item[2]
            top = {str(t): float(lp) for t, lp in pairs if isinstance(lp, int | float)}
        out.append((str(item[0]), float(item[1]), top))
    return tuple(out) or None


def normalise_answer(text: str | None) -> str:
    """A comparable form of an answer: a choice letter, else the last number, else the first
    words in lower case without punctuation."""
    if not text:
        return ""
    m = _CHOICE.match(text) or _CHOICE_PHRASE.search(text)
    if m:
        return m.group(1).upper()
    nums = _NUMBER.findall(text)
    if nums:
        try:
            v = float(nums[-1].replace(",", "").rstrip("."))
            return f"{v:g}"
        except ValueError:
            pass
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split()[:12])


# ---- features of one answer and of a pair ----------------------------------------------------
def _top_dist(lp: float, top: dict[str, float] | None, token: str) -> dict[str, float]:
    dist = dict(top or {})
    dist.setdefault(token, lp)
    probs = {t: math.exp(v) for t, v in dist.items()}
    rest = max(0.0, 1.0 - sum(probs.values()))
    if rest > 1e-9:
        probs["\x00rest"] = rest
    z = sum(probs.values())
    return {t: p / z for t, p in probs.items()}


def own_features(view: AnswerView) -> dict[str, float]:
    """Logprob statistics of one answer (NaN where the expert returned no logprobs)."""
    nan = float("nan")
    lps = view.logprobs
    n_tok = len(lps) if lps else (len((view.answer or "").split()) or 0)
    out = {"lp_mean": nan, "lp_min": nan, "lp_sum": nan, "first_lp": nan, "entropy": nan,
           "length": math.log1p(n_tok), "judge": nan if view.judge is None else float(view.judge)}
    if lps:
        vals = np.array([lp for _, lp, _ in lps], dtype=float)
        out.update(lp_mean=float(vals.mean()), lp_min=float(vals.min()), lp_sum=float(vals.sum()),
                   first_lp=float(vals[0]))
        tok, lp, top = lps[0]
        if top:
            probs = np.array(list(_top_dist(lp, top, tok).values()))
            out["entropy"] = float(-(probs * np.log(probs)).sum())
    return out


def pair_features(a: AnswerView, b: AnswerView) -> tuple[float, float]:
    """(agree, Jensen–Shannon divergence of the first-token distributions; NaN without top-k)."""
    agree = float(normalise_answer(a.answer) == normalise_answer(b.answer) and bool(a.answer))
    js = float("nan")
    if a.logprobs and b.logprobs and a.logprobs[0][2] and b.logprobs[0][2]:
        p = _top_dist(a.logprobs[0][1], a.logprobs[0][2], a.logprobs[0][0])
        q = _top_dist(b.logprobs[0][1], b.logprobs[0][2], b.logprobs[0][0])
        keys = set(p) | set(q)
        pv = np.array([p.get(k, 1e-9) for k in keys])
        qv = np.array([q.get(k, 1e-9) for k in keys])
        mid = (pv + qv) / 2
        js = float(0.5 * (pv * np.log(pv / mid)).sum() + 0.5 * (qv * np.log(qv / mid)).sum())
    return agree, js


# ---- estimators ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimator:
    """A named feature map. ``uses_others``: its features depend on the other answers in hand,
    so it is calibrated per (expert, set of other experts in hand)."""

    name: str
    own: tuple[str, ...]  # keys of own_features
    uses_others: bool = False
    pairwise: bool = False  # per other answer: agree, JS divergence and its first-token logprob
    needs: str = "logprobs"  # logprobs | answers | judge

    def features(self, view: AnswerView, others: Sequence[AnswerView] = (), cache: dict | None = None) -> np.ndarray:
        """The feature vector; ``cache`` (optional, keyed by object identity) saves recomputing the
        features of views that live as long as it does."""
        def own(v: AnswerView) -> dict[str, float]:
            if cache is None:
                return own_features(v)
            key = ("own", id(v))
            if key not in cache:
                cache[key] = own_features(v)
            return cache[key]

        def pair(a: AnswerView, b: AnswerView) -> tuple[float, float]:
            if cache is None:
                return pair_features(a, b)
            key = ("pair", id(a), id(b))
            if key not in cache:
                cache[key] = pair_features(a, b)
            return cache[key]

        f = own(view)
        vec = [f[k] for k in self.own]
        if self.uses_others and not self.pairwise:  # the share of the others that agree
            vec.append(float(np.mean([pair(view, o)[0] for o in others])) if others else float("nan"))
        if self.pairwise:
            for o in others:
                agree, js = pair(view, o)
                vec += [agree, js, own(o)["first_lp"]]
        return np.array(vec, dtype=float)


ESTIMATORS: dict[str, Estimator] = {
    "logprob_mean": Estimator("logprob_mean", ("lp_mean",)),
    "logprob_min": Estimator("logprob_min", ("lp_min",)),
    "logprob_sum": Estimator("logprob_sum", ("lp_sum",)),
    "answer_prob": Estimator("answer_prob", ("first_lp",)),
    "entropy": Estimator("entropy", ("entropy",)),
    "agreement": Estimator("agreement", (), uses_others=True, needs="answers"),
    "paper": Estimator("paper", ("first_lp", "entropy", "lp_mean", "lp_min"), uses_others=True, pairwise=True),
    "judge": Estimator("judge", ("judge",), needs="judge"),
    "length": Estimator("length", ("length",), needs="answers"),
    "none": Estimator("none", (), needs="nothing"),  # no post-hoc signal: each expert's training mean
}


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise PolicyError(f"unknown post-hoc estimator {name!r}; available: {', '.join(ESTIMATORS)}") from None


# ---- calibration -------------------------------------------------------------------------------
@dataclass
class Calibrator:
    """Features → P(right). ``isotonic``/``platt`` for one feature, ``logistic`` for several.
    Missing features are imputed with the training mean; with nothing to go on it predicts the
    training base rate. Everything it learned is plain arrays (``state``)."""

    method: str
    base_: float = 0.5
    fill_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    x_: np.ndarray = field(default_factory=lambda: np.zeros(0))  # isotonic thresholds
    y_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_: np.ndarray = field(default_factory=lambda: np.zeros(0))  # logistic standardisation
    scale_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    coef_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    intercept_: float = 0.0

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=float))
        if X.shape[0] == 0:
            return np.zeros(0)
        if X.shape[1] == 0 or not len(self.fill_):
            return np.full(len(X), self.base_)
        allnan = np.isnan(X).all(axis=1)
        X = np.where(np.isnan(X), self.fill_[None, :], X)
        if self.method == "isotonic":
            p = np.interp(X[:, 0], self.x_, self.y_) if len(self.x_) else np.full(len(X), self.base_)
        else:
            z = ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
            p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        return np.where(allnan, self.base_, p)

    def state(self) -> dict[str, np.ndarray]:
        return {"base": np.array([self.base_]), "fill": self.fill_, "x": self.x_, "y": self.y_, "mean": self.mean_,
                "scale": self.scale_, "coef": self.coef_, "intercept": np.array([self.intercept_])}

    @classmethod
    def from_state(cls, method: str, s: dict[str, np.ndarray]) -> Calibrator:
        return cls(method, float(s["base"][0]), *(np.asarray(s[k], dtype=float) for k in ("fill", "x", "y", "mean", "scale", "coef")),
                   float(s["intercept"][0]))


def fit_calibrator(X: np.ndarray, y: np.ndarray, method: str = "isotonic", *, C: float = 1.0) -> Calibrator:
    """Fit features ``X`` (n × k, NaN = missing) to scores ``y`` in [0, 1]."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    y = np.clip(np.asarray(y, dtype=float), 0.0, 1.0)
    base = float(y.mean()) if len(y) else 0.5
    k = X.shape[1] if X.ndim == 2 else 0
    usable = [j for j in range(k) if np.isfinite(X[:, j]).any()]
    if k > 1 or method not in ("isotonic", "platt"):
        method = "logistic"
    cal = Calibrator(method, base_=base)
    if not usable or len(y) < 4 or y.min() == y.max():
        return cal  # nothing to learn: the base rate
    fill = np.array([np.nanmean(X[:, j]) if np.isfinite(X[:, j]).any() else 0.0 for j in range(k)])
    cal.fill_ = fill
    Xf = np.where(np.isnan(X), fill[None, :], X)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        x = Xf[:, 0]
        up = bool(np.std(x) == 0 or np.corrcoef(x, y)[0, 1] >= 0)  # e.g. entropy: the higher, the less likely right
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=up, out_of_bounds="clip").fit(x, y)
        cal.x_, cal.y_ = np.asarray(iso.X_thresholds_, dtype=float), np.asarray(iso.y_thresholds_, dtype=float)
        return cal
    mean, scale = Xf.mean(axis=0), Xf.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    cal.mean_, cal.scale_ = mean, scale
    cal.coef_, cal.intercept_ = _logistic((Xf - mean) / scale, y, 1.0 / C)
    return cal


def _logistic(Z: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """Logistic regression with soft labels y ∈ [0, 1] and an L2 penalty on the weights
    (Newton's method; a handful of standardised features)."""
    n, k = Z.shape
    A = np.column_stack([Z, np.ones(n)])
    w = np.zeros(k + 1)
    w[-1] = np.log(np.clip(y.mean(), 1e-6, 1 - 1e-6) / np.clip(1 - y.mean(), 1e-6, 1))
    reg = np.r_[np.full(k, l2), 0.0]
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ w, -30, 30)))
        grad = A.T @ (p - y) + reg * w
        H = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:k].astype(float), float(w[-1])


# ---- how good an estimate is -----------------------------------------------------------------
def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2)) if len(y) else float("nan")


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |mean prediction − mean outcome| per equal-width bin, weighted."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    if not len(p):
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(total)


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve of p against y ≥ 0.5 (NaN when one class is missing)."""
    pos, neg = np.asarray(p)[np.asarray(y) >= 0.5], np.asarray(p)[np.asarray(y) < 0.5]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.r_[pos, neg], kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    vals = np.r_[pos, neg]
    for v in np.unique(vals):  # average ranks of ties
        tie = vals == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
