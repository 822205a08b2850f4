"""Router-R1 in the routing-matrix environment vs the query-level policies, on the same queries.

For the router (trained adapter or its untrained start): one greedy episode per evaluation row;
quality = the adopted expert's recorded score (fallback included, as a client would be served),
cost = every expert call, calls = the router's searches, well-formed share, mean reward.
For query-level policies (knn, tryage, coe, ...): fitted on the train split restricted to the
same candidate models, one decision per row at λ = 0 (their best-quality point), one call each.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policies.data import TRAIN, RoutingData
from policies.router_r1.env_matrix import MatrixEnv
from policies.router_r1.reward import router_reward
from policies.router_r1.train import TrainConfig, run_episode


def eval_rows(env: MatrixEnv, n: int, seed: int = 0) -> list[int]:
    """A fixed random sample of the environment's rows (the same for every router compared)."""
    return sorted(random.Random(seed).sample(range(len(env)), k=min(n, len(env))))


def evaluate_router(env: MatrixEnv, rows: Sequence[int], tok, model, cfg: TrainConfig,
                    on_row: Callable[[], None] | None = None) -> dict[str, Any]:
    quality, cost, calls, wf, reward, adopted = [], [], [], [], [], []
    for i in rows:
        ep = run_episode(env, i, tok, model, cfg, greedy=True)
        o = ep.outcome
        quality.append(o.quality)
        cost.append(o.cost_usd)
        calls.append(o.n_calls)
        wf.append(o.well_formed)
        reward.append(o.reward.total)
        adopted.append(o.adopted or "(none)")
        if on_row:
            on_row()
    names, counts = np.unique(adopted, return_counts=True)
    return {"quality": float(np.mean(quality)), "cost_usd": float(np.mean(cost)), "calls": float(np.mean(calls)),
            "well_formed": float(np.mean(wf)), "reward": float(np.mean(reward)), "n": len(rows),
            "adopted": {str(k): int(v) for k, v in zip(names, counts)}}


def single_call_rewards(scores: np.ndarray, costs: np.ndarray, known: np.ndarray, alpha: float) -> np.ndarray:
    """The reward (``reward.router_reward``) one well-formed call to each expert would earn on
    each row (rows × experts), the cost normalised by the row's dearest known call."""
    cmax = np.where(known, costs, -np.inf).max(axis=1)
    outcome = np.nan_to_num(scores)
    return np.array([[router_reward(well_formed=True, outcome=float(outcome[i, j]), cost_usd=float(costs[i, j]),
                                    max_cost_usd=float(cmax[i]), alpha=alpha).total for j in range(costs.shape[1])]
                     for i in range(costs.shape[0])]).reshape(costs.shape)


def evaluate_query_policies(data: RoutingData, env: MatrixEnv, rows: Sequence[int], policies: Sequence[str],
                            alpha: float | None = None) -> dict[str, Any]:
    """Fit each policy on the train rows (same models as ``env``), decide at λ = 0 on ``rows``.
    With ``alpha``, each one-call row also gets the reward the router is trained on, and the
    expert with the best mean train reward (what a router that ignores the query should learn)
    gets its own row."""
    from policies.registry import create_policy

    sub = data.select_models(env.models)
    train = sub.subset(sub.rows_of(TRAIN))
    ev = env.data.subset(list(rows))
    scores, costs = ev.scores, ev.cost_matrix()
    out: dict[str, Any] = {}
    idx = np.arange(len(ev))
    rewards = single_call_rewards(scores, costs, ev.known, alpha) if alpha is not None else None

    def reward_of(choice):
        return None if rewards is None else float(rewards[np.arange(len(choice)), choice].mean())

    for name in policies:
        policy = create_policy(name).fit(train)
        choice = policy.decide_many(ev.prompts, np.array([0.0]), candidates=ev.known)[0]
        picked, counts = np.unique(np.asarray(env.models)[choice], return_counts=True)
        out[name] = {"quality": float(np.nan_to_num(scores[idx, choice]).mean()), "cost_usd": float(costs[idx, choice].mean()),
                     "calls": 1.0, "well_formed": None, "reward": reward_of(choice), "n": len(ev),
                     "adopted": {str(k): int(v) for k, v in zip(picked, counts)}}
    best = int(np.nanargmax(np.nanmean(train.scores, axis=0)))
    out["best single (train)"] = {"quality": float(np.nan_to_num(scores[:, best]).mean()), "cost_usd": float(costs[:, best].mean()),
                                  "calls": 1.0, "well_formed": None, "reward": reward_of(np.full(len(ev), best)), "n": len(ev),
                                  "model": env.models[best]}
    if alpha is not None:
        train_rewards = single_call_rewards(train.scores, train.cost_matrix(), train.known, alpha)
        by_reward = int(np.nanargmax(np.nanmean(np.where(train.known, train_rewards, np.nan), axis=0)))
        out[f"best single by reward (train, α={alpha:g})"] = {
            "quality": float(np.nan_to_num(scores[:, by_reward]).mean()), "cost_usd": float(costs[:, by_reward].mean()),
            "calls": 1.0, "well_formed": None, "reward": reward_of(np.full(len(ev), by_reward)), "n": len(ev),
            "model": env.models[by_reward]}
    top = np.where(ev.known, scores, -np.inf).max(axis=1)
    out["oracle"] = {"quality": float(top.mean()), "cost_usd": None, "calls": 1.0, "well_formed": None, "reward": None, "n": len(ev)}
    return out


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    def shares(r) -> str:
        adopted = r.get("adopted") or {}
        total = sum(adopted.values())
        if not total:
            return r.get("model") or "—"
        return " · ".join(f"{k} {v / total:.0%}" for k, v in sorted(adopted.items(), key=lambda kv: -kv[1]))

    lines = ["| router / policy | quality | cost (µUSD / query) | expert calls | well-formed | reward | answers from |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        cost = None if r.get("cost_usd") is None else r["cost_usd"] * 1e6
        lines.append(f"| {name} | {f(r['quality'], '.3f')} | {f(cost, '.1f')} | {f(r['calls'], '.2f')} | "
                     f"{f(r['well_formed'], '.0%')} | {f(r['reward'], '+.3f')} | {shares(r)} |")
    return "\n".join(lines)


def load_matrix_env(data: Path, *, split: str, models: Sequence[str] | None, max_question_chars: int,
                    description_chars: int) -> tuple[RoutingData, MatrixEnv]:
    matrix = RoutingData.load(data)
    return matrix, MatrixEnv(matrix, split=split, models=models or None, max_question_chars=max_question_chars,
                             description_chars=description_chars)
