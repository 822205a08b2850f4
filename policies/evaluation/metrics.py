"""The metrics of DESIGN.md §5, as pure functions of a policy's operating points.

An operating point is (mean cost, mean quality) of one λ of the sweep. Names match the report
and the JSON: ``aiq``, ``quality_at_best_cost``, ``cost_to_best_quality``, ``gap_closed``, and for
two-model sets ``apgr``, ``cpt50``, ``cpt80`` (RouteLLM; cost axis = share of strong calls).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_TOL = 1e-12


def nondecreasing_hull(costs: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing convex hull of the points (RouterBench ``evaluation/AIQ.py``).

    The upper convex hull from the cheapest point (best quality among equally cheap points) up
    to the point of highest quality; what lies beyond it is dominated. Returned sorted by cost.
    """
    x = np.asarray(costs, dtype=float)
    y = np.asarray(qualities, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if not len(x):
        return np.zeros(0), np.zeros(0)
    # one point per cost: the best quality there
    order = np.lexsort((-y, x))
    x, y = x[order], y[order]
    first = np.r_[True, np.diff(x) > 0]
    x, y = x[first], y[first]
    # the upper hull by the monotone chain: drop a point lying on or below the chord around it
    hx: list[float] = []
    hy: list[float] = []
    for xi, yi in zip(x, y):
        while len(hx) >= 2 and (hx[-1] - hx[-2]) * (yi - hy[-2]) - (hy[-1] - hy[-2]) * (xi - hx[-2]) >= -_TOL:
            hx.pop()
            hy.pop()
        hx.append(float(xi))
        hy.append(float(yi))
    hx_a, hy_a = np.array(hx), np.array(hy)
    top = int(np.argmax(hy_a))  # the concave hull rises to its maximum, then only falls
    return hx_a[: top + 1], hy_a[: top + 1]


def aiq(costs: Sequence[float], qualities: Sequence[float], c_max: float) -> float:
    """RouterBench's Average Improvement in Quality.

    Non-decreasing convex hull of the operating points, extended flat to ``c_max``, integrated
    (trapezoids) from its first point to ``c_max``, divided by ``c_max``. A hull running past
    ``c_max`` is cut there; a hull starting at or beyond ``c_max`` encloses nothing (0).
    """
    if not c_max > 0:
        raise ValueError("aiq needs c_max > 0")
    hx, hy = nondecreasing_hull(costs, qualities)
    if not len(hx) or hx[0] >= c_max:
        return 0.0
    if hx[-1] > c_max:
        cut = np.searchsorted(hx, c_max, side="right")
        y_at = float(np.interp(c_max, hx, hy))
        hx, hy = np.r_[hx[:cut], c_max], np.r_[hy[:cut], y_at]
    elif hx[-1] < c_max:
        hx, hy = np.r_[hx, c_max], np.r_[hy, hy[-1]]
    area = float(np.sum((hx[1:] - hx[:-1]) * (hy[1:] + hy[:-1]) / 2.0))
    return area / c_max


def quality_at_cost(costs: Sequence[float], qualities: Sequence[float], budget: float) -> float | None:
    """Best mean quality among operating points whose mean cost is ≤ ``budget`` (None: none is)."""
    x = np.asarray(costs, dtype=float)
    y = np.asarray(qualities, dtype=float)
    ok = x <= budget * (1 + 1e-9) + _TOL
    return float(y[ok].max()) if ok.any() else None


def cost_to_quality(costs: Sequence[float], qualities: Sequence[float], target: float) -> float | None:
    """Least mean cost among operating points whose mean quality is ≥ ``target`` (None: never)."""
    x = np.asarray(costs, dtype=float)
    y = np.asarray(qualities, dtype=float)
    ok = y >= target - 1e-9
    return float(x[ok].min()) if ok.any() else None


def quality_at_best_cost(costs, qualities, best_cost: float) -> float | None:
    """DESIGN §5: mean quality the policy reaches at a mean cost ≤ the best single model's."""
    return quality_at_cost(costs, qualities, best_cost)


def cost_to_best_quality(costs, qualities, best_quality: float, best_cost: float) -> float | None:
    """DESIGN §5: mean cost to reach the best single model's quality, as a fraction of its cost."""
    c = cost_to_quality(costs, qualities, best_quality)
    if c is None or not best_cost > 0:
        return None
    return c / best_cost


def gap_closed(quality: float | None, best_single: float, oracle: float) -> float | None:
    """(quality − best single) / (oracle − best single); None when undefined."""
    if quality is None or not oracle - best_single > _TOL:
        return None
    return (quality - best_single) / (oracle - best_single)


# ---- two-model sets (RouteLLM) -----------------------------------------------------------------
def strong_share_curve(
    advantage: np.ndarray, strong: np.ndarray, weak: np.ndarray, shares: np.ndarray, *, seed: int = 0
) -> np.ndarray:
    """Mean quality when the top ``share`` of queries by predicted ``advantage`` go to strong.

    ``advantage`` is the policy's predicted (strong − weak) quality per query; ties are broken
    by a seeded random order, so a policy with no opinion behaves like random routing.
    """
    n = len(advantage)
    tiebreak = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((tiebreak, -np.asarray(advantage, dtype=float)))
    gain = np.r_[0.0, np.cumsum((strong - weak)[order])]
    k = np.rint(np.asarray(shares) * n).astype(int)
    return (weak.sum() + gain[k]) / n


def pgr(quality: np.ndarray, quality_weak: float, quality_strong: float) -> np.ndarray:
    """Performance gap recovered: (quality − weak) / (strong − weak)."""
    gap = quality_strong - quality_weak
    if abs(gap) <= _TOL:
        return np.full_like(np.asarray(quality, dtype=float), np.nan)
    return (np.asarray(quality, dtype=float) - quality_weak) / gap


def apgr(pgr_values: np.ndarray) -> float | None:
    """Mean PGR over evenly spaced strong-call shares from 0 to 1."""
    v = np.asarray(pgr_values, dtype=float)
    return None if np.isnan(v).any() else float(v.mean())


def cpt(shares: np.ndarray, pgr_values: np.ndarray, level: float) -> float | None:
    """Smallest strong-call share whose PGR reaches ``level`` (cpt50: 0.5, cpt80: 0.8)."""
    v = np.asarray(pgr_values, dtype=float)
    hit = np.flatnonzero(v >= level - 1e-9)
    return float(np.asarray(shares)[hit[0]]) if len(hit) else None


def share_grid(n_points: int = 101) -> np.ndarray:
    if n_points < 2:
        raise ValueError("the share grid needs at least 2 points")
    return np.linspace(0.0, 1.0, n_points)
