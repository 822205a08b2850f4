"""Budget pacing on a simulated day: a key with a daily budget, Poisson traffic with a burst.

Requests arrive over one simulated UTC day (Poisson, ``--rate`` per second, ``--burst``× from
14:00 to 15:00), each a prompt drawn from the routing matrix's test split. A learned policy
(``--policy``, fitted on train) routes it by the base rule (argmax q̂ − λ·expected cost, as
``decide`` prices a request), the production budget guard (``router.access.budgets``, SQLite,
on the simulated clock) reserves its worst case and settles the matrix's real bill, and the
request's quality is the matrix's score of the expert that served it (0 when refused). Three
ways to spend the same budget:

- ``hard cap``: the served λ (``--lambda``) until reservations no longer fit, then 429s;
- ``pacing``: the production pacer (``router.pacing``: controller, spend read from the ledger
  every ``--update-s``, the cheapest fitting expert near the cap or when a reservation is refused);
- ``best fixed λ``: the one λ that spends the target on exactly this day's traffic, found in
  hindsight (a reference no online method can beat by much).

    python -m benchmarks.pacing_day --data ../shared/data/llmrouter --plot docs/img/pacing-day.png \
        --json var/bench/pacing.json --markdown var/bench/pacing.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
MAX_TOKENS = 256


@dataclass
class World:
    q_hat: np.ndarray  # (n, k) predicted quality
    score: np.ndarray  # (n, k) measured quality
    bill: np.ndarray  # (n, k) the matrix's cost of each answer
    predicted: np.ndarray  # (n, k) the decision's expected cost (prompt tokens + MAX_TOKENS at the prices)
    worst: np.ndarray  # (n, k) a reservation's bound (prompt bytes + template allowance, MAX_TOKENS)
    experts: list


def arrivals(rate: float, burst: float, n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t, times = 0.0, []
    while True:
        hour = t / 3600
        r = rate * (burst if 14 <= hour < 15 else 1.0)
        t += rng.exponential(1 / (rate * burst))  # thinning: propose at the peak rate, keep with r / peak
        if t >= 86400:
            break
        if rng.random() < r / (rate * burst):
            times.append(t)
    return np.array(times), rng.integers(n_rows, size=len(times))


def choose(w: World, row: int, lam: float) -> np.ndarray:
    """Candidates in preference order under the base rule at ``lam``."""
    utility = w.q_hat[row] - lam * w.predicted[row]
    return np.argsort(-utility, kind="stable")


def hindsight_lambda(w: World, rows: np.ndarray, target: float) -> float:
    lo, hi = 0.0, 1e7
    for _ in range(60):
        mid = (lo + hi) / 2 if hi < 1e7 else (lo * 10 if lo else 1.0)
        spend = sum(w.bill[r, choose(w, r, mid)[0]] for r in rows)
        if spend > target:
            lo = mid
        else:
            hi = mid
        if hi < 1e7 and (hi - lo) / hi < 1e-4:
            break
    return hi


def run(mode: str, w: World, times: np.ndarray, rows: np.ndarray, budget: float, *, lam0: float, update_s: float,
        target_share: float) -> dict:
    from sqlalchemy import insert

    from core.config import PacingConfig
    from core.errors import BudgetExceededError
    from core.types import Decision
    from router.access.budgets import BudgetGuard
    from router.access.keys import ApiKey
    from router.ledger import migrate
    from router.ledger.db import make_engine
    from router.ledger.models import ApiKeyRow
    from router.ledger.usage import apply_settlement
    from router.pacing.pacer import Pacer, SpendSource, cheapest

    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'ledger.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    now = [DAY0]
    key = ApiKey(id="k", name="team", prefix="emx-sim", created_at=DAY0, budget_usd_day=budget)
    with engine.begin() as conn:
        conn.execute(insert(ApiKeyRow), [{"id": "k", "name": "team", "key_hash": "h", "prefix": "emx-sim", "created_at": DAY0,
                                           "budget_usd_day": budget, "hash_scheme": "sha256"}])
    guard = BudgetGuard(engine, clock=lambda: now[0])
    pacer = Pacer(PacingConfig(update_s=update_s, target_share=target_share), SpendSource(engine), default_lambda=lam0,
                  clock=lambda: now[0]) if mode == "pacing" else None
    names = [e.name for e in w.experts]
    spent, quality, answered, refused, first_refusal, downgrades = 0.0, [], [], 0, None, 0
    series, next_update = [], 0.0
    for t, row in zip(times, rows):
        now[0] = DAY0 + timedelta(seconds=float(t))
        lam, near = lam0, False
        if pacer is not None:
            while next_update <= t:  # the background updates that would have run by now
                pacer.update(DAY0 + timedelta(seconds=next_update))
                next_update += update_s
            pace = pacer.pace(key)
            lam, near = pace.lambda_, pace.near_cap
        order = choose(w, row, lam)
        d = Decision(expert=names[order[0]], policy="p", policy_version="v", scores={n: 0.0 for n in names},
                     propensities={names[order[0]]: 1.0}, ranking=[names[i] for i in order])
        if near:
            d = cheapest(d, w.experts, prompt_tokens=1, completion_tokens=MAX_TOKENS)
            downgrades += 1
        res = None
        for attempt in range(2):
            cands = [names.index(n) for n in d.ranking[:3]]
            try:
                res = guard.reserve(key, max_cost_usd=float(max(w.worst[row, c] for c in cands)), max_tokens=10_000)
                break
            except BudgetExceededError:
                if pacer is None or attempt == 1:
                    break
                d = cheapest(d, w.experts, prompt_tokens=1, completion_tokens=MAX_TOKENS, alone=True)
                downgrades += 1
        if res is None:
            refused += 1
            first_refusal = first_refusal if first_refusal is not None else float(t)
            quality.append(0.0)
        else:
            e = names.index(d.expert)
            cost = float(w.bill[row, e])
            with engine.begin() as conn:
                apply_settlement(conn, res.settlement(cost_usd=cost, tokens=0))
            spent += min(cost, res.usd)
            quality.append(float(np.nan_to_num(w.score[row, e])))
            answered.append(quality[-1])
        if not series or t - series[-1][0] >= 300:
            series.append((float(t), spent, lam))
    series.append((86400.0, spent, lam))
    engine.dispose()
    q = np.array(quality)  # a refused request counts 0
    return {"mode": mode, "requests": len(q), "spent": spent, "spent_share": spent / budget, "refused": refused,
            "first_refusal_h": None if first_refusal is None else first_refusal / 3600,
            "downgrades": downgrades, "quality_per_request": float(q.mean()),
            "quality_per_answer": float(np.mean(answered)) if answered else 0.0, "series": series}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/llmrouter"))
    ap.add_argument("--policy", default="knn")
    ap.add_argument("--rate", type=float, default=0.06, help="requests per second outside the burst")
    ap.add_argument("--burst", type=float, default=4.0)
    ap.add_argument("--budget-share", type=float, default=0.4, help="the daily budget as a share of the unpaced day's spend")
    ap.add_argument("--lambda", dest="lambda_", type=float, default=0.0, help="the served λ (hard cap)")
    ap.add_argument("--update-s", type=float, default=60.0)
    ap.add_argument("--target-share", type=float, default=0.97)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("var/bench/cache"))
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)

    from policies import create_policy
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders

    configure_encoders(cache_dir=Path("var/cache/embeddings"))
    t0 = time.perf_counter()
    data = RoutingData.load(args.data)
    train, test_rows = data.subset(data.rows_of("train")), data.rows_of("test")
    experts = train.experts()
    cache = args.cache_dir / f"q_hat-{args.data.name}-{args.policy}.npy"
    if cache.exists():
        q_hat = np.load(cache)
    else:
        q_hat = np.full((len(data.prompts), len(experts)), np.nan)
        q_hat[test_rows] = create_policy(args.policy).fit(train).predict_quality([data.prompts[i] for i in test_rows])
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, q_hat)
    sel = data.select_models([e.name for e in experts])
    p_in = np.array([e.input_usd_per_mtok for e in experts]) / 1e6
    p_out = np.array([e.output_usd_per_mtok for e in experts]) / 1e6
    tokens = np.array([len(data.prompts[i]) // 4 + 1 for i in test_rows])
    nbytes = np.array([len(data.prompts[i].encode()) + 72 for i in test_rows])
    w = World(q_hat=q_hat[test_rows], score=sel.scores[test_rows], bill=sel.cost_matrix()[test_rows],
              predicted=np.outer(tokens, p_in) + MAX_TOKENS * p_out, worst=np.outer(nbytes, p_in) + MAX_TOKENS * p_out,
              experts=experts)
    times, rows = arrivals(args.rate, args.burst, len(test_rows), args.seed)
    unpaced = float(sum(w.bill[r, choose(w, r, args.lambda_)[0]] for r in rows))
    budget = round(args.budget_share * unpaced, 4)
    results = [run(m, w, times, rows, budget, lam0=args.lambda_, update_s=args.update_s, target_share=args.target_share)
               for m in ("hard cap", "pacing")]
    lam_star = hindsight_lambda(w, rows, budget * args.target_share)
    picks = [choose(w, r, lam_star)[0] for r in rows]
    fixed_q = float(np.mean([np.nan_to_num(w.score[r, e]) for r, e in zip(rows, picks)]))
    fixed_spend = float(sum(w.bill[r, e] for r, e in zip(rows, picks)))
    out = {"data": str(args.data), "policy": args.policy, "requests": len(rows), "budget_usd": budget,
           "unpaced_spend_usd": unpaced, "rate": args.rate, "burst": args.burst, "update_s": args.update_s,
           "results": results, "best_fixed_lambda": {"lambda": lam_star, "spent_share": fixed_spend / budget,
                                                     "quality_per_request": fixed_q},
           "seconds": round(time.perf_counter() - t0, 1)}
    md = render(out)
    print(md)
    if args.plot:
        plot(out, args.plot, args.target_share)
    write_json(args.json, out)
    write_text(args.markdown, md)
    return out


def render(o: dict) -> str:
    lines = [f"A simulated day: {o['requests']} requests (Poisson {o['rate']:g}/s, ×{o['burst']:g} from 14:00 to 15:00) from "
             f"{Path(o['data']).name} test, policy {o['policy']}; daily budget ${o['budget_usd']:.4f} "
             f"(unpaced the day would cost ${o['unpaced_spend_usd']:.4f})", "",
             "| way to spend | end spend / budget | 429s | first 429 | downgrades | quality per request | quality per answer |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in o["results"]:
        first = "—" if r["first_refusal_h"] is None else f"{int(r['first_refusal_h']):02d}:{int(r['first_refusal_h'] % 1 * 60):02d}"
        lines.append(f"| {r['mode']} | {r['spent_share']:.1%} | {r['refused']} | {first} | {r['downgrades']} | "
                     f"{r['quality_per_request']:.4f} | {r['quality_per_answer']:.4f} |")
    b = o["best_fixed_lambda"]
    lines.append(f"| best fixed λ in hindsight (λ = {b['lambda']:.0f}) | {b['spent_share']:.1%} | 0 | — | — | "
                 f"{b['quality_per_request']:.4f} | {b['quality_per_request']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(o: dict, path: Path, target_share: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    budget = o["budget_usd"]
    for r, color in zip(o["results"], ("tab:red", "tab:blue")):
        s = np.array(r["series"])
        ax.plot(s[:, 0] / 3600, s[:, 1], color=color, label=f"{r['mode']} (quality/request {r['quality_per_request']:.3f})")
    ax.plot([0, 24], [0, budget * target_share], color="gray", ls="--", label="pacing line (target by the window's end)")
    ax.axhline(budget, color="black", lw=0.8, label="budget (hard cap)")
    ax.axvspan(14, 15, color="orange", alpha=0.15, label=f"traffic burst (×{o['burst']:g})")
    ax.set_xlabel("hour of the simulated day (UTC)")
    ax.set_ylabel("spend (USD)")
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3))
    ax2 = ax.twinx()
    s = np.array(o["results"][1]["series"])
    ax2.plot(s[:, 0] / 3600, s[:, 2], color="tab:green", lw=0.8, alpha=0.7, label="pacing λ")
    ax2.set_yscale("log")
    ax2.set_ylabel("λ (quality points per USD)", color="tab:green")
    lines, labels = ax.get_legend_handles_labels()
    l2, lb2 = ax2.get_legend_handles_labels()
    ax.legend(lines + l2, labels + lb2, loc="upper left", fontsize=8)
    ax.set_title("Spend against a daily budget: hard cap vs pacing")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
