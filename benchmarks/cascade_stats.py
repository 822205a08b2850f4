"""Statistics of cascade benchmarks: curves from per-row outcomes, areas, gains at equal cost, and
paired bootstrap intervals over the evaluation rows (every policy judged on the same resamples).

A policy's run is two (λ × rows) arrays: the score of the answer it returned and what it spent
on every call. A curve is the mean over rows per λ; its frontier the non-decreasing convex hull
(``policies.evaluation.metrics``). Figures:

* ``aiq`` — the project's metric (DESIGN §5): hull integrated up to the dearest expert's mean cost;
* ``auc`` — the paper's: area under the frontier between the cheapest and the dearest expert's
  mean cost, divided by that span (left of the frontier's first point: the cheapest expert's
  quality), ×100;
* ``q@best`` / ``cost→best`` — quality within the best single expert's cost, and the cost (share
  of that expert's) needed to reach its quality;
* ``Δ(c)`` — frontier quality of one policy minus another's at the same mean cost c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.evaluation import metrics as M


@dataclass
class Curve:
    quality: np.ndarray  # (L, n) score of the returned answer
    spent: np.ndarray  # (L, n) cost of every call made
    calls: np.ndarray | None = None  # (L, n) number of calls


def weights(n: int, boot: int, seed: int) -> np.ndarray:
    """(1 + boot, n) row weights: the sample itself, then multinomial resamples."""
    rng = np.random.default_rng(seed)
    w = [np.ones(n)]
    w += [np.bincount(rng.integers(0, n, n), minlength=n).astype(float) for _ in range(boot)]
    return np.array(w)


def frontier_at(cost: np.ndarray, quality: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Frontier quality at each grid cost (NaN left of the frontier's first point, flat right of it)."""
    hx, hy = M.nondecreasing_hull(cost, quality)
    out = np.interp(grid, hx, hy)
    return np.where(grid < hx[0] - 1e-15, np.nan, out)


def paper_auc(cost: np.ndarray, quality: np.ndarray, c_lo: float, c_hi: float, q_lo: float) -> float:
    grid = np.linspace(c_lo, c_hi, 401)
    q = frontier_at(cost, quality, grid)
    q = np.where(np.isnan(q), q_lo, q)
    return float(np.trapezoid(q, grid) / (c_hi - c_lo) * 100) if c_hi > c_lo else float("nan")


def figures(cost: np.ndarray, quality: np.ndarray, ref: dict) -> dict[str, float]:
    qabc = M.quality_at_best_cost(cost, quality, ref["best_cost"])
    ctbq = M.cost_to_best_quality(cost, quality, ref["best_quality"], ref["best_cost"])
    return {"aiq": M.aiq(cost, quality, ref["c_max"]),
            "auc": paper_auc(cost, quality, ref["c_min"], ref["c_max"], ref["q_cheapest"]),
            "q@best": np.nan if qabc is None else qabc, "cost→best": np.nan if ctbq is None else ctbq,
            "q_max": float(np.max(quality))}


def reference(single_q: np.ndarray, single_c: np.ndarray, w: np.ndarray) -> dict:
    """Single-expert figures under row weights ``w`` (single_q, single_c: n × m, NaN unknown)."""
    q = np.nansum(single_q * w[:, None], 0) / np.sum(np.isfinite(single_q) * w[:, None], 0)
    c = np.nansum(single_c * w[:, None], 0) / np.sum(np.isfinite(single_c) * w[:, None], 0)
    best = int(np.lexsort((c, -q))[0])
    cheap = int(np.argmin(c))
    return {"q": q, "c": c, "best_quality": float(q[best]), "best_cost": float(c[best]), "c_min": float(c[cheap]),
            "q_cheapest": float(q[cheap]), "c_max": float(c.max())}


