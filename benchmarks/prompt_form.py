"""What a policy fitted on raw questions loses when serving shows it another form of the query.

Routing matrices and calibrated prompts present each query as its bare question. A proxy that
handed policies the conversation as ``role: text`` lines, or with a client's system prompt in
front, would show them text they were never fitted on. Each policy is fitted once per form on
the same train rows; only the evaluation rows' prompts are rewritten (``{prompt}`` in a form is
the question). Reported per form: gap closed (llmrouter) with its 95 % interval, and the paired
difference against the first form (the same bootstrap resamples of the same queries).

    python -m benchmarks.prompt_form --data ../shared/data/llmrouter --policies knn tryage \
        'probe_cat=probe:conditioning="category"' --markdown var/bench/signals/prompt-form.md
"""

from __future__ import annotations

import os
from dataclasses import replace

from benchmarks.output import publish, split_read_arguments
from benchmarks.routing_stats import Rows, fmt, interval, resample_weights, sweep_distribution

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORMS = {"question": "{prompt}", "role tag": "user: {prompt}",
         "system prompt": "system: You are a helpful assistant.\nuser: {prompt}"}


def main(argv: list[str] | None = None) -> int:
    parser = split_read_arguments(__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", required=True)
    args = parser.parse_args(argv)

    from benchmarks.signals import parse_entries
    from policies.data import RoutingData
    from policies.evaluation.harness import EvalConfig, Hooks, evaluate
    from policies.features import configure_feature_stores

    configure_feature_stores(data_dir=args.cache_dir.parent.parent, cache_dir=args.cache_dir)
    data = RoutingData.load(args.data)
    rows = set(data.rows_of(args.split).tolist())
    labels, params = parse_entries(args.policies)
    W = resample_weights(len(rows), args.boot, seed=0)
    dists: dict[str, dict[str, dict]] = {}
    points: dict[str, dict[str, float]] = {}
    key = "gap_closed"
    for form, template in FORMS.items():
        shown = replace(data, prompts=[template.format(prompt=p) if i in rows else p for i, p in enumerate(data.prompts)])
        runs: dict[str, tuple] = {}
        report = evaluate(shown, labels, EvalConfig(split=args.split, policy_params=params),
                 Hooks(run_done=lambda n, r, ev, runs=runs: runs.__setitem__(n, (r, ev))))
        ev = next(iter(runs.values()))[1]
        key = "gap_closed" if ev.has_costs else "quality_at_best_cost"
        table = Rows(ev.scores, ev.cost_matrix(), ev.has_costs)
        dists[form] = {name: sweep_distribution(runs[name][0].choices, table, W, aiq=False)[key] for name in labels}
        points[form] = {name: float(report["policies"][name][key]) for name in labels}
        print(f"{form}: " + ", ".join(f"{n} {points[form][n]:.3f}" for n in labels), flush=True)

    first = next(iter(FORMS))
    out: dict[str, dict] = {}
    lines = [f"{data.name} / {args.split}: {len(rows)} queries, {key.replace('_', ' ')} by the form of the evaluation "
             f"prompts (policies fitted on the raw train questions); 95 % intervals over {args.boot} bootstrap resamples", "",
             "| policy | " + " | ".join(FORMS) + " | " + " | ".join(f"Δ {f} − {first}" for f in list(FORMS)[1:]) + " |",
             "|---|" + "---|" * (2 * len(FORMS) - 1)]
    for name in labels:
        cells, deltas = [], []
        out[name] = {}
        for form in FORMS:
            d = dists[form][name]
            lo, hi = interval(d)
            out[name][form] = {"point": points[form][name], "ci": (lo, hi)}
            cells.append(fmt(points[form][name], d))
            if form != first:
                diff = d - dists[first][name]
                dlo, dhi = interval(diff)
                gain = points[form][name] - points[first][name]
                out[name][form]["vs_first"] = {"point": gain, "ci": (dlo, dhi)}
                deltas.append(f"{gain:+.3f} [{dlo:+.3f}, {dhi:+.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(deltas) + " |")
    publish(lines, {"data": data.name, "split": args.split, "metric": key, "forms": FORMS, "policies": out},
            json_path=args.json, markdown_path=args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
