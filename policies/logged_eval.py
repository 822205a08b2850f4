"""A candidate policy's quality and cost on logged traffic (``expertmux eval --ledger``).

The candidate routes every logged prompt among the experts that were candidates of the logged
decision (so constraints that held then still hold) and that it knows; its choices become
action probabilities (one-hot for deterministic policies, the policy's own propensities for
stochastic ones), and ``policies.offpolicy`` turns them into IPS, SNIPS and DR estimates of
the mean feedback score and the mean cost per request. The DR reward model is each expert's
propensity-weighted mean outcome (``reward_model="mean"``) or, for a learned candidate, its
own predicted quality (``"candidate"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import PolicyError
from policies.base import Policy
from policies.logged import LoggedData
from policies.offpolicy import Estimate, evaluate_policy, mean_reward_model, unsupported_mass


def candidate_probs(policy: Policy, logged: LoggedData, *, lam: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(target probabilities n × K over ``logged.experts``, rows the candidate can route).

    A row is routable when the candidate knows at least one of the decision's candidates, and
    has a prompt if the candidate reads prompts.
    """
    names = policy.expert_names
    col = {e: j for j, e in enumerate(logged.experts)}
    cols = np.array([col.get(n, -1) for n in names])
    if not (cols >= 0).any():
        raise PolicyError(f"policy {policy.name!r} knows none of the logged experts; it routes among {names}, "
                          f"the ledger has {logged.experts}")
    reads_prompts = bool(getattr(policy, "requires_training", False) or hasattr(policy, "inner"))
    has_prompt = np.array([p is not None for p in logged.prompts], dtype=bool)
    n, k = len(logged), len(logged.experts)
    feasible = np.zeros((n, len(names)), dtype=bool)
    known = cols >= 0
    feasible[:, known] = logged.candidates[:, cols[known]]
    ok = feasible.any(axis=1) & (has_prompt if reads_prompts else True)
    rows = np.flatnonzero(ok)
    prompts = [logged.prompts[i] or "" for i in rows]
    target = np.zeros((n, k))
    if not len(rows):
        return target, ok
    quality = np.asarray(policy.predict_quality(prompts), dtype=float)
    cost = policy.predict_query_cost(prompts)
    lam = policy.fixed_lambda if policy.fixed_lambda is not None else lam
    utility = np.where(np.isnan(quality), -1e30, quality) - lam * cost
    feas = feasible[rows]
    if type(policy).propensities is Policy.propensities:  # deterministic argmax: vectorised
        choice = np.argmax(np.where(feas, utility, -np.inf), axis=1)
        target[rows, cols[choice]] = 1.0
    else:  # a stochastic policy knows its own probabilities
        for r, (u, f) in enumerate(zip(utility, feas)):
            target[rows[r], cols[f]] = policy.propensities(u, f)[f]
    return target, ok


def evaluate_logged(policy: Policy, logged: LoggedData, *, lam: float = 0.0, clip: float | None = None,
                    level: float = 0.95, ci: str = "clt", reward_model: str = "mean", seed: int = 0) -> dict[str, Any]:
    """Off-policy estimates of ``policy``'s mean quality and cost on the logged rows with feedback."""
    logged = logged.with_reward()
    if not len(logged):
        raise PolicyError("no logged requests with feedback in this slice of the ledger")
    target, ok = candidate_probs(policy, logged, lam=lam)
    rows = np.flatnonzero(ok)
    if not len(rows):
        raise PolicyError(f"policy {policy.name!r} can route none of the {len(logged)} logged requests "
                          "(no prompt text stored, or none of its experts were candidates)")
    sub = logged.subset(rows)
    target = target[rows]
    k = len(sub.experts)
    kw = dict(clip=clip, level=level, ci=ci, seed=seed)
    q_hat = np.tile(mean_reward_model(sub.reward, sub.action, sub.propensity, k), (len(sub), 1))
    if reward_model == "candidate" and hasattr(policy, "predict_quality"):
        pred = _candidate_quality(policy, sub)
        q_hat = np.where(np.isnan(pred), q_hat, np.clip(pred, 0.0, 1.0))
    elif reward_model not in ("mean", "candidate"):
        raise PolicyError(f"unknown reward model {reward_model!r}: mean | candidate")
    c_hat = np.tile(mean_reward_model(sub.cost, sub.action, sub.propensity, k), (len(sub), 1))
    quality = evaluate_policy(sub.reward, sub.action, sub.propensity, target, q_hat, **kw)
    cost = evaluate_policy(sub.cost, sub.action, sub.propensity, target, c_hat, **kw)
    share = target.mean(axis=0)
    return {
        "policy": policy.name, "version": getattr(policy, "version", None), "lambda": lam, "rows": len(sub),
        "rows_skipped": int(len(logged) - len(sub)), "ci": ci, "level": level, "clip": clip,
        "reward_model": reward_model,
        "quality": {m: e.as_dict() for m, e in quality.items()},
        "cost": {m: e.as_dict() for m, e in cost.items()},
        "logging": {"quality": _mean(sub.reward, level), "cost": _mean(sub.cost, level)},
        "agreement": float(target[np.arange(len(sub)), sub.action].mean()),
        "unsupported_mass": unsupported_mass(target, sub.propensities),
        "deterministic_log_share": sub.deterministic_share,
        "share": {e: round(float(s), 4) for e, s in zip(sub.experts, share) if s > 0},
    }


def _candidate_quality(policy: Policy, logged: LoggedData) -> np.ndarray:
    cols = {e: j for j, e in enumerate(policy.expert_names)}
    pred = np.asarray(policy.predict_quality([p or "" for p in logged.prompts]), dtype=float)
    out = np.full((len(logged), len(logged.experts)), np.nan)
    for j, e in enumerate(logged.experts):
        if e in cols:
            out[:, j] = pred[:, cols[e]]
    return out


def _mean(x: np.ndarray, level: float) -> dict[str, float]:
    """What the logging policy itself achieved (on-policy mean, CLT interval)."""
    from policies.offpolicy import direct_method

    e: Estimate = direct_method(x, level=level)
    return {"value": round(e.value, 6), "lo": round(e.lo, 6), "hi": round(e.hi, 6)}
