"""Bootstrap intervals for the routing metrics of DESIGN.md §5, from per-row decisions.

The harness (``policies.evaluation.harness``) reports point estimates. With its ``run_done`` hook
a benchmark keeps each policy's choices (λ × rows) and, for two-model sets, its predicted
advantage per row; this module resamples the evaluation rows (the same resamples for every
policy, so differences are *paired*) and recomputes, per resample:

* ``gap_closed``, ``quality_at_best_cost``, ``cost_to_best_quality`` and ``aiq`` — with the
  references (best single model, oracle, ``c_max``) recomputed on the resample too;
* ``apgr`` from a per-row priority (RouteLLM: the top share of rows go to the strong model):
  the predicted advantage, or, where the decision weighs per-row costs, ``sweep_priority`` (at
  how many λ of the sweep a row goes to the strong model).

Intervals are percentile intervals (2.5 %, 97.5 %) over ``n_boot`` resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Rows:
    """The evaluation rows: outcomes, costs (1 on quality-only sets) and which are known."""

    scores: np.ndarray  # (n, m), NaN unknown
    costs: np.ndarray  # (n, m)
    has_costs: bool

    @property
    def known(self) -> np.ndarray:
        return ~np.isnan(self.scores)


def subsample(data, per_split: dict[str, int], *, seed: int = 0):
    """The same seeded random rows of each named split every time (all rows of other splits);
    for expensive features, every policy of a comparison sees the same subsample."""
    rng = np.random.default_rng(seed)
    keep = []
    for split in sorted(set(data.split.tolist())):
        rows = data.rows_of(split)
        n = per_split.get(split)
        keep.append(rows if n is None or n >= len(rows) else np.sort(rng.permutation(rows)[:n]))
    return data.subset(np.sort(np.concatenate(keep)))


def parse_sample(text: str) -> dict[str, int]:
    """``train=3000,test=3000`` → {"train": 3000, "test": 3000}."""
    out = {}
    for item in [t for t in (text or "").split(",") if t]:
        split, _, n = item.partition("=")
        out[split] = int(n)
    return out


def resample_weights(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Multinomial counts (n_boot × n): resample b draws row i ``W[b, i]`` times."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float32)


def _references(rows: Rows, W: np.ndarray) -> dict[str, np.ndarray]:
    """Per resample: best single model's quality and cost, oracle quality, c_max."""
    known = rows.known
    s = np.where(known, rows.scores, 0.0)
    c = np.where(known, rows.costs, 0.0)
    cnt = W @ known.astype(np.float32)
    q_model = (W @ s) / np.maximum(cnt, 1)
    c_model = (W @ c) / np.maximum(cnt, 1)
    q_model = np.where(cnt > 0, q_model, -np.inf)
    # best quality, then the cheaper (as harness.references): a tie-break far below any quality step
    best = np.argmax(q_model - 1e-9 * c_model / max(float(np.nanmax(c_model)), 1e-12), axis=1)
    b = np.arange(len(W))
    masked = np.where(known, rows.scores, -np.inf)
    top = masked.max(axis=1)
    return {"q_best": q_model[b, best], "c_best": c_model[b, best], "q_oracle": (W @ top) / W.sum(axis=1),
            "c_max": np.max(np.where(cnt > 0, c_model, -np.inf), axis=1)}


def _hull_area(x: np.ndarray, y: np.ndarray, c_max: float) -> float:
    from policies.evaluation import metrics as M

    return M.aiq(x, y, c_max)


