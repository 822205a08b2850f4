"""The probe's per-layer curve, as a Markdown table, from trained probe artifacts.

A probe fitted by ``expertmux train probe`` keeps, per (block, pooling), the ridge strength with
the lowest cross-fitted MSE on its training rows, that MSE, the mean outcome of routing by the
cross-fitted predictions at λ = 0, Fisher separability and effective dimensionality. Several
artifacts (e.g. one per probed model) print side by side in one table.

    python -m benchmarks.probe_curve var/bench/signals/probe-llmrouter-smol-fp32 var/bench/signals/probe-llmrouter-gemma-fp32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.output import publish


def read_curve(folder: Path) -> tuple[str, dict[str, dict]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    curve = manifest["state"]["state"]["curve"]
    return manifest["hyperparameters"]["probe_model"], {k: v for k, v in curve.items() if ":" in k}


def table(curves: list[tuple[str, dict[str, dict]]]) -> list[str]:
    lines = ["| model | block | pooling | CV MSE | CV routed quality (λ=0) | ridge α | Fisher | eff. dim |",
             "|---|---|---|---|---|---|---|---|"]
    for model, curve in curves:
        best = min(curve, key=lambda k: curve[k]["cv_mse"])
        for key, e in sorted(curve.items(), key=lambda kv: (int(kv[0].split(":")[0]), kv[0])):
            block, pooling = key.split(":")
            mark = "**" if key == best else ""
            lines.append(f"| {model} | {block} | {pooling} | {mark}{e['cv_mse']:.4f}{mark} | {e['cv_routed_quality']:.3f} | "
                         f"{e['alpha']:g} | {e.get('fisher', '—')} | {e.get('effective_dim', '—')} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    curves = [read_curve(a) for a in args.artifacts]
    publish(table(curves), {m: c for m, c in curves}, json_path=args.json, markdown_path=args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
