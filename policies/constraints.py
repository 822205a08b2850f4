"""User-weighted constraints shared by every policy's decision rule (Tryage's flags), and the
Pareto front of predicted quality against cost."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np

from core.types import ExpertInfo, RouteRequest


def known_latency(request: RouteRequest, experts: Sequence[ExpertInfo]) -> np.ndarray:
    known = request.expected_latency_s or {}
    return np.array([float(known[e.name]) if e.name in known else np.nan for e in experts], dtype=float)


def _neutral(values: np.ndarray) -> np.ndarray:
    """Unknown entries (NaN) take the mean of the known ones: they are neither favoured nor punished."""
    if np.isnan(values).all():
        return np.zeros_like(values)
    return np.where(np.isnan(values), np.nanmean(values), values)


def _years_behind_newest(experts: Sequence[ExpertInfo]) -> np.ndarray:
    days = []
    for e in experts:
        try:
            days.append(float(date.fromisoformat(str(e.release_date)).toordinal()) if e.release_date else np.nan)
        except ValueError:
            days.append(np.nan)
    arr = np.array(days, dtype=float)
    if np.isnan(arr).all():
        return np.zeros(len(experts))
    return _neutral((np.nanmax(arr) - arr) / 365.25)


def constraint_penalties(request: RouteRequest, experts: Sequence[ExpertInfo], latency: np.ndarray) -> np.ndarray:
    """Per-expert penalty in quality points from the request's weights (Tryage's flags).

    ``size_weight`` per 10× parameters (log10 of billions), ``latency_weight`` per second of
    expected latency, ``recency_weight`` per year an expert is older than the newest candidate
    (ranking-equivalent to its age today, without depending on the clock). Experts with an
    unknown size, latency or date get the mean of the known ones.
    """
    opts = request.options
    penalty = np.zeros(len(experts))
    if opts.size_weight:
        params = np.array([e.params_b if e.params_b else np.nan for e in experts], dtype=float)
        penalty += opts.size_weight * _neutral(np.log10(params))
    if opts.latency_weight:
        penalty += opts.latency_weight * _neutral(latency.copy())
    if opts.recency_weight:
        penalty += opts.recency_weight * _years_behind_newest(experts)
    return penalty


def pareto_indices(quality: np.ndarray, cost: np.ndarray, feasible: np.ndarray) -> list[int]:
    """Indices of the feasible points not dominated in (higher quality, lower cost), by cost."""
    idx = [int(i) for i in np.flatnonzero(feasible)]
    front = []
    for i in idx:
        dominated = any(
            quality[j] >= quality[i] and cost[j] <= cost[i] and (quality[j] > quality[i] or cost[j] < cost[i])
            for j in idx if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (cost[i], -quality[i]))
