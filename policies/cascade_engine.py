"""The decision rule of cascade routing, vectorised over queries and λ (pure numpy).

State of one query: the set R of experts already run (a bitmask over the policy's experts).
Estimates for that state: μ (expected score) and σ (how much the estimate may still move) of
every expert — post-hoc for the experts in R (σ = 0), ex-ante for the others. A *supermodel* is
a set T ⊇ R of experts; running it and answering with its best answer is worth

    E[max_{e ∈ T} q_e] − λ · Σ_{e ∈ T \\ R} cost_e        (q_e ~ N(μ_e, σ_e²), independent)

(Dekoninck et al., 2025, cascade routing). The best T is searched over every T \\ R = S; if the
best is S = ∅ the cascade stops, else it runs the cheapest expert of S (the one it would run
first anyway) and decides again with that answer in hand. The expectation is a Monte-Carlo mean
over fixed quasi-random normal draws shared by all sets (common random numbers: set values
compare without sampling noise between them).

Strategies, all on the same estimates:

* ``cascade_routing`` — the search above (``force_order``: only experts dearer than the last run);
* ``routing`` — the same with one step: argmax μ − λ·cost on ex-ante estimates (plain routing);
* ``cascade`` — the paper's optimal cascade: S must be the next experts in cost order;
* ``threshold`` — the classic cascade: run experts in cost order until the post-hoc estimate
  of the last answer reaches τ (fitted on train per λ); answer with the last one.

Every strategy except ``threshold`` answers with the run expert of highest post-hoc estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("cascade_routing", "routing", "cascade", "threshold")
Tables = Callable[[int], tuple[np.ndarray, np.ndarray]]  # R bitmask → (μ, σ), each (n, m)
_CHUNK = 8192  # (λ, query) pairs per block


def normal_draws(n_samples: int, m: int, seed: int) -> np.ndarray:
    """(n_samples, m) standard normal quasi-random draws (scrambled Sobol, seeded)."""
    from scipy.stats import norm, qmc

    u = qmc.Sobol(d=m, scramble=True, seed=seed).random(n_samples)
    z = norm.ppf(np.clip(u, 1e-9, 1 - 1e-9))
    # mean 0 and variance 1 per column, exactly: a set of one expert is worth its μ (plain routing), no draw bias
    return (z - z.mean(axis=0)) / np.where(z.std(axis=0) > 0, z.std(axis=0), 1.0)


def members(mask: int, m: int) -> list[int]:
    return [j for j in range(m) if mask >> j & 1]


def popcount(mask: int) -> int:
    return bin(mask).count("1")


@dataclass(frozen=True)
class Space:
    """Candidate sets S for one state R: bitmasks (0 = stop) and the expert each would run first."""

    sets: np.ndarray  # (k,) int
    first: np.ndarray  # (k,) int, −1 for stop


def search_space(R: int, m: int, order: Sequence[int], *, strategy: str, max_depth: int, force_order: bool) -> Space:
    """Every S the strategy may pick in state R (never beyond ``max_depth`` experts in all)."""
    pos = {e: i for i, e in enumerate(order)}
    room = max_depth - popcount(R)
    run = members(R, m)
    last = max((pos[e] for e in run), default=-1)
    rest = [e for e in order if not R >> e & 1 and (not force_order or pos[e] > last)]
    sets: list[int] = [0] if R else []
    if room > 0 and rest:
        if strategy == "cascade":  # the next experts in cost order, as a block
            for k in range(1, min(room, len(rest)) + 1):
                sets.append(sum(1 << e for e in rest[:k]))
        elif strategy == "routing":
            sets += [1 << e for e in rest] if not R else []
        else:
            for sub in range(1, 1 << len(rest)):
                picked = [rest[i] for i in range(len(rest)) if sub >> i & 1]
                if len(picked) <= room:
                    sets.append(sum(1 << e for e in picked))
    first = [-1 if s == 0 else min(members(s, m), key=pos.__getitem__) for s in sets]
    return Space(np.array(sets, dtype=np.int64), np.array(first, dtype=np.int64))


def set_values(mu: np.ndarray, sd: np.ndarray, cost: np.ndarray, allowed: np.ndarray, R: int, space: Space,
               z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected best score V and added cost C of every candidate set, each (n, k); V = −inf where
    a set holds an expert that is not allowed on that row."""
    n, m = mu.shape
    run = members(R, m)
    base = mu[:, run].max(axis=1) if run else np.full(n, -np.inf)
    V = np.empty((n, len(space.sets)))
    C = np.zeros((n, len(space.sets)))
    for k, s in enumerate(space.sets):
        cols = members(int(s), m)
        if not cols:
            V[:, k] = base
            continue
        draws = (mu[:, None, cols] + sd[:, None, cols] * z[None, :, cols]).max(axis=2)  # (n, samples)
        # E[max(base, X)] = base + E[(X − base)⁺]: exactly the base when no draw beats the answers in hand
        gain = np.where(np.isfinite(base)[:, None], np.maximum(draws - base[:, None], 0.0), draws).mean(axis=1)
        value = np.where(np.isfinite(base), base + gain, gain)
        V[:, k] = np.where(allowed[:, cols].all(axis=1), value, -np.inf)
        C[:, k] = cost[:, cols].sum(axis=1)
    return V, C


