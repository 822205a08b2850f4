"""Cascade routing against plain routing (same ex-ante estimates), a threshold cascade, the
paper's ordered cascade and every single expert, with paired bootstrap 95 % intervals.

    # the simulated three-expert calibration matrix with known answer-level confidence
    python -m benchmarks.cascade answers --sim3 var/bench/cascade/sim3 --out var/bench/cascade/sim3-report
    # a calibration folder of the configured experts (its matrix.parquet; built from the cells if absent)
    python -m benchmarks.cascade answers --data var/calibration/local-default-200 --out var/bench/cascade/local
    # the shared sets in simulation mode: the gain over routing as the post-hoc noise grows
    python -m benchmarks.cascade noise --data ../shared/data/llmrouter ../shared/data/routerdc --out var/bench/cascade/noise

Every policy is fitted on ``train`` and judged once on ``test``; λ sweeps the grid of
``expertmux eval``. Outputs: ``report.json``, ``report.md`` and PNG plots in ``--out``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.cascade_stats import Curve, compare, fmt
from benchmarks.output import write_json, write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ANSWER_POLICIES = {  # label → (registered name, extra hyperparameters)
    "routing": ("cascade_route", {}),
    "threshold cascade": ("cascade_threshold", {}),
    "ordered cascade": ("cascade", {"strategy": "cascade"}),
    "cascade routing": ("cascade", {}),
}


def load(path: Path):
    from policies.data import RoutingData

    if (path / "matrix.parquet").exists() or path.suffix == ".parquet":
        return RoutingData.load(path)
    from router.calibration.matrix import build_frame
    from router.calibration.store import CellStore

    store = CellStore(path)  # a calibration still running: its cells so far, read-only
    cells = store.cells()
    experts = sorted({e for _, e in cells})
    df = build_frame(store.prompts(), cells, experts)
    df = df[df[[f"score::{e}" for e in experts]].notna().all(axis=1)]  # rows every expert has answered
    return RoutingData.from_frame(df, {"models": {}}, name=path.name)


def run_policies(data, specs: dict[str, tuple[str, dict]], *, n_lambdas: int, common: dict) -> tuple[dict, dict, object]:
    from policies.evaluation.harness import EvalConfig, lambda_grid
    from policies.registry import create_policy

    train, test = data.subset(data.rows_of("train")), data.subset(data.rows_of("test"))
    test = test.subset(test.known.all(axis=1))  # rows with every expert's outcome: every policy has every option
    lambdas = lambda_grid(train, EvalConfig(n_lambdas=n_lambdas))
    curves, info = {}, {}
    for label, (name, params) in specs.items():
        t0 = time.perf_counter()
        policy = create_policy(name, **{**common, **params}).fit(train)
        fit_s = time.perf_counter() - t0
        out = policy.cascade_many(test, lambdas)
        curves[label] = Curve(out["run"].quality(test.scores), out["spent"], out["steps"].astype(float))
        info[label] = {**out["info"]["cascade"], "fit_s": round(fit_s, 2), "run_s": round(time.perf_counter() - t0 - fit_s, 2)}
        print(f"  {label}: fit {fit_s:.1f}s, estimator {info[label]['estimator']}", flush=True)
    return curves, info, test


def calibration_table(data) -> list[dict]:
    """Brier / ECE / AUROC of each estimator per expert on test, calibrated on train (isotonic and Platt)."""
    from policies.cascade_quality import ViewGrid
    from policies.posthoc import ESTIMATORS, auroc, brier, ece, fit_calibrator

    train, test = data.subset(data.rows_of("train")), data.subset(data.rows_of("test"))
    g_tr = ViewGrid(train.prompts, train.models, train.answers, train.logprobs, train.judge)
    g_te = ViewGrid(test.prompts, test.models, test.answers, test.logprobs, test.judge)
    m = data.n_models
    rows = []
    for name, est in ESTIMATORS.items():
        if (est.needs == "judge" and (data.judge is None or not np.isfinite(data.judge).any())) or \
                (est.needs == "logprobs" and (data.logprobs is None or not any(data.logprobs.ravel()))):
            continue
        for e in range(m):
            ctx = sum(1 << j for j in range(m) if j != e) if est.uses_others else 0
            ok_tr, ok_te = np.isfinite(train.scores).all(1), np.isfinite(test.scores).all(1)
            X_tr, X_te = g_tr.features(est, e, ctx)[ok_tr], g_te.features(est, e, ctx)[ok_te]
            y_tr, y_te = train.scores[ok_tr, e], test.scores[ok_te, e]
            row = {"estimator": name, "expert": data.models[e], "n_test": int(ok_te.sum())}
            for method in ("isotonic", "platt"):
                p = fit_calibrator(X_tr, y_tr, method).predict(X_te)
                row[method] = {"brier": brier(p, y_te), "ece": ece(p, y_te)}
                if method == "isotonic" or "auroc" not in row:
                    row["auroc"] = auroc(p, y_te)
            rows.append(row)
    for e in range(m):  # the floor every estimator must beat: the expert's training mean
        y_te = test.scores[np.isfinite(test.scores).all(1), e]
        p = np.full(len(y_te), float(np.nanmean(train.scores[:, e])))
        rows.append({"estimator": "base rate", "expert": data.models[e], "n_test": len(y_te),
                     "isotonic": {"brier": brier(p, y_te), "ece": ece(p, y_te)}, "auroc": float("nan")})
    return rows


def true_confidence_rows(folder: Path, data) -> list[dict]:
    """The ceiling on the simulated matrix: its known answer-level confidence, scored like an estimator."""
    import pandas as pd

    from policies.posthoc import auroc, brier, ece

    df = pd.read_parquet(folder / "matrix.parquet")
    df = df[df["split"] == "test"]
    rows = []
    for e in data.models:
        p, y = df[f"confidence::{e}"].to_numpy(float), df[f"score::{e}"].to_numpy(float)
        rows.append({"estimator": "true confidence (ceiling)", "expert": e, "n_test": len(y),
                     "isotonic": {"brier": brier(p, y), "ece": ece(p, y)}, "auroc": auroc(p, y)})
    return rows


def markdown_answers(report: dict) -> str:
    res = report["results"]
    lines = [f"### {report['name']} — test rows: {res['n']}, bootstrap resamples: {res['boot']}", "",
             "| policy | AUC ×100 (paper) | AIQ | quality at best-single cost | cost to best-single quality | max calls/query |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, row in res["policies"].items():
        calls = max(row["curve"].get("calls") or [1.0])
        lines.append(f"| {label} | {fmt(row['auc'], 2)} | {fmt(row['aiq'], 4)} | {fmt(row['q@best'])} | "
                     f"{fmt(row['cost→best'], pct=True)} | {calls:.2f} |")
    for j, s in res["singles"].items():
        lines.append(f"| single: {report['models'][int(j)]} | — | — | {s['quality']:.3f} at ${s['cost']:.3g} | — | 1 |")
    lines += ["", "| comparison | ΔAUC ×100 | ΔAIQ | Δquality at equal cost: min … max | never worse | better somewhere |",
              "|---|---:|---:|---:|:---:|:---:|"]
    for pair, g in res["gains"].items():
        lines.append(f"| {pair} | {fmt(g['auc_delta'], 2)} | {fmt(g['aiq_delta'], 4)} | "
                     f"{g['min_delta']:+.3f} … {g['max_delta']:+.3f} | {'yes' if g['never_worse'] else 'NO'} | "
                     f"{'yes' if g['better_somewhere'] else 'no'} |")
    if report.get("calibration"):
        lines += ["", "| estimator | expert | Brier (isotonic) | ECE (isotonic) | Brier (Platt) | ECE (Platt) | AUROC |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in report["calibration"]:
            pl = r.get("platt") or {}
            lines.append(f"| {r['estimator']} | {r['expert']} | {r['isotonic']['brier']:.4f} | {r['isotonic']['ece']:.4f} | "
                         f"{pl.get('brier', float('nan')):.4f} | {pl.get('ece', float('nan')):.4f} | {r['auroc']:.3f} |")
    return "\n".join(lines).replace("nan", "—")


def plot_curves(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, row in report["results"]["policies"].items():
        c, q = np.array(row["curve"]["cost"]), np.array(row["curve"]["quality"])
        order = np.argsort(c)
        ax.plot(c[order], q[order], marker=".", ms=3, label=label)
    for j, s in report["results"]["singles"].items():
        ax.scatter([s["cost"]], [s["quality"]], marker="*", s=120, zorder=5)
        ax.annotate(report["models"][int(j)], (s["cost"], s["quality"]), textcoords="offset points", xytext=(5, -10))
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD, every call counted)")
    ax.set_ylabel("mean quality of the returned answer")
    ax.set_title(f"{report['name']}: test split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def answers_mode(args) -> None:
    from policies.embeddings import configure_encoders

    configure_encoders(cache_dir=Path(args.cache_dir))
    if args.sim3:
        from tests.support import cascade_matrix

        folder = Path(args.sim3)
        if not (folder / "matrix.parquet").exists():
            cascade_matrix.write(folder, n_per_task=args.n_per_task, seed=args.seed)
    else:
        folder = Path(args.data)
    data = load(folder)
    print(f"{data.name}: {len(data)} rows, experts {data.models}", flush=True)
    common = {"encoder": args.encoder, "random_state": args.seed, **({"estimator": args.estimator} if args.estimator else {})}
    curves, info, test = run_policies(data, ANSWER_POLICIES, n_lambdas=args.lambdas, common=common)
    pairs = [("cascade routing", "routing"), ("cascade routing", "threshold cascade"), ("threshold cascade", "routing")]
    res = compare(curves, test.scores, test.cost_matrix(), boot=args.boot, seed=args.seed, pairs=pairs)
    report = {"name": data.name, "models": test.models, "results": res, "policies": info,
              "calibration": calibration_table(data) + (true_confidence_rows(folder, data) if args.sim3 else [])}
    out = Path(args.out)
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown_answers(report))
    plot_curves(report, out / "curves.png")
    print(markdown_answers(report))


def noise_mode(args) -> None:
    from policies.data import RoutingData

    posts = [float(x) for x in args.post.split(",")]
    report: dict = {"ante": args.ante, "post": posts, "max_depth": args.max_depth, "sets": {},
                    "note": "quality-only sets: cost = calls, areas over 1 … number of experts"}
    for path in args.data:
        data = RoutingData.load(path)
        rows = []
        for sp in posts:
            common = {"simulate": [args.ante, sp], "max_depth": args.max_depth, "n_samples": args.samples,
                      "random_state": args.seed}
            specs = {"routing": ("cascade_route", {}), "cascade routing": ("cascade", {}),
                     "threshold cascade": ("cascade_threshold", {"max_depth": None})}  # a cascade walks every expert
            print(f"{data.name}: σ_post = {sp}", flush=True)
            curves, info, test = run_policies(data, specs, n_lambdas=args.lambdas, common=common)
            span = None if data.has_costs else (1.0, float(data.n_models))  # quality-only: the cost of a call is 1
            res = compare(curves, test.scores, test.cost_matrix(), boot=args.boot, seed=args.seed, span=span,
                          pairs=[("cascade routing", "routing"), ("threshold cascade", "routing")])
            rows.append({"post": sp, "auc": {k: v["auc"] for k, v in res["policies"].items()}, "gains": {
                k: {kk: g[kk] for kk in ("auc_delta", "aiq_delta", "never_worse", "better_somewhere", "min_delta", "max_delta")}
                for k, g in res["gains"].items()}})
        report["sets"][data.name] = rows
    out = Path(args.out)
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown_noise(report))
    plot_noise(report, out / "noise.png")
    print(markdown_noise(report))


def markdown_noise(report: dict) -> str:
    lines = [f"σ_ante = {report['ante']} (ex-ante noise), max_depth = {report['max_depth']}", "",
             "| set | σ_post | AUC routing | AUC threshold cascade | AUC cascade routing | ΔAUC cascade routing − routing |"
             " never worse | better somewhere |", "|---|---:|---:|---:|---:|---:|:---:|:---:|"]
    for name, rows in report["sets"].items():
        for r in rows:
            g = r["gains"]["cascade routing − routing"]
            lines.append(f"| {name} | {r['post']:g} | {fmt(r['auc']['routing'], 2)} | {fmt(r['auc']['threshold cascade'], 2)} | "
                         f"{fmt(r['auc']['cascade routing'], 2)} | {fmt(g['auc_delta'], 2)} | "
                         f"{'yes' if g['never_worse'] else 'NO'} | {'yes' if g['better_somewhere'] else 'no'} |")
    return "\n".join(lines)


def plot_noise(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, rows in report["sets"].items():
        x = np.array([r["post"] for r in rows])
        for key, style in (("cascade routing − routing", "-o"), ("threshold cascade − routing", "--s")):
            d = [r["gains"][key]["auc_delta"] for r in rows]
            y = np.array([v["value"] for v in d])
            err = np.array([[v["value"] - v["lo"] for v in d], [v["hi"] - v["value"] for v in d]])
            ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=f"{name}: {key.split(' −')[0]}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("post-hoc estimator noise σ_post (ex-ante noise fixed)")
    ax.set_ylabel("gain over routing: ΔAUC ×100 (95 % interval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("answers", help="a matrix with answers and logprobs (simulated or a calibration folder)")
    a.add_argument("--sim3", help="folder of the simulated three-expert matrix (written if absent)")
    a.add_argument("--data", help="a calibration folder or routing matrix with answer:: columns")
    a.add_argument("--n-per-task", type=int, default=500)
    a.add_argument("--encoder", default="minilm")
    a.add_argument("--estimator", default=None, help="post-hoc estimator (default: auto, by cross-fitted Brier on train)")
    a.add_argument("--cache-dir", default="var/cache/embeddings")
    n = sub.add_parser("noise", help="shared sets in simulation mode: gain vs post-hoc noise")
    n.add_argument("--data", nargs="+", required=True)
    n.add_argument("--ante", type=float, default=0.6)
    n.add_argument("--post", default="0,0.1,0.2,0.3,0.6,1.2,2.4")
    n.add_argument("--max-depth", type=int, default=3)
    n.add_argument("--samples", type=int, default=64)
    for p in (a, n):
        p.add_argument("--out", required=True)
        p.add_argument("--boot", type=int, default=500)
        p.add_argument("--lambdas", type=int, default=100)
        p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.mode == "answers" and not (args.sim3 or args.data):
        ap.error("answers needs --sim3 DIR or --data DIR")
    (answers_mode if args.mode == "answers" else noise_mode)(args)


if __name__ == "__main__":
    main()
