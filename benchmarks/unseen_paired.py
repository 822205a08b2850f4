"""Paired differences between unseen-model benchmark variants (``benchmarks.graphrouter_inductive``,
``benchmarks.irt_inductive``): gap closed of every variant against reference variants, on the
same seeded bootstrap resamples of the same evaluation rows (the reports' saved λ × query choices).

    python -m benchmarks.unseen_paired --data ../shared/data/llmrouter \
        --reports irt=var/bench/signals/irt-inductive.json graphrouter=var/bench/signals/graphrouter-inductive.json \
        --against "graphrouter, inductive" "irt, without them" --markdown var/bench/signals/unseen-paired.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text


def paired(variants: dict[str, dict], ev, against: list[str], n_boot: int, seed: int) -> dict:
    from benchmarks.routing_stats import Rows, interval, resample_weights, sweep_distribution

    W = resample_weights(len(ev), n_boot, seed=seed)
    rows = Rows(ev.scores, ev.cost_matrix(), ev.has_costs)
    dist = {k: sweep_distribution(np.asarray(v["choices"]), rows, W, aiq=False)["gap_closed"] for k, v in variants.items()}
    out: dict[str, dict] = {}
    for name, v in variants.items():
        out[name] = {"gap_closed": v["gap_closed"], "gap_closed_ci": interval(dist[name]), "vs": {}}
        for ref in against:
            if ref != name:
                out[name]["vs"][ref] = {"diff": v["gap_closed"] - variants[ref]["gap_closed"],
                                        "ci": interval(dist[name] - dist[ref])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/llmrouter"))
    parser.add_argument("--reports", nargs="+", required=True, help="PREFIX=report.json (saved with choices)")
    parser.add_argument("--against", nargs="+", required=True, help="variant labels, as PREFIX, LABEL")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    from policies.data import RoutingData

    variants: dict[str, dict] = {}
    split = None
    for item in args.reports:
        prefix, _, path = item.partition("=")
        report = json.loads(Path(path).read_text())
        split = split or report["split"]
        if report["split"] != split:
            raise SystemExit(f"{path} judges split {report['split']!r}, the others {split!r}")
        for label, v in report["variants"].items():
            if "choices" not in v:
                raise SystemExit(f"{path}: variant {label!r} has no saved choices (rerun its benchmark with --boot)")
            variants[label if label.startswith(prefix) else f"{prefix}, {label}"] = v
    missing = [a for a in args.against if a not in variants]
    if missing:
        raise SystemExit(f"--against names unknown variants {missing}; known: {list(variants)}")
    data = RoutingData.load(args.data)
    ev = data.subset(data.rows_of(split))
    ev = ev.subset(ev.known.all(axis=1))
    out = paired(variants, ev, args.against, args.boot, args.seed)
    lines = [f"{data.name} / {split}, {len(ev)} queries; paired bootstrap Δ of gap closed over {args.boot} resamples", "",
             "| variant | gap closed | " + " | ".join(f"Δ vs {a}" for a in args.against) + " |",
             "|---|---|" + "---|" * len(args.against)]
    for name, r in out.items():
        cells = ["—" if a == name else "{:+.3f} [{:+.3f}, {:+.3f}]".format(r["vs"][a]["diff"], *r["vs"][a]["ci"])
                 for a in args.against]
        lines.append(f"| {name} | {r['gap_closed']:.3f} [{r['gap_closed_ci'][0]:.3f}, {r['gap_closed_ci'][1]:.3f}] | "
                     + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.markdown, text)
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