@dataclass
class CascadeRun:
    """What a cascade did per λ and query: the answer it returned and every expert it called."""

    selected: np.ndarray  # (L, n) expert index answered with
    runmask: np.ndarray  # (L, n) bitmask of experts called
    steps: np.ndarray  # (L, n) number of calls

    def spent(self, costs: np.ndarray) -> np.ndarray:
        m = costs.shape[1]
        bits = (self.runmask[..., None] >> np.arange(m)) & 1  # (L, n, m)
        return (bits * np.nan_to_num(costs)[None]).sum(axis=2)

    def quality(self, scores: np.ndarray) -> np.ndarray:
        return np.nan_to_num(scores)[np.arange(scores.shape[0])[None, :], self.selected]


def pick(util: np.ndarray, cost: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Per row, the best column; among columns within ``tol`` of the best, the cheapest (the paper
    rounds utilities and takes the cheapest supermodel among equals)."""
    best = util.max(axis=1, keepdims=True)
    near = util >= best - tol
    return np.argmin(np.where(near, cost, np.inf), axis=1)


def run_cascades(tables: Tables, cost: np.ndarray, allowed: np.ndarray, lambdas: Sequence[float], *,
                 order: Sequence[int], strategy: str = "cascade_routing", max_depth: int | None = None,
                 force_order: bool = True, z: np.ndarray | None = None,
                 taus: Sequence[float] | None = None) -> CascadeRun:
    """Run the strategy on every query for every λ (threshold: for every τ of ``taus``)."""
    n, m = cost.shape
    lams = np.asarray(taus if strategy == "threshold" else lambdas, dtype=float)
    L = len(lams)
    depth = 1 if strategy == "routing" else min(max_depth or m, m)
    z = normal_draws(128, m, 0) if z is None else z
    R = np.zeros((L, n), dtype=np.int64)
    last = np.full((L, n), -1, dtype=np.int64)
    done = np.zeros((L, n), dtype=bool)
    cache: dict[int, tuple[Space, np.ndarray, np.ndarray]] = {}
    pos = {e: i for i, e in enumerate(order)}
    for _ in range(depth + 1):
        active = ~done
        if not active.any():
            break
        for r in np.unique(R[active]):
            r = int(r)
            li, qi = np.nonzero(active & (R == r))
            if strategy == "threshold":
                _threshold_step(tables, r, li, qi, lams, allowed, order, pos, depth, R, last, done)
                continue
            if r not in cache:
                space = search_space(r, m, order, strategy=strategy, max_depth=depth, force_order=force_order)
                mu, sd = tables(r)
                V, C = set_values(mu, sd, cost, allowed, r, space, z) if len(space.sets) else (np.zeros((n, 0)),) * 2
                cache[r] = (space, V, C)
            space, V, C = cache[r]
            if not len(space.sets):
                done[li, qi] = True
                continue
            for a in range(0, len(li), _CHUNK):
                la, qa = li[a:a + _CHUNK], qi[a:a + _CHUNK]
                util = V[qa] - lams[la, None] * C[qa]
                k = pick(util, C[qa])
                stuck = ~np.isfinite(util[np.arange(len(k)), k])
                nxt = space.first[k]
                stop = (nxt < 0) | stuck
                done[la[stop], qa[stop]] = True
                go = ~stop
                R[la[go], qa[go]] |= np.left_shift(1, nxt[go])
                last[la[go], qa[go]] = nxt[go]
                full = np.array([popcount(int(x)) for x in R[la[go], qa[go]]]) >= depth
                done[la[go][full], qa[go][full]] = True
    steps = np.vectorize(popcount, otypes=[np.int64])(R) if R.size else np.zeros_like(R)
    if strategy == "threshold":
        selected = last.copy()
    else:
        selected = np.zeros_like(R)
        for r in np.unique(R):
            r = int(r)
            mu = tables(r)[0]
            run = members(r, m)
            li, qi = np.nonzero(R == r)
            if not run:
                continue
            sub = mu[qi][:, run]
            selected[li, qi] = np.asarray(run)[np.argmax(sub, axis=1)]
    return CascadeRun(selected=np.maximum(selected, 0), runmask=R, steps=steps)


def _threshold_step(tables: Tables, r: int, li: np.ndarray, qi: np.ndarray, taus: np.ndarray, allowed: np.ndarray,
                    order: Sequence[int], pos: dict[int, int], depth: int, R: np.ndarray, last: np.ndarray,
                    done: np.ndarray) -> None:
    """One step of the threshold cascade for the (τ, query) pairs in state r."""
    m = allowed.shape[1]
    if r:
        mu = tables(r)[0]
        cur = last[li, qi]
        stop = mu[qi, cur] >= taus[li]
        if popcount(r) >= depth:
            stop[:] = True
        done[li[stop], qi[stop]] = True
        li, qi, cur = li[~stop], qi[~stop], cur[~stop]
        start = np.array([pos[int(c)] + 1 for c in cur], dtype=np.int64)
    else:
        start = np.zeros(len(li), dtype=np.int64)
    nxt = np.full(len(li), -1, dtype=np.int64)
    for k in range(m - 1, -1, -1):  # the first allowed expert at or after `start` in cost order
        e = order[k]
        ok = (k >= start) & allowed[qi, e]
        nxt = np.where(ok, e, nxt)
    none = nxt < 0
    done[li[none], qi[none]] = True
    li, qi, nxt = li[~none], qi[~none], nxt[~none]
    R[li, qi] |= np.left_shift(1, nxt)
    last[li, qi] = nxt


def choose_step(mu: np.ndarray, sd: np.ndarray, cost: np.ndarray, allowed: np.ndarray, R: int, lam: float, *,
                order: Sequence[int], strategy: str, max_depth: int, force_order: bool, z: np.ndarray,
                tau: float | None = None, last: int | None = None) -> tuple[int, dict[int, float]]:
    """One live decision (one query): the expert to run next (−1: stop) and the value of running
    each expert next (its best set's value), for the decision record."""
    m = mu.shape[1]
    if strategy == "threshold":
        order = list(order)
        start = 0
        if R:
            if popcount(R) >= max_depth or (last is not None and mu[0, last] >= (1.0 if tau is None else tau)):
                return -1, {}
            start = order.index(last) + 1 if last is not None else 0
        for e in order[start:]:
            if allowed[0, e] and not R >> e & 1:
                return e, {e: float(mu[0, e])}
        return -1, {}
    space = search_space(R, m, order, strategy=strategy, max_depth=1 if strategy == "routing" else max_depth,
                         force_order=force_order)
    if not len(space.sets):
        return -1, {}
    V, C = set_values(mu, sd, cost, allowed, R, space, z)
    util = V[0] - lam * C[0]
    values: dict[int, float] = {}
    for k, e in enumerate(space.first):
        if np.isfinite(util[k]):
            values[int(e)] = max(values.get(int(e), -np.inf), float(util[k]))
    k = int(pick(util[None, :], C)[0])
    if not np.isfinite(util[k]):
        return -1, values
    return int(space.first[k]), values
