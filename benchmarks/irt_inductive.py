"""IRT on LLMs it never saw, against GraphRouter on the same unseen-model benchmark.

The protocol of ``benchmarks.graphrouter_inductive``: fit on the ``train`` rows without the
outcomes of ``--hold-out`` models, route the evaluation split over ALL models, judge against
the references over all models. GraphRouter scores the held-out models from their text
descriptors; IRT gives each one an ability vector from ``k`` of its calibrated answers (drawn
from the train rows: a new model answers a few known questions before it serves), for every
``k`` of ``--answers`` (0 = the prior: the average training expert).

    python -m benchmarks.irt_inductive --data ../shared/data/llmrouter --answers 0 10 30 100 \
        --with-graphrouter --json var/bench/signals/irt_inductive.json --markdown var/bench/signals/irt_inductive.md
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.graphrouter_inductive import DEFAULT_HOLD_OUT, _metrics, markdown
from benchmarks.output import write_json, write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(args) -> dict:
    from benchmarks.routing_stats import resample_weights
    from policies import create_policy
    from policies.data import RoutingData
    from policies.evaluation.harness import EvalConfig, lambda_grid, references
    from policies.features import configure_feature_stores

    configure_feature_stores(data_dir=args.cache_dir.parent.parent, cache_dir=args.cache_dir)  # var/cache/embeddings → var
    data = RoutingData.load(args.data)
    train = data.subset(data.rows_of("train"))
    ev = data.subset(data.rows_of(args.split))
    ev = ev.subset(ev.known.all(axis=1))
    lambdas = lambda_grid(train, EvalConfig())
    ref = references(ev)
    W = resample_weights(len(ev), args.boot, seed=args.seed) if args.boot else None
    held = [data.models.index(m) for m in args.hold_out]
    kept = [j for j in range(data.n_models) if j not in held]
    tasks = np.asarray(ev.task.tolist(), dtype=object)
    out = {"data": data.name, "split": args.split, "n_queries": len(ev), "hold_out": list(args.hold_out), "boot": args.boot,
           "irt_params": args.params, "reference": {"best_single": ref["best_single"], "oracle": ref["oracle"]},
           "variants": {}}
    plans = [("irt, trained on all", "irt", {}, list(range(data.n_models)))]
    plans += [(f"irt, inductive, {k} answers", "irt", {"exclude_models": tuple(args.hold_out), "calibration_answers": k},
               list(range(data.n_models))) for k in args.answers]
    plans += [("irt, without them", "irt", {}, kept)]
    if args.with_graphrouter:
        plans += [("graphrouter, trained on all", "graphrouter", {}, list(range(data.n_models))),
                  ("graphrouter, inductive (descriptors)", "graphrouter", {"exclude_models": tuple(args.hold_out)},
                   list(range(data.n_models))),
                  ("graphrouter, without them", "graphrouter", {}, kept)]
    for label, name, extra, columns in plans:
        params = {"random_state": args.seed, **(args.params if name == "irt" else {}), **extra}
        t0 = time.perf_counter()
        policy = create_policy(name, **params).fit(train.select_models([data.models[j] for j in columns]))
        fit_s = time.perf_counter() - t0
        quality = policy.predict_quality(ev.prompts)
        cost = policy.predict_query_cost(ev.prompts)
        choices = np.asarray(columns)[policy.choose_many(quality, cost, lambdas)]
        res = _metrics(choices, ev, ref, W)
        res["fit_s"] = round(fit_s, 1)
        res["share_to_held_out_at_lambda0"] = float(np.isin(choices[0], held).mean())
        res["share_to_held_out_all_lambdas"] = float(np.isin(choices, held).mean())
        if all(h in columns for h in held):
            res["per_task_pearson_r"] = {
                data.models[h]: float(np.corrcoef([quality[tasks == t, columns.index(h)].mean() for t in sorted(set(tasks))],
                                                  [ev.scores[tasks == t, h].mean() for t in sorted(set(tasks))])[0, 1])
                for h in held}
        out["variants"][label] = res
        print(f"{label:>40}: gap {res['gap_closed']:.3f} aiq {res['aiq']:.4f} to held-out {res['share_to_held_out_at_lambda0']:.1%} "
              f"r {res.get('per_task_pearson_r')}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/llmrouter"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--hold-out", nargs="+", default=list(DEFAULT_HOLD_OUT))
    parser.add_argument("--answers", nargs="+", type=int, default=[0, 10, 30, 100])
    parser.add_argument("--with-graphrouter", action="store_true")
    parser.add_argument("--param", action="append", default=[], help="IRT hyperparameter NAME=VALUE (JSON values)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the queries (0: no intervals)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/embeddings"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    args.params = {}
    for item in args.param:
        k, _, v = item.partition("=")
        try:
            args.params[k] = json.loads(v)
        except json.JSONDecodeError:
            args.params[k] = v
    report = run(args)
    print(markdown(report))
    write_json(args.json, report)
    write_text(args.markdown, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
