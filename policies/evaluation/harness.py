"""Fit every policy on the training rows, sweep λ on the evaluation rows, compute the metrics.

The policy sees the prompts of evaluation rows and nothing else: ``task``, ``dataset`` and the
outcomes of those rows only score its decisions and feed the per-task breakdown. Which models
are candidates on a row comes from the matrix (an unknown outcome is not a candidate), as the
service's ``unavailable`` set would.

``evaluate`` returns a JSON-ready dict (the ``--json`` file); ``report`` prints it and ``plot``
draws it, so both can be re-made from a saved file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import PolicyError
from core.types import RouteRequest
from policies.data import RoutingData
from policies.evaluation import metrics as M
from policies.registry import create_policy, get_policy_class

SCHEMA_VERSION = 1


@dataclass
class Hooks:
    """Progress callbacks (the CLI wires rich progress bars); every one is optional."""

    embed_start: Callable[[int], None] | None = None  # total texts to encode
    embed_advance: Callable[[int], None] | None = None
    fit_start: Callable[[int], None] | None = None  # total (policy, fold) fits
    fit_advance: Callable[[str], None] | None = None  # called with the policy name after each fit
    run_done: Callable[[str, Any, RoutingData], None] | None = None  # (name, per-row run, eval rows): bootstrap etc.


@dataclass
class EvalConfig:
    split: str = "test"
    encoder: str = "minilm"
    n_lambdas: int = 200  # log-spaced, plus λ = 0
    lambda_decades: tuple[float, float] = (-3.0, 3.0)  # around score range / typical cost spread
    n_folds: int = 5  # only without a train split
    n_shares: int = 101  # strong-call shares for apgr / cpt
    seed: int = 0
    single_decisions: int = 20  # requests timed through decide() one at a time
    policy_params: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---- the λ grid ------------------------------------------------------------------------------
def lambda_grid(train: RoutingData, cfg: EvalConfig) -> np.ndarray:
    """λ = 0, then ``n_lambdas`` log-spaced values around (score range / typical cost spread).

    The scale comes from the TRAINING rows: the median over queries of (most − least expensive
    model) and the range of outcomes, so one grid spans "best quality whatever it costs" to
    "cheapest whatever it scores" on any cost unit. Quality-only sets use unit costs.
    """
    if cfg.n_lambdas < 100:
        raise PolicyError("the λ grid needs at least 100 points")
    costs = train.cost_matrix()
    spread = np.nanmax(costs, axis=1) - np.nanmin(costs, axis=1) if costs.size else np.zeros(0)
    spread = spread[np.isfinite(spread) & (spread > 0)]
    cost_scale = float(np.median(spread)) if len(spread) else 1.0
    finite = train.scores[np.isfinite(train.scores)]
    score_range = float(finite.max() - finite.min()) if len(finite) and finite.max() > finite.min() else 1.0
    center = score_range / cost_scale
    lo, hi = cfg.lambda_decades
    return np.r_[0.0, center * np.logspace(lo, hi, cfg.n_lambdas)]


# ---- reference points (single models, oracle, random, cheapest) on the evaluation rows --------
def references(ev: RoutingData) -> dict[str, Any]:
    scores, costs, known = ev.scores, ev.cost_matrix(), ev.known
    with np.errstate(invalid="ignore"):
        q_model = np.nanmean(np.where(known, scores, np.nan), axis=0)
        c_model = np.nanmean(np.where(known, costs, np.nan), axis=0)
    params = [ev.model_info.get(m, {}).get("params_b") for m in ev.models]
    size = np.array([p if p is not None else np.inf for p in params], dtype=float)
    has = ~np.isnan(q_model)
    idx = np.flatnonzero(has)
    best = int(idx[np.lexsort((c_model[idx], -q_model[idx]))[0]])  # best quality, then cheaper
    cheap = int(idx[np.lexsort((np.arange(len(idx)), size[idx], c_model[idx]))[0]])  # cheapest, then smaller
    # oracle: the best known outcome of each row, the cheapest model among equals
    masked = np.where(known, scores, -np.inf)
    top = masked.max(axis=1, keepdims=True)
    is_top = known & (masked >= top - 1e-12)
    pick = np.argmin(np.where(is_top, costs, np.inf), axis=1)
    rows = np.arange(len(ev))
    k = known.sum(axis=1)
    rand_q = np.where(known, scores, 0).sum(axis=1) / k
    rand_c = np.where(known, costs, 0).sum(axis=1) / k
    return {
        "best_single": {"model": ev.models[best], "quality": float(q_model[best]), "cost": float(c_model[best])},
        "oracle": {"quality": float(scores[rows, pick].mean()), "cost": float(costs[rows, pick].mean())},
        "random": {"quality": float(rand_q.mean()), "cost": float(rand_c.mean())},
        "cheapest": {"model": ev.models[cheap], "quality": float(q_model[cheap]), "cost": float(c_model[cheap])},
        "models": {m: {"quality": float(q_model[j]), "cost": float(c_model[j]), "params_b": params[j]}
                   for j, m in enumerate(ev.models) if has[j]},
        "c_max": float(np.nanmax(c_model)),
    }


# ---- running one policy ------------------------------------------------------------------------
@dataclass
class _Run:
    choices: np.ndarray  # (n_lambdas, n_eval) expert index per λ and evaluation row
    advantage: np.ndarray | None  # predicted strong − weak per row (two-model sets)
    fit_s: float
    decision_s: float  # predict + decide at one λ, summed over folds
    single_ms: float | None
    info: dict[str, Any]
    labels: bool = False  # an evaluation-only policy that read the outcomes (no decision timing)
    spent: np.ndarray | None = None  # cascades: the cost of every call they made, per λ and row


def _make_policy(name: str, cfg: EvalConfig):
    params = dict(cfg.policy_params.get(name, {}))
    cls = get_policy_class(name)
    if "encoder" in cls._param_names() and "encoder" not in params:
        params["encoder"] = cfg.encoder
    if "random_state" in cls._param_names() and "random_state" not in params:
        params["random_state"] = cfg.seed
    return create_policy(name, **params)


def _learned_info(policy) -> dict[str, Any]:
    info: dict[str, Any] = {"params": {k: v for k, v in policy.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))}}
    if hasattr(policy, "k_"):
        info["k"] = int(policy.k_)
        if getattr(policy, "cv_mse_", None):
            info["cv_mse"] = {str(k): round(v, 6) for k, v in policy.cv_mse_.items()}
    if hasattr(policy, "train_stats_"):
        info["train"] = {k: round(float(v), 6) for k, v in policy.train_stats_.items()}
    return info


def _run_policy(name: str, data: RoutingData, folds, lambdas: np.ndarray, pair: tuple[int, int] | None,
                cfg: EvalConfig, hooks: Hooks) -> _Run:
    n_eval = sum(len(te) for _, te in folds)
    choices = np.empty((len(lambdas), n_eval), dtype=np.int64)
    advantage = np.zeros(n_eval) if pair is not None else None
    spent = None
    fit_s = decision_s = 0.0
    single: list[float] = []
    info: dict[str, Any] = {}
    offset = 0
    for tr, te in folds:
        policy = _make_policy(name, cfg)
        train = data.subset(tr)
        t0 = time.perf_counter()
        policy.fit(train)
        fit_s += time.perf_counter() - t0
        if hooks.fit_advance:
            hooks.fit_advance(name)
        ev = data.subset(te)
        sl = slice(offset, offset + len(te))
        offset += len(te)
        if hasattr(policy, "cascade_many"):  # a cascade reads answers: scored by the one it returns, paying every call
            t0 = time.perf_counter()
            out = policy.cascade_many(ev, lambdas)
            decision_s += time.perf_counter() - t0
            spent = np.zeros(choices.shape) if spent is None else spent
            choices[:, sl], spent[:, sl] = out["choices"], out["spent"]
            info = {**_learned_info(policy), **out.get("info", {})}
            continue
        if policy.uses_labels:
            choices[:, sl] = policy.decide_labeled(ev.scores, ev.cost_matrix(), lambdas)
            if pair is not None:
                advantage[sl] = np.nan_to_num(ev.scores[:, pair[0]] - ev.scores[:, pair[1]])
            continue
        prompts, candidates = ev.prompts, ev.known
        t0 = time.perf_counter()
        quality = np.asarray(policy.predict_quality(prompts), dtype=float)
        cost = policy.predict_query_cost(prompts)
        policy.choose_many(quality, cost, lambdas[len(lambdas) // 2], candidates)
        decision_s += time.perf_counter() - t0
        choices[:, sl] = policy.choose_many(quality, cost, lambdas, candidates)
        if pair is not None:
            advantage[sl] = quality[:, pair[0]] - quality[:, pair[1]]
        if not single:
            single = _time_single(policy, prompts[: cfg.single_decisions])
        info = _learned_info(policy)
    single_ms = float(np.median(single)) if single else None
    return _Run(choices, advantage, fit_s, decision_s, single_ms, info, labels=bool(policy.uses_labels), spent=spent)


def _time_single(policy, prompts: Sequence[str]) -> list[float]:
    """Milliseconds per ``decide`` call on single requests, as the service would make them."""
    out = []
    for p in prompts:
        req = RouteRequest(prompt=p, prompt_tokens=max(1, len(p) // 4), max_completion_tokens=256)
        t0 = time.perf_counter()
        policy.decide(req)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# ---- the whole evaluation ------------------------------------------------------------------------
def _operating_points(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray,
                      spent: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(scores.shape[0])[None, :]
    cost = costs[rows, choices] if spent is None else spent  # a cascade pays for every call it made
    return cost.mean(axis=1), scores[rows, choices].mean(axis=1)


def _per_task(tasks: np.ndarray, realized: np.ndarray) -> dict[str, float]:
    return {str(t): round(float(realized[tasks == t].mean()), 6) for t in sorted(set(tasks.tolist()))}


def _paired_delta(realized: np.ndarray, best: np.ndarray) -> dict[str, Any]:
    """Mean per-query gain over the best single model and its standard error (paired).

    ``significant``: the gain exceeds two standard errors, so "beats best single" is not noise.
    """
    ok = np.isfinite(best)
    diff = realized[ok] - best[ok]
    delta = float(diff.mean()) if len(diff) else 0.0
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return {"delta_vs_best_single": round(delta, 6), "delta_se": round(se, 6), "significant": bool(delta > 2 * se)}


def _clean(v):
    if v is None:
        return None
    return round(float(v), 6)


def evaluate(data: RoutingData, policies: Sequence[str], cfg: EvalConfig | None = None, hooks: Hooks | None = None) -> dict[str, Any]:
    """Run the evaluation; returns the report (JSON-ready)."""
    from policies.embeddings import get_encoder

    cfg = cfg or EvalConfig()
    hooks = hooks or Hooks()
    t_start = time.perf_counter()
    for name in policies:
        get_policy_class(name)  # fail fast on a typo
    plan = data.evaluation_plan(cfg.split, n_splits=cfg.n_folds, seed=cfg.seed)
    known = data.known
    folds = [(tr, te[known[te].any(axis=1)]) for tr, te in plan.folds]
    folds = [(tr, te) for tr, te in folds if len(te)]
    if not folds:
        raise PolicyError(f"no evaluation row of split {plan.split!r} has a known outcome")
    eval_rows = np.concatenate([te for _, te in folds])
    ev = data.subset(eval_rows)
    train_rows = np.unique(np.concatenate([tr for tr, _ in folds]))
    lambdas = lambda_grid(data.subset(train_rows), cfg)
    ref = references(ev)
    # RouteLLM figures need two models and queries where both outcomes are known
    two_model = data.n_models == 2 and bool(ev.known.all(axis=1).any())
    pair = None
    if two_model:
        tr_scores = data.scores[train_rows]
        means = np.nanmean(tr_scores, axis=0)
        strong = int(np.nanargmax(means))
        pair = (strong, 1 - strong)

    # embeddings: encode every prompt once (train + eval), cached on disk for the next run
    t_embed, n_encoded = 0.0, 0
    encoders = {cfg.encoder for n in policies if "encoder" in get_policy_class(n)._param_names()}
    for enc_name in sorted(encoders):
        enc = get_encoder(enc_name)
        needed = [data.prompts[i] for i in np.unique(np.r_[train_rows, eval_rows])]
        todo = enc.missing(needed)
        if hooks.embed_start:
            hooks.embed_start(len(todo))
        t0 = time.perf_counter()
        n_encoded += enc.warm(todo, progress=hooks.embed_advance)
        t_embed += time.perf_counter() - t0

    if hooks.fit_start:
        hooks.fit_start(len(policies) * len(folds))
    scores, costs = ev.scores, ev.cost_matrix()
    uniform = not data.has_costs
    c_best, q_best = ref["best_single"]["cost"], ref["best_single"]["quality"]
    q_oracle = ref["oracle"]["quality"]
    shares = M.share_grid(cfg.n_shares)
    both = ev.known.all(axis=1) if two_model else None
    results: dict[str, Any] = {}
    best_j = ev.models.index(ref["best_single"]["model"])
    for name in policies:
        run = _run_policy(name, data, folds, lambdas, pair, cfg, hooks)
        if hooks.run_done:
            hooks.run_done(name, run, ev)
        pc, pq = _operating_points(run.choices, scores, costs, run.spent)
        hx, hy = M.nondecreasing_hull(pc, pq)
        qabc = M.quality_at_best_cost(pc, pq, c_best)
        res: dict[str, Any] = {
            # quality-only: every point sits at c = c_max, the AIQ integral is empty; report the accuracy
            "aiq": _clean(float(hy.max()) if uniform else M.aiq(pc, pq, ref["c_max"])),
            "quality_at_best_cost": _clean(qabc),
            "cost_to_best_quality": _clean(M.cost_to_best_quality(pc, pq, q_best, c_best)),
            "gap_closed": _clean(M.gap_closed(qabc, q_best, q_oracle)),
            "quality_max": _clean(pq.max()),
            "fit_s": round(run.fit_s, 4),
            "decision_ms_per_query": None if run.labels else round(run.decision_s / len(ev) * 1e3, 5),
            "decide_single_ms": _clean(run.single_ms),
        }
        if two_model:
            sub = both
            strong_s, weak_s = scores[sub, pair[0]], scores[sub, pair[1]]
            curve = M.strong_share_curve(run.advantage[sub], strong_s, weak_s, shares, seed=cfg.seed)
            p = M.pgr(curve, float(weak_s.mean()), float(strong_s.mean()))
            res.update({"apgr": _clean(M.apgr(p)), "cpt50": _clean(M.cpt(shares, p, 0.5)),
                        "cpt80": _clean(M.cpt(shares, p, 0.8)),
                        "pgr_curve": {"share": shares.round(4).tolist(), "quality": curve.round(6).tolist()}})
        at = int(np.argmax(np.where(pc <= c_best * (1 + 1e-9) + 1e-12, pq, -np.inf))) if qabc is not None else int(np.argmax(pq))
        realized = scores[np.arange(len(ev)), run.choices[at]]
        res.update(_paired_delta(realized, scores[:, best_j]))
        res["beats_best_single"] = res["delta_vs_best_single"] > 1e-9
        res["per_task"] = _per_task(ev.task, realized)
        res["curve"] = {"lambda": [float(f"{v:.6g}") for v in lambdas], "cost": [float(f"{v:.6g}") for v in pc],
                        "quality": [round(float(v), 6) for v in pq]}
        res["hull"] = {"cost": [float(f"{v:.6g}") for v in hx], "quality": [round(float(v), 6) for v in hy]}
        if run.info:
            res["learned"] = run.info
        results[name] = res

    ref["best_single"]["per_task"] = _per_task(ev.task, np.nan_to_num(scores[:, best_j]))
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "dataset": data.name,
        "split": plan.split,
        "n_queries": int(len(ev)),
        "n_models": data.n_models,
        "models_order": ev.models,
        "cost_mode": "uniform" if uniform else "usd",
        "cross_validated": plan.cross_validated,
        "n_folds": len(folds),
        "n_train": int(len(train_rows)),
        "encoder": cfg.encoder,
        "lambda_grid": {"n": int(len(lambdas)), "min_positive": float(lambdas[1]), "max": float(lambdas[-1])},
        "reference": ref,
        "policies": results,
        "timing": {"embed_s": round(t_embed, 3), "texts_encoded": int(n_encoded),
                   "total_s": round(time.perf_counter() - t_start, 3)},
    }
    if two_model:
        report["two_model"] = {"strong": data.models[pair[0]], "weak": data.models[pair[1]],
                               "n_queries": int(both.sum()),
                               "quality_strong": _clean(scores[both, pair[0]].mean()),
                               "quality_weak": _clean(scores[both, pair[1]].mean())}
    return report


# ---- one fitted policy on one split (artifact manifests, quick checks) ----------------------------
def evaluate_fitted(policy, train: RoutingData, ev: RoutingData, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Headline metrics of an already fitted policy on ``ev`` (rows with a known outcome), with
    the λ grid scaled on ``train`` as ``evaluate`` does."""
    cfg = cfg or EvalConfig()
    ev = ev.subset(ev.known.any(axis=1))
    if not len(ev):
        raise PolicyError("no evaluation row has a known outcome")
    lambdas = lambda_grid(train, cfg)
    ref = references(ev)
    scores, costs = ev.scores, ev.cost_matrix()
    if hasattr(policy, "cascade_many"):  # a cascade: the answer it returns, every call it made paid
        out = policy.cascade_many(ev, lambdas)
        pc, pq = _operating_points(out["choices"], scores, costs, out["spent"])
    else:
        choices = policy.decide_many(ev.prompts, lambdas, candidates=ev.known)
        pc, pq = _operating_points(choices, scores, costs)
    c_best, q_best = ref["best_single"]["cost"], ref["best_single"]["quality"]
    qabc = M.quality_at_best_cost(pc, pq, c_best)
    return {
        "n_queries": int(len(ev)),
        "aiq": _clean(float(pq.max()) if not train.has_costs else M.aiq(pc, pq, ref["c_max"])),
        "quality_at_best_cost": _clean(qabc),
        "cost_to_best_quality": _clean(M.cost_to_best_quality(pc, pq, q_best, c_best)),
        "gap_closed": _clean(M.gap_closed(qabc, q_best, ref["oracle"]["quality"])),
        "quality_max": _clean(pq.max()),
        "best_single": ref["best_single"],
        "oracle_quality": _clean(ref["oracle"]["quality"]),
    }
