"""GraphRouter on LLMs it never saw: train without some models, route over all of them.

Three GraphRouter fits on the ``train`` rows of a routing matrix, all judged on the same
evaluation split against the same references (best single model and oracle over ALL models):

* ``all models``: trained with every model's outcomes;
* ``inductive``: trained without the outcomes of ``--hold-out`` models, which stay in the graph
  as LLM nodes built from their descriptors alone and are candidates at routing time;
* ``without them``: trained and routing over the other models only (the held-out ones are never
  candidates): what a router that cannot score new LLMs would do.

Besides the metrics of DESIGN.md §5 it reports how often the held-out models are chosen, and
how well their predicted quality tracks their real quality per task (Pearson r over tasks).

    python -m benchmarks.graphrouter_inductive --data ../shared/data/llmrouter
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_HOLD_OUT = ("qwen2.5-7b-instruct", "llama-3.3-nemotron-super-49b-v1")


def _metrics(choices: np.ndarray, ev, ref: dict, W: np.ndarray | None = None) -> dict:
    """Sweep metrics of the λ × query ``choices``; with bootstrap weights ``W`` (resamples × queries)
    also their percentile 95 % intervals (``ci``) and the choices themselves, for paired differences."""
    from policies.evaluation import metrics as M

    rows = np.arange(len(ev))[None, :]
    costs = ev.cost_matrix()
    pc, pq = costs[rows, choices].mean(axis=1), ev.scores[rows, choices].mean(axis=1)
    c_best, q_best = ref["best_single"]["cost"], ref["best_single"]["quality"]
    qabc = M.quality_at_best_cost(pc, pq, c_best)
    ctbq = M.cost_to_best_quality(pc, pq, q_best, c_best)
    out = {"aiq": M.aiq(pc, pq, ref["c_max"]) if ev.has_costs else float(pq.max()),
           "quality_at_best_cost": qabc, "cost_to_best_quality": ctbq,
           "gap_closed": M.gap_closed(qabc, q_best, ref["oracle"]["quality"]), "quality_max": float(pq.max())}
    if W is not None:
        from benchmarks.routing_stats import Rows, interval, sweep_distribution

        dist = sweep_distribution(choices, Rows(ev.scores, costs, ev.has_costs), W)
        out["ci"] = {k: interval(dist[k], nan_as_inf=k == "cost_to_best_quality")
                     for k in ("aiq", "quality_at_best_cost", "cost_to_best_quality", "gap_closed")}
        out["choices"] = np.asarray(choices).tolist()
    return out


def _ci(r: dict, key: str, fmt: str) -> str:
    lo, hi = (r.get("ci") or {}).get(key, (float("nan"), float("nan")))
    if not np.isfinite(lo):
        return ""
    return f" [{format(lo, fmt)}, {'∞' if not np.isfinite(hi) else format(hi, fmt)}]"


def run(args) -> dict:
    from benchmarks.routing_stats import resample_weights
    from policies import create_policy
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders
    from policies.evaluation.harness import EvalConfig, lambda_grid, references

    configure_encoders(cache_dir=args.cache_dir)
    data = RoutingData.load(args.data)
    missing = [m for m in args.hold_out if m not in data.models]
    if missing:
        raise SystemExit(f"--hold-out names models the matrix lacks: {missing}; it has {data.models}")
    train = data.subset(data.rows_of("train"))
    ev = data.subset(data.rows_of(args.split))
    ev = ev.subset(ev.known.all(axis=1))  # every model's outcome known: one comparison for all variants
    lambdas = lambda_grid(train, EvalConfig())
    ref = references(ev)
    W = resample_weights(len(ev), args.boot, seed=args.seed) if args.boot else None
    held = [data.models.index(m) for m in args.hold_out]
    kept = [j for j in range(data.n_models) if j not in held]
    params = {"random_state": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
    out = {"data": data.name, "split": args.split, "n_queries": len(ev), "hold_out": list(args.hold_out), "boot": args.boot,
           "reference": {"best_single": ref["best_single"], "oracle": ref["oracle"]}, "variants": {}}
    tasks = np.asarray(ev.task.tolist(), dtype=object)
    for label, exclude, columns in [("all models", (), list(range(data.n_models))),
                                    ("inductive", tuple(args.hold_out), list(range(data.n_models))),
                                    ("without them", (), kept)]:
        t0 = time.perf_counter()
        policy = create_policy("graphrouter", exclude_models=exclude, **params)
        policy.fit(train.select_models([data.models[j] for j in columns]))
        fit_s = time.perf_counter() - t0
        quality = policy.predict_quality(ev.prompts)
        cost = policy.predict_query_cost(ev.prompts)
        local = policy.choose_many(quality, cost, lambdas)
        choices = np.asarray(columns)[local]
        res = _metrics(choices, ev, ref, W)
        res["fit_s"] = round(fit_s, 1)
        res["share_to_held_out_at_lambda0"] = float(np.isin(choices[0], held).mean())
        res["share_to_held_out_all_lambdas"] = float(np.isin(choices, held).mean())
        if all(h in columns for h in held):
            corr = {}
            for h in held:
                col = columns.index(h)
                pred = [quality[tasks == t, col].mean() for t in sorted(set(tasks))]
                real = [ev.scores[tasks == t, h].mean() for t in sorted(set(tasks))]
                corr[data.models[h]] = float(np.corrcoef(pred, real)[0, 1])
            res["per_task_pearson_r"] = corr
        out["variants"][label] = res
        print(f"{label:>13}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in res.items() if k != "choices"), flush=True)
    return out


def markdown(report: dict) -> str:
    boot = f" 95 % intervals over {report['boot']} bootstrap resamples of the queries." if report.get("boot") else ""
    lines = [f"{report['data']} / {report['split']}, {report['n_queries']} queries; held out of training: "
             + ", ".join(f"`{m}`" for m in report["hold_out"]) + "." + boot, "",
             "| variant | aiq | quality@best-cost | cost→best-quality | gap closed | routed to held-out (λ=0 / all λ) "
             "| per-task r (predicted vs real), held-out models | fit s |", "|---|---|---|---|---|---|---|---|"]
    for label, r in report["variants"].items():
        ctbq = ("—" if r["cost_to_best_quality"] is None else f"{r['cost_to_best_quality']:.1%}") + _ci(r, "cost_to_best_quality", ".1%")
        corr = ", ".join(f"{v:.2f}" for v in (r.get("per_task_pearson_r") or {}).values()) or "—"
        lines.append(f"| {label} | {r['aiq']:.4f} | {r['quality_at_best_cost']:.3f} | {ctbq} | "
                     f"{r['gap_closed']:.3f}{_ci(r, 'gap_closed', '.3f')} | "
                     f"{r['share_to_held_out_at_lambda0']:.1%} / {r['share_to_held_out_all_lambdas']:.1%} | {corr} | {r['fit_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/llmrouter"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--hold-out", nargs="+", default=list(DEFAULT_HOLD_OUT))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the queries (0: no intervals)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/embeddings"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    report = run(args)
    print(markdown(report))
    write_json(args.json, report)
    write_text(args.markdown, markdown(report))


if __name__ == "__main__":
    main()
