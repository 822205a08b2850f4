"""Signals beyond the sentence embedding: policies side by side with bootstrap intervals and
paired differences against reference policies (tryage, kNN), through the eval harness.

Each entry is a policy name, or ``label=policy:param=value;param=value`` for a configuration
of a registered policy under its own label (values parse as JSON), e.g.

    python -m benchmarks.signals --data ../shared/data/llmrouter --split test \
        --policies best_single knn tryage "probe_smol=probe:probe_model=\"smollm2-135m-instruct\"" \
        --json var/bench/signals/llmrouter-test.json --markdown var/bench/signals/llmrouter-test.md

``--cv K``: judge on the *train* rows by grouped K-fold cross-validation instead (every test row
stays unread): the protocol for choosing features, losses and hyperparameters.

For every policy: aiq, quality@best-cost, cost→best-quality and gap closed with percentile 95 %
intervals over ``--boot`` resamples of the evaluation rows, and, for each ``--against`` policy,
the paired difference (same resamples) of gap closed (on quality-only sets: of accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text
from benchmarks.routing_stats import Rows, interval, parse_sample, resample_weights, subsample, sweep_distribution

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_policy_spec(spec: str) -> tuple[str, dict]:
    """``policy`` or ``policy:name=value;name=value`` (JSON values; anything else a string) →
    (policy, params)."""
    policy, _, args = spec.partition(":")
    params = {}
    for item in [a for a in args.split(";") if a]:
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return policy, params


def parse_entries(entries: list[str]) -> tuple[list[str], dict[str, dict]]:
    """Labels in order and {label: params}; aliases are registered in the policy registry."""
    from policies.registry import _POLICIES, register_policy

    labels, params = [], {}
    for raw in entries:
        label, sep, rest = raw.partition("=")
        if not sep or ":" not in rest and rest not in _POLICIES:
            labels.append(raw)
            continue
        policy, kv = parse_policy_spec(rest)
        register_policy(label, _POLICIES[policy])
        labels.append(label)
        params[label] = kv
    return labels, params


def run(args) -> dict:
    from policies.data import RoutingData
    from policies.evaluation.harness import EvalConfig, Hooks, evaluate
    from policies.features import configure_feature_stores

    configure_feature_stores(data_dir=args.cache_dir.parent.parent, cache_dir=args.cache_dir)  # var/cache/embeddings → var
    data = subsample(RoutingData.load(args.data), parse_sample(args.sample))
    split = args.split
    if args.cv:  # train rows only, K-fold grouped cross-validation
        train = data.subset(data.rows_of("train"))
        data = replace(train, split=np.full(len(train), "cv", dtype=object))
        split = "cv"
    labels, params = parse_entries(args.policies)
    runs: dict[str, tuple] = {}
    cfg = EvalConfig(split=split, n_folds=args.cv or 5, seed=args.seed, policy_params=params)
    t0 = time.perf_counter()
    report = evaluate(data, labels, cfg, Hooks(run_done=lambda n, r, ev: runs.__setitem__(n, (r, ev)),
                                               fit_advance=lambda n: print(f"  fitted {n}", flush=True)))
    _, ev = next(iter(runs.values()))
    rows = Rows(ev.scores, ev.cost_matrix(), ev.has_costs)
    W = resample_weights(len(ev), args.boot, seed=args.seed)
    dists = {name: sweep_distribution(runs[name][0].choices, rows, W) for name in labels}
    key = "gap_closed" if ev.has_costs else "quality_at_best_cost"
    out = {"data": data.name, "split": split, "cv_folds": args.cv, "sample": args.sample, "n_queries": len(ev), "boot": args.boot,
           "seconds": round(time.perf_counter() - t0, 1), "references": report["reference"], "params": params,
           "policies": {}}
    for name in labels:
        res = report["policies"][name]
        entry = {k: res.get(k) for k in ("aiq", "quality_at_best_cost", "cost_to_best_quality", "gap_closed", "fit_s",
                                          "decide_single_ms", "delta_vs_best_single", "delta_se")}
        for k in ("aiq", "quality_at_best_cost", "gap_closed", "cost_to_best_quality"):
            entry[f"{k}_ci"] = interval(dists[name][k], nan_as_inf=k == "cost_to_best_quality")
        entry["vs"] = {}
        for ref in args.against:
            if ref in dists and ref != name:
                diff = dists[name][key] - dists[ref][key]
                mine, theirs = res.get(key), report["policies"][ref].get(key)
                point = np.nan if mine is None or theirs is None else mine - theirs
                entry["vs"][ref] = {"metric": key, "diff": float(point), "ci": interval(diff),
                                    "p_le_0": float(np.mean(diff[np.isfinite(diff)] <= 0))}
        if res.get("learned"):
            entry["learned"] = res["learned"]
        out["policies"][name] = entry
    return out


def _ci(ci, digits=3, pct=False) -> str:
    lo, hi = ci
    s = 100.0 if pct else 1.0
    d = 1 if pct else digits
    if not np.isfinite(lo):
        return ""
    top = "∞" if not np.isfinite(hi) else f"{hi * s:.{d}f}"
    return f" [{lo * s:.{d}f}, {top}]"


def markdown(out: dict, against: list[str]) -> str:
    ref = out["references"]
    has_cost = ref["best_single"]["cost"] != 1.0 or ref["c_max"] != 1.0
    cv = f" (train CV, {out['cv_folds']} folds)" if out["cv_folds"] else ""
    sample = f" (seeded subsample {out['sample']})" if out.get("sample") else ""
    head = (f"{out['data']} / {out['split']}{cv}{sample}: "
            f"{out['n_queries']} queries; best single {ref['best_single']['model']} {ref['best_single']['quality']:.3f}, "
            f"oracle {ref['oracle']['quality']:.3f}; 95 % intervals over {out['boot']} bootstrap resamples")
    vs = [a for a in against if a in out["policies"]]
    cols = ["aiq", "quality@best-cost", "cost→best-quality", "gap closed"] if has_cost else ["accuracy", "gap closed"]
    lines = [head, "", "| policy | " + " | ".join(cols) + "".join(f" | Δ vs {a}" for a in vs) + " |",
             "|---|" + "---|" * (len(cols) + len(vs))]
    for name, e in out["policies"].items():
        cells = []
        if has_cost:
            cells.append(f"{e['aiq']:.4f}" if e["aiq"] is not None else "—")
            q = e["quality_at_best_cost"]
            cells.append("—" if q is None else f"{q:.3f}" + _ci(e["quality_at_best_cost_ci"]))
            ctbq = e["cost_to_best_quality"]
            cells.append(("—" if ctbq is None else f"{ctbq * 100:.1f}%") + _ci(e["cost_to_best_quality_ci"], pct=True))
        else:
            cells.append(f"{e['aiq']:.4f}" + _ci(e["aiq_ci"], 4))
        cells.append(("—" if e["gap_closed"] is None else f"{e['gap_closed']:.3f}") + _ci(e["gap_closed_ci"]))
        for a in vs:
            d = e["vs"].get(a)
            cells.append("—" if d is None else f"{d['diff']:+.3f}" + _ci(d["ci"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    metric = "gap closed" if has_cost else "accuracy"
    lines += ["", f"Δ: paired bootstrap difference of {metric} (same resampled queries for both policies)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--cv", type=int, default=0, help="K-fold CV on the train rows instead of --split")
    parser.add_argument("--sample", default="", help="seeded random rows per split (e.g. train=3000,test=3000): "
                        "every policy is fitted and judged on the same subsample")
    parser.add_argument("--policies", nargs="+", required=True)
    parser.add_argument("--against", nargs="*", default=["tryage", "knn"])
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/embeddings"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    out = run(args)
    text = markdown(out, args.against)
    print(text)
    write_json(args.json, out)
    write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
