"""Our cascade routing against the paper's published code, on one small matrix and one noise seed.

The paper's code (eth-sri/cascade-routing, ``src/selection``) is read at run time from a local
mirror of its repository into a temporary folder; nothing of it is copied into this project. Both
implementations get the SAME simulated estimates (ours: ``SimulatedQuality``, the paper's
GroundTruthQualityComputer rule: true score + Gaussian noise, linear recalibration per expert,
σ of an expert not run = std(ex-ante − post-hoc)), the same true costs as cost estimates and the
same λ for every step, and route the same test rows one query at a time. We compare per query
the experts each calls and the answer each returns, in three runs of the paper's code:

1. ``matched`` — its E[max] computed with our fixed normal draws and a σ scale (the only change);
2. ``std-fix`` — its own Sobol draws (random: scrambled, unseeded), σ scale;
3. ``published`` — as published: independent estimates scaled by the VARIANCE (``transform_samples``
   multiplies the draws by ``diag(Σ)``, i.e. σ², not σ), its own draws.

    python -m benchmarks.cascade_paper_check --paper-repo /work/.mirror/eth-sri+cascade-routing/repo \\
        --data ../shared/data/llmrouter --json var/bench/cascade/paper_check.json
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from benchmarks.output import write_json

FILES = ("base_algorithm", "base_computer", "baseline_cascader", "cascade_router", "cost_computer", "lambda_strategy",
         "quality_computer", "router", "statistics")


def import_paper(repo: Path, where: Path):
    """The paper's modules as package ``paper_selection`` (logging and hyperopt stubbed: unused here)."""
    pkg = where / "paper_selection"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in FILES:
        src = subprocess.run(["git", f"--git-dir={repo}", "show", f"HEAD:src/selection/{name}.py"], check=True,
                             capture_output=True, text=True).stdout
        (pkg / f"{name}.py").write_text(src)
    quiet = types.SimpleNamespace(**{k: (lambda *a, **kw: None) for k in ("info", "debug", "warning", "error")})
    sys.modules.setdefault("loguru", types.SimpleNamespace(logger=quiet))
    sys.modules.setdefault("hyperopt", types.SimpleNamespace(fmin=None, tpe=None, hp=None))
    sys.path.insert(0, str(where))
    mods = {n: importlib.import_module(f"paper_selection.{n}") for n in ("cascade_router", "quality_computer", "cost_computer",
                                                                         "statistics", "router", "baseline_cascader")}
    stats, published = mods["statistics"], mods["statistics"].compute_expected_max

    def compute_expected_max(qualities, sigma_qualities, independent=False, n_samples=100):
        if qualities.shape[0] == 1:  # numpy 2: float() of a one-element array (the published line) raises
            return float(qualities[0]), None if sigma_qualities is None else float(sigma_qualities[0, 0])
        return published(qualities, sigma_qualities, independent, n_samples)

    mods["quality_computer"].compute_expected_max = compute_expected_max
    stats.compute_expected_max_published = published
    return mods


def computers(mods, ante, post, sigma, cost, n_samples: int):
    """The paper's GroundTruth computers holding OUR simulated estimates (their fitted attributes set)."""
    n = len(ante)
    qc = mods["quality_computer"].GroundTruthQualityComputer(noise_before_run=0.0, noise_after_run=0.0, n_samples=n_samples)
    qc.quality_mapping = {i: np.stack([ante[i], post[i]], axis=1) for i in range(n)}
    qc.sigmas = list(sigma)
    cc = mods["cost_computer"].GroundTruthCostComputer(0.0, 0.0)
    cc.cost_mapping = {i: np.stack([cost[i], cost[i]], axis=1) for i in range(n)}
    return qc, cc


def run_paper_baselines(mods, ante, post, sigma, cost, lam: float, tau: float):
    """The paper's Router at λ and its threshold cascade (BaselineCascader) at τ = 1 − its λ."""
    n, m = ante.shape
    qc, cc = computers(mods, ante, post, sigma, cost, 16)
    router = mods["router"].Router(qc, cc, list(range(m)), max_expected_cost=1.0, strategies=[], rounding_digits=12)
    router.lambda_, router.gamma = lam, 0.0
    routed = np.array([router.predict([i], [[None] * m])[0] for i in range(n)])
    cascader = mods["baseline_cascader"].BaselineCascader(qc, cc, list(range(m)), max_expected_cost=1.0, strategies=[])
    cascader.lambdas = [1.0 - tau] * (m - 1)
    runs, selected = [], []
    for i in range(n):
        answers = [None] * m
        while (nxt := cascader.predict([i], [answers])[0]) is not None:
            answers[nxt] = "answered"
            if all(a is not None for a in answers):
                break
        runs.append(sum(1 << e for e in range(m) if answers[e] is not None))
        selected.append(cascader.select_answer([i], [answers])[0])
    return routed, np.array(runs), np.array(selected)