def sweep_distribution(choices: np.ndarray, rows: Rows, W: np.ndarray, *, aiq: bool = True) -> dict[str, np.ndarray]:
    """Bootstrap distribution of the sweep metrics of one policy (arrays of length n_boot)."""
    n = len(rows.scores)
    idx = np.arange(n)[None, :]
    realized_q = np.nan_to_num(rows.scores[idx, choices])  # (L, n)
    realized_c = rows.costs[idx, choices]
    tot = W.sum(axis=1)
    Q = (realized_q @ W.T) / tot  # (L, B)
    C = (realized_c @ W.T) / tot
    ref = _references(rows, W)
    ok = C <= ref["c_best"][None, :] * (1 + 1e-9) + 1e-12
    qabc = np.where(ok, Q, -np.inf).max(axis=0)
    qabc = np.where(np.isfinite(qabc), qabc, np.nan)
    gap = (qabc - ref["q_best"]) / np.maximum(ref["q_oracle"] - ref["q_best"], 1e-12)
    reach = Q >= ref["q_best"][None, :] - 1e-9
    ctbq = np.where(reach, C, np.inf).min(axis=0) / ref["c_best"]
    ctbq = np.where(np.isfinite(ctbq), ctbq, np.nan)
    out = {"quality_at_best_cost": qabc, "gap_closed": gap, "cost_to_best_quality": ctbq, "quality_max": Q.max(axis=0)}
    if aiq:
        if rows.has_costs:
            out["aiq"] = np.array([_hull_area(C[:, b], Q[:, b], float(ref["c_max"][b])) for b in range(len(W))])
        else:
            out["aiq"] = Q.max(axis=0)
    return out


def apgr_distribution(advantage: np.ndarray, strong: np.ndarray, weak: np.ndarray, W: np.ndarray, *,
                      n_shares: int = 101, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of APGR from a predicted advantage (strong − weak) per row.

    Rows are ordered by advantage once (ties by the harness's seeded order); a resample keeps
    that order with each row repeated as often as it was drawn.
    """
    n = len(advantage)
    tiebreak = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((tiebreak, -np.asarray(advantage, dtype=float)))
    gain = (strong - weak)[order]
    shares = np.linspace(0.0, 1.0, n_shares)
    out = np.empty(len(W))
    for b, w in enumerate(W):
        counts = w[order].astype(np.int64)
        g = np.repeat(gain, counts)
        k = np.rint(shares * len(g)).astype(int)
        cum = np.r_[0.0, np.cumsum(g)]
        q_weak = float((w * weak).sum()) / len(g)
        q_strong = float((w * strong).sum()) / len(g)
        quality = q_weak + cum[k] / len(g)
        gap = q_strong - q_weak
        out[b] = np.nan if abs(gap) < 1e-12 else float(((quality - q_weak) / gap).mean())
    return out


def apgr_point(advantage: np.ndarray, strong: np.ndarray, weak: np.ndarray, *, n_shares: int = 101, seed: int = 0) -> float:
    return float(apgr_distribution(advantage, strong, weak, np.ones((1, len(advantage))), n_shares=n_shares, seed=seed)[0])


def sweep_priority(choices: np.ndarray, strong_col: int) -> np.ndarray:
    """Per row, at how many λ of the sweep the policy calls the strong model.

    With two experts a row goes to the strong one while q̂_s − q̂_w > λ·(ĉ_s − ĉ_w), so the sweep
    ranks rows by this count: used as the "advantage" of a policy that weighs per-row costs."""
    return (np.asarray(choices) == strong_col).sum(axis=0).astype(float)


def interval(values: np.ndarray, *, nan_as_inf: bool = False) -> tuple[float, float]:
    """Percentile 95 % interval; ``nan_as_inf``: an undefined value (e.g. cost→best-quality never
    reached) counts as +∞, so a bound can be ∞ rather than silently dropped."""
    v = np.asarray(values, dtype=float)
    if nan_as_inf:
        v = np.where(np.isnan(v), np.inf, v)
        if not len(v):
            return (float("nan"), float("nan"))
        lo, hi = np.percentile(v, [2.5, 97.5]) if np.isfinite(v).all() else np.quantile(v, [0.025, 0.975], method="inverted_cdf")
        return float(lo), float(hi)
    v = v[np.isfinite(v)]
    if not len(v):
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def fmt(point: float | None, values: np.ndarray | None = None, digits: int = 3, pct: bool = False) -> str:
    """``0.206 [0.11, 0.30]`` (or percentages)."""
    if point is None or not np.isfinite(point):
        return "—"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    text = f"{point * scale:.{digits if not pct else 1}f}{unit}"
    if values is not None:
        lo, hi = interval(values)
        if np.isfinite(lo):
            d = digits if not pct else 1
            text += f" [{lo * scale:.{d}f}, {hi * scale:.{d}f}]"
    return text
