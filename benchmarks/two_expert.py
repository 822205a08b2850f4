"""Robustness to the expert set: every policy on two-expert subsets of routing matrices.

For each matrix: the strongest model (highest mean quality on ``train``) against the cheapest
(lowest mean cost on ``train``; on a quality-only set the smallest, then the weakest), fitted and
judged by the eval harness on ``--splits``, in two variants:

* ``quality``: costs dropped; APGR from the policy's predicted advantage (RouteLLM's curve: the
  top share of rows by predicted strong − weak go to the strong model);
* ``cost`` (sets with costs): costs kept; the policy's λ sweep decides per row (strong while
  q̂_s − q̂_w > λ·(ĉ_s − ĉ_w)), so rows are ranked by how many λ send them to the strong model,
  and APGR is taken over that ranking; gap closed and cost→best-quality too.

Each figure has a paired bootstrap 95 % interval over evaluation rows (``--boot`` resamples).
Random routing has APGR 0.5; a policy passes when its whole interval is above 0.5.
``--anonymous`` hides what a never-seen data set would not tell: model and task names become
opaque and model metadata (descriptors, sizes, prices) is dropped. ``--cv K`` reads no test row:
K grouped folds over the train rows, every train row predicted by a policy fitted without its
prompt (for choosing a policy's settings).

    python -m benchmarks.two_expert --data ../shared/data/llmrouter ../shared/data/routerdc \
        --json var/bench/two_expert.json --markdown var/bench/two_expert.md
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text
from benchmarks.routing_stats import (
    Rows,
    apgr_distribution,
    apgr_point,
    fmt,
    interval,
    resample_weights,
    sweep_distribution,
    sweep_priority,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_POLICIES = "random,best_single,knn,mlp,mf,coe,coe_cluster,tryage,graphrouter,oracle"


def pick_pair(data) -> tuple[str, str]:
    """(strongest, cheapest) on the train rows."""
    train = data.subset(data.rows_of("train")) if len(data.rows_of("train")) else data
    with np.errstate(invalid="ignore"):
        quality = np.nanmean(train.scores, axis=0)
    strong = int(np.nanargmax(quality))
    if data.has_costs:
        cost = np.nanmean(train.cost_matrix(), axis=0)
        key = [(cost[j], quality[j]) for j in range(data.n_models)]
    else:
        size = [data.model_info.get(m, {}).get("params_b") or np.inf for m in data.models]
        key = [(size[j], quality[j]) for j in range(data.n_models)]
    order = sorted((j for j in range(data.n_models) if j != strong), key=lambda j: key[j])
    return data.models[strong], data.models[order[0]]


def anonymous(data):
    """The same matrix as an unseen data set would arrive: opaque model and task names, no
    model metadata (no descriptor, size or price for policies that read them)."""
    names = [f"expert-{chr(97 + j)}" for j in range(data.n_models)]
    _, idx = np.unique(data.task.astype(str), return_inverse=True)
    tasks = np.array([f"kind-{i}" for i in idx], dtype=object)
    return replace(data, models=names, model_info={n: {} for n in names}, task=tasks, dataset=tasks.copy(),
                   name=f"{data.name} (anonymous)")


def train_only(data):
    """The train rows alone, as one split: the harness then cross-validates over them."""
    rows = data.rows_of("train")
    sub = data.subset(rows)
    return replace(sub, split=np.full(len(rows), CV_SPLIT, dtype=object))


CV_SPLIT = "train-cv"


def run_subset(data, split: str, variant: str, policies: list[str], args) -> dict:
    from policies.evaluation.harness import EvalConfig, Hooks, evaluate

    runs: dict[str, tuple] = {}
    cfg = EvalConfig(split=split, seed=args.seed, policy_params=args.params, n_folds=max(args.cv, 2))
    t0 = time.perf_counter()
    report = evaluate(data, policies, cfg, Hooks(run_done=lambda name, run, ev: runs.__setitem__(name, (run, ev))))
    elapsed = time.perf_counter() - t0
    _, ev = next(iter(runs.values()))
    both = ev.known.all(axis=1)
    fitted_on = data.rows_of("train") if split != CV_SPLIT else data.rows_of(CV_SPLIT)
    train_means = np.nanmean(data.scores[fitted_on], axis=0)
    strong = int(np.nanargmax(train_means))
    rows = Rows(ev.scores[both], ev.cost_matrix()[both], ev.has_costs)
    W = resample_weights(int(both.sum()), args.boot, seed=args.seed)
    out = {"split": split, "variant": variant, "models": {"strong": data.models[strong], "weak": data.models[1 - strong]},
           "n_queries": int(both.sum()), "seconds": round(elapsed, 1), "policies": {}}
    for name in policies:
        run, _ = runs[name]
        res = report["policies"][name]
        entry = {"apgr": res.get("apgr"), "aiq": res.get("aiq"), "gap_closed": res.get("gap_closed"),
                 "cost_to_best_quality": res.get("cost_to_best_quality")}
        s_col, w_col = rows.scores[:, strong], rows.scores[:, 1 - strong]
        dist = apgr_distribution(run.advantage[both], s_col, w_col, W, seed=args.seed)
        entry["apgr_ci"] = interval(dist)
        if variant == "cost":
            prio = sweep_priority(run.choices[:, both], strong)
            entry["apgr_sweep"] = apgr_point(prio, s_col, w_col, seed=args.seed)
            entry["apgr_sweep_ci"] = interval(apgr_distribution(prio, s_col, w_col, W, seed=args.seed))
            sd = sweep_distribution(run.choices[:, both], rows, W)
            for key in ("gap_closed", "cost_to_best_quality", "aiq"):
                entry[f"{key}_ci"] = interval(sd[key], nan_as_inf=key == "cost_to_best_quality")
        out["policies"][name] = entry
    return out


def markdown(results: list[dict], policies: list[str]) -> str:
    lines = ["| policy | " + " | ".join(f"{r['data']} {r['split']} ({r['variant']})" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for name in policies:
        cells = []
        for r in results:
            e = r["policies"].get(name)
            if e is None:
                cells.append("—")
                continue
            key = "apgr_sweep" if r["variant"] == "cost" else "apgr"
            point, (lo, hi) = e.get(key), e.get(f"{key}_ci", (np.nan, np.nan))
            ok = "✓" if np.isfinite(lo) and lo > 0.5 else ("✗" if name not in ("random", "best_single", "oracle") else "")
            cells.append("—" if point is None else f"{point:.3f} [{lo:.3f}, {hi:.3f}] {ok}".strip())
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Subsets: " + "; ".join(f"{r['data']} {r['split']} ({r['variant']}): {r['models']['strong']} vs "
                                         f"{r['models']['weak']}, {r['n_queries']} queries" for r in results))
    cost_runs = [r for r in results if r["variant"] == "cost"]
    if cost_runs:
        lines += ["", "With cost (λ sweep): gap closed and cost→best-quality, 95 % intervals", "",
                  "| policy | " + " | ".join(f"{r['data']} {r['split']} gap closed | cost→best-quality" for r in cost_runs) + " |",
                  "|---|" + "---|---|" * len(cost_runs)]
        for name in policies:
            cells = []
            for r in cost_runs:
                e = r["policies"][name]
                cells.append(fmt(e["gap_closed"], None) + " " + _ci(e.get("gap_closed_ci")))
                cells.append(fmt(e["cost_to_best_quality"], None, pct=True) + " " + _ci(e.get("cost_to_best_quality_ci"), pct=True))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ci(ci, pct: bool = False) -> str:
    if not ci or not np.isfinite(ci[0]):
        return ""
    s = 100.0 if pct else 1.0
    d = 1 if pct else 3
    hi = "∞" if not np.isfinite(ci[1]) else f"{ci[1] * s:.{d}f}"
    return f"[{ci[0] * s:.{d}f}, {hi}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--policies", default=DEFAULT_POLICIES)
    parser.add_argument("--splits", default="test,ood_test", help="evaluation splits (those a set lacks are skipped)")
    parser.add_argument("--variants", default="quality,cost")
    parser.add_argument("--anonymous", action="store_true", help="opaque model and task names, no model metadata")
    parser.add_argument("--cv", type=int, default=0, help="K grouped folds over the train rows instead of --splits")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--param", action="append", default=[], help="POLICY.NAME=VALUE (as expertmux eval)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/embeddings"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    from cli.eval import _parse_params
    from policies.data import RoutingData
    from policies.features import configure_feature_stores

    configure_feature_stores(data_dir=args.cache_dir.parent.parent, cache_dir=args.cache_dir)  # var/cache/embeddings → var
    args.params = _parse_params(args.param)
    policies = [p for p in args.policies.split(",") if p]
    results = []
    for folder in args.data:
        full = RoutingData.load(folder)
        strong, cheap = pick_pair(full)
        pair = full.select_models([strong, cheap])
        if args.anonymous:
            pair = anonymous(pair)
        for variant in [v for v in args.variants.split(",") if v]:
            if variant == "cost" and not pair.has_costs:
                continue
            data = pair if variant == "cost" else replace(pair, costs=None)
            splits = [s for s in args.splits.split(",") if s in set(full.split.tolist())]
            if args.cv:
                data, splits = train_only(data), [CV_SPLIT]
            for split in splits:
                print(f"{full.name} {split} ({variant}): {strong} vs {cheap}", flush=True)
                r = run_subset(data, split, variant, policies, args)
                r["data"] = full.name + (" anon." if args.anonymous else "")
                results.append(r)
                for name, e in r["policies"].items():
                    key = "apgr_sweep" if variant == "cost" else "apgr"
                    print(f"  {name:14s} {key} {e.get(key)}  CI {e.get(key + '_ci')}", flush=True)
                write_json(args.json, {"results": results, "policies": policies, "boot": args.boot})
    text = markdown(results, policies)
    print(text)
    write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