def run_paper(mods, ante, post, sigma, cost, lam, z, mode: str):
    """Route every test row with the paper's CascadeRouter; returns (run sets, selected)."""
    qc_mod, cr_mod = mods["quality_computer"], mods["cascade_router"]
    n, m = ante.shape
    qc, cc = computers(mods, ante, post, sigma, cost, len(z))
    original = qc_mod.BaseQualityComputer.predict_supermodels
    if mode == "matched":
        def predict_supermodels(self, questions, idx, qualities, sigmas, answers):
            out = []
            for i in range(len(questions)):
                cols = list(idx[i])
                var = np.diag(sigmas[i])[cols]
                mu, sd = qualities[i][cols], np.where(var > 1e-6, np.sqrt(var), 0.0)  # run: its 1e-6 is our 0
                out.append(float(np.max(mu[None, :] + sd[None, :] * z[:, cols], axis=1).mean()))
            return np.array(out), np.zeros(len(out))
        qc_mod.BaseQualityComputer.predict_supermodels = predict_supermodels
    elif mode == "std-fix":
        stats = mods["statistics"]
        base = stats.transform_samples
        stats.compute_expected_max_published.__globals__["transform_samples"] = (
            lambda s, q, sig, independent=False: base(s, q, np.sqrt(np.abs(sig)) if independent else sig, independent))
    try:
        router = cr_mod.CascadeRouter(qc, cc, list(range(m)), max_expected_cost=1.0, strategies=[], rounding_digits=12,
                                      force_order=True)
        router.lambdas, router.gamma = [lam] * m, 0.0
        runs, selected = [], []
        for i in range(n):
            answers = [None] * m
            order = []
            for _ in range(m):
                nxt = router.predict([i], [answers])[0]
                if nxt is None:
                    break
                answers[nxt] = "answered"
                order.append(nxt)
            runs.append(sum(1 << e for e in order))
            selected.append(router.select_answer([i], [answers])[0])
        return np.array(runs), np.array(selected)
    finally:
        qc_mod.BaseQualityComputer.predict_supermodels = original
        if mode == "std-fix":
            mods["statistics"].__dict__["transform_samples"] = base


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper-repo", default="/work/.mirror/eth-sri+cascade-routing/repo", help="git directory of the mirror")
    ap.add_argument("--data", default="../shared/data/llmrouter")
    ap.add_argument("--models", type=int, default=3, help="the cheapest, the dearest and models between (by train cost)")
    ap.add_argument("--rows", type=int, default=200, help="test rows routed (the first ones)")
    ap.add_argument("--ante", type=float, default=0.6)
    ap.add_argument("--post", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from policies.cascade_engine import normal_draws, run_cascades
    from policies.cascade_quality import SimulatedQuality
    from policies.data import RoutingData

    data = RoutingData.load(args.data)
    train = data.subset(data.rows_of("train"))
    mean_cost = np.nanmean(train.cost_matrix(), axis=0)
    by_cost = np.argsort(mean_cost)
    pick = by_cost[np.linspace(0, len(by_cost) - 1, args.models).round().astype(int)]
    data = data.select_models([data.models[j] for j in pick])
    train, test = data.subset(data.rows_of("train")), data.subset(data.rows_of("test"))
    test = test.subset(np.flatnonzero(test.known.all(axis=1))[: args.rows])
    sim = SimulatedQuality(args.ante, args.post, args.seed, combine=False).fit(train.scores)  # the paper's rule
    ante, post = sim.estimates(test.scores, 1)
    cost = test.cost_matrix()
    z = normal_draws(128, data.n_models, args.seed)
    order = list(np.argsort(np.nanmean(train.cost_matrix(), axis=0)))
    spread = float(np.median(cost.max(1) - cost.min(1)))
    lambdas = [0.0, *(s / spread for s in (0.01, 0.03, 0.1, 0.3, 1.0))]
    with tempfile.TemporaryDirectory() as tmp:
        mods = import_paper(Path(args.paper_repo), Path(tmp))
        report = {"data": data.name, "models": data.models, "rows": len(test), "noise": [args.ante, args.post],
                  "seed": args.seed, "lambdas": lambdas, "runs": []}
        tables = sim.tables(ante, post)
        for lam in lambdas:
            ours = run_cascades(tables, cost, np.ones_like(cost, bool), [lam], order=order, z=z)
            row = {"lambda": lam, "ours": {"quality": float(ours.quality(test.scores).mean()),
                                           "cost": float(ours.spent(cost).mean()), "calls": float(ours.steps.mean())}}
            for mode in ("matched", "std-fix", "published"):
                runs, sel = run_paper(mods, ante, post, sim.sigma_, cost, lam, z, mode)
                row[mode] = {"same_calls": float((runs == ours.runmask[0]).mean()),
                             "same_answer": float((sel == ours.selected[0]).mean()),
                             "quality": float(np.nan_to_num(test.scores)[np.arange(len(test)), sel].mean()),
                             "cost": float((((runs[:, None] >> np.arange(cost.shape[1])) & 1) * cost).sum(1).mean())}
            tau = float(np.clip(0.5 + 0.1 * len(report["runs"]), 0.0, 1.0))  # a τ per row of the table: 0.5 … 1.0
            route = run_cascades(tables, cost, np.ones_like(cost, bool), [lam], order=order, strategy="routing", z=z)
            thr = run_cascades(tables, cost, np.ones_like(cost, bool), [], order=order, strategy="threshold", taus=[tau], z=z)
            routed, thr_runs, thr_sel = run_paper_baselines(mods, ante, post, sim.sigma_, cost, lam, tau)
            row["routing"] = {"same_choice": float((routed == route.selected[0]).mean())}
            row["threshold"] = {"tau": tau, "same_calls": float((thr_runs == thr.runmask[0]).mean()),
                                "same_answer": float((thr_sel == thr.selected[0]).mean())}
            print(f"    routing at λ: same choice {row['routing']['same_choice']:.1%}; threshold cascade at τ={tau:.1f}: "
                  f"same calls {row['threshold']['same_calls']:.1%}, same answer {row['threshold']['same_answer']:.1%}", flush=True)
            report["runs"].append(row)
            print(f"λ={lam:.4g}: ours q={row['ours']['quality']:.3f} c={row['ours']['cost']:.3g} calls={row['ours']['calls']:.2f}; "
                  + "; ".join(f"{md}: same calls {row[md]['same_calls']:.1%}, same answer {row[md]['same_answer']:.1%}, "
                              f"q={row[md]['quality']:.3f}" for md in ("matched", "std-fix", "published")), flush=True)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