def compare(curves: dict[str, Curve], single_q: np.ndarray, single_c: np.ndarray, *, boot: int = 500, seed: int = 0,
            pairs: list[tuple[str, str]] = (), n_grid: int = 40, span: tuple[float, float] | None = None) -> dict:
    """Figures with 95 % intervals for every curve, and Δ(c) on a cost grid for each (a, b) pair.
    ``span``: the cost range of the areas (default: cheapest to dearest single expert; a quality-only
    set, where every expert costs 1 call, needs one, e.g. 1 to the number of experts)."""
    n = single_q.shape[0]
    W = weights(n, boot, seed)

    def reference_(w):
        ref = reference(single_q, single_c, w)
        if span is not None:
            ref["c_min"], ref["c_max"] = span
        return ref

    ref0 = reference_(W[0])
    grid = np.linspace(ref0["c_min"], ref0["c_max"], n_grid)
    out: dict = {"n": n, "boot": boot, "singles": {}, "policies": {}, "gains": {}, "grid": grid.tolist()}
    draws: dict[str, dict[str, list[float]]] = {k: {} for k in curves}
    fronts: dict[str, list[np.ndarray]] = {k: [] for k in curves}
    for b, w in enumerate(W):
        ref = reference_(w)
        for name, cv in curves.items():
            cost = (cv.spent * w).sum(1) / w.sum()
            qual = (cv.quality * w).sum(1) / w.sum()
            for key, val in figures(cost, qual, ref).items():
                draws[name].setdefault(key, []).append(val)
            fronts[name].append(frontier_at(cost, qual, grid))
        if b == 0:
            out["singles"] = {j: {"quality": float(ref["q"][j]), "cost": float(ref["c"][j])} for j in range(len(ref["q"]))}
    for name, cv in curves.items():
        row = {}
        for key, vals in draws[name].items():
            v = np.asarray(vals, dtype=float)
            lo, hi = np.nanpercentile(v[1:], [2.5, 97.5]) if boot and np.isfinite(v[1:]).any() else (np.nan, np.nan)
            row[key] = {"value": float(v[0]), "lo": float(lo), "hi": float(hi)}
        calls = cv.calls.mean(1) if cv.calls is not None else None
        row["curve"] = {"cost": ((cv.spent).mean(1)).tolist(), "quality": cv.quality.mean(1).tolist(),
                        **({"calls": calls.tolist()} if calls is not None else {})}
        out["policies"][name] = row
    for a, b in pairs:
        d = np.array(fronts[a]) - np.array(fronts[b])  # (1 + boot, grid)
        lo, hi = (np.nanpercentile(d[1:], [2.5, 97.5], axis=0) if boot else (d[0] * np.nan, d[0] * np.nan))
        both = np.isfinite(d[0])
        out["gains"][f"{a} − {b}"] = {
            "delta": d[0].tolist(), "lo": lo.tolist(), "hi": hi.tolist(),
            "never_worse": bool(np.all(hi[both] >= 0)) if both.any() else None,  # no interval wholly below 0
            "better_somewhere": bool(np.any(lo[both] > 0)) if both.any() else None,
            "max_delta": float(np.nanmax(d[0])) if both.any() else None,
            "min_delta": float(np.nanmin(d[0])) if both.any() else None,
            "auc_delta": _paired(np.array(draws[a]["auc"]) - np.array(draws[b]["auc"])),
            "aiq_delta": _paired(np.array(draws[a]["aiq"]) - np.array(draws[b]["aiq"])),
        }
    return out


def _paired(d: np.ndarray) -> dict[str, float]:
    lo, hi = np.nanpercentile(d[1:], [2.5, 97.5]) if len(d) > 1 else (np.nan, np.nan)
    return {"value": float(d[0]), "lo": float(lo), "hi": float(hi)}


def fmt(cell: dict, digits: int = 3, pct: bool = False) -> str:
    f = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:.{digits}f}")
    if cell is None or not np.isfinite(cell["value"]):
        return "—"
    if not np.isfinite(cell["lo"]):
        return f(cell["value"])
    return f"{f(cell['value'])} [{f(cell['lo'])}, {f(cell['hi'])}]"
