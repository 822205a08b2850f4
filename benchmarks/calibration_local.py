"""A calibration folder as a report: the experts' quality per skill, the run's timing, and learned
policies against the prior, every single expert and the oracle on the held-out split.

The learned policies are fitted on the folder's ``train`` rows (as ``expertmux train`` does) and
route the ``test`` rows at the config's λ, as the proxy would serve them; the prior is the config's
``prior`` policy. Every figure has a bootstrap 95 % interval over test rows, and each method's
difference from the best single expert (on train) a paired one.

    python -m benchmarks.calibration_local var/calibration/local-default-200 --markdown var/bench/calibration_local.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text


def skill_table(folder: Path, experts: list[str]) -> str:
    from router.calibration.matrix import load_status

    status = load_status(folder, experts)
    lines = ["| skill | " + " | ".join(experts) + " |", "|---|" + "---:|" * len(experts)]
    for skill, row in sorted(status.skills.items()):
        lines.append(f"| {skill} | " + " | ".join(f"{row[e].quality:.2f} ({row[e].n})" if e in row else "—" for e in experts) + " |")
    ov = status.overall
    lines.append("| **all** | " + " | ".join(f"**{ov[e].quality:.3f}** ({ov[e].n})" for e in experts) + " |")
    lines.append("| mean cost per prompt (USD) | " + " | ".join(f"{ov[e].cost_usd:.2e}" for e in experts) + " |")
    lines.append("| mean latency (s) | " + " | ".join(f"{ov[e].latency_s:.1f}" for e in experts) + " |")
    return "\n".join(lines)


def timing(folder: Path) -> dict:
    """The last run's figures, and every finished run's (state, seconds, cells) where the folder keeps them."""
    from router.calibration.store import CellStore

    run = json.loads((folder / "run.json").read_text())
    history = [{"state": r.get("state"), "seconds": r.get("seconds"), "cells": (r.get("progress") or {}).get("done")}
               for r in CellStore(folder).runs()]
    progress = run.get("progress") or {}
    per = {n: {k: p.get(k) for k in ("done", "failed", "cells_per_s", "tokens_per_s", "output_tokens")}
           for n, p in (progress.get("experts") or {}).items()}
    return {"state": run.get("state"), "seconds": run.get("seconds"), "cells": progress.get("done"),
            "spent_usd": progress.get("spent_usd"), "experts": per, "runs": history}


def _bootstrap(values: np.ndarray, boot: int, rng: np.random.Generator) -> tuple[float, float]:
    idx = rng.integers(0, len(values), size=(boot, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def held_out(folder: Path, settings, *, policies: list[str], encoder: str, boot: int, seed: int) -> list[dict]:
    from experts.registry import expert_info
    from policies.data import RoutingData
    from policies.registry import create_policy

    data = RoutingData.load(folder)
    train, test = data.subset(data.rows_of("train")), data.subset(data.rows_of("test"))
    lam = settings.app_config.policy.lambda_
    costs = test.cost_matrix()
    scores = np.nan_to_num(test.scores, nan=0.0)
    rows = np.arange(len(test))
    picks: dict[str, np.ndarray] = {}
    for name in policies:
        policy = create_policy(name, encoder=encoder).fit(train)
        chosen = policy.decide_many(test.prompts, [lam], candidates=test.known[:, [data.models.index(e) for e in policy.expert_names]])[0]
        picks[f"{name} (learned)"] = np.array([data.models.index(policy.expert_names[i]) for i in chosen])
    infos = [expert_info(e) for e in settings.app_config.experts if e.name in data.models]
    prior = create_policy("prior").fit(None, experts=infos)
    picks["prior (config)"] = np.array([data.models.index(prior.expert_names[i]) for i in prior.decide_many(test.prompts, [lam])[0]])
    train_means = np.nanmean(train.scores, axis=0)
    best = int(np.argmax(train_means))
    for j, m in enumerate(data.models):
        picks[f"{m} (always)"] = np.full(len(test), j)
    picks["random"] = np.random.default_rng(seed).integers(0, data.n_models, len(test))
    picks["oracle"] = np.argmax(np.where(test.known, scores, -1.0), axis=1)
    rng = np.random.default_rng(seed)
    base = scores[rows, best]
    out = []
    for label, pick in picks.items():
        q, c = scores[rows, pick], costs[rows, pick]
        lo, hi = _bootstrap(q, boot, rng)
        dlo, dhi = _bootstrap(q - base, boot, rng)
        shares = {m: float(np.mean(pick == j)) for j, m in enumerate(data.models)}
        out.append({"method": label, "quality": float(q.mean()), "ci": [lo, hi], "vs_best_single": float((q - base).mean()),
                    "vs_best_single_ci": [dlo, dhi], "cost_usd": float(c.mean()), "shares": shares})
    return out, data.models[best], len(test), len(train)


def held_out_table(results: list[dict], best: str) -> str:
    lines = [f"| method | quality [95 % CI] | − {best} [95 % CI] | mean cost (USD) | share per expert |", "|---|---|---|---:|---|"]
    for r in results:
        share = ", ".join(f"{m} {s:.0%}" for m, s in r["shares"].items() if s)
        lines.append(f"| {r['method']} | {r['quality']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                     f"{r['vs_best_single']:+.3f} [{r['vs_best_single_ci'][0]:+.3f}, {r['vs_best_single_ci'][1]:+.3f}] | "
                     f"{r['cost_usd']:.2e} | {share} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--policies", default="knn,tryage")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    from core.settings import Settings

    settings = Settings(**({"config": args.config} if args.config else {}))
    experts = [e.name for e in settings.app_config.experts]
    t = timing(args.folder)
    results, best, n_test, n_train = held_out(args.folder, settings, policies=args.policies.split(","), encoder=args.encoder,
                                              boot=args.boot, seed=args.seed)
    text = (f"## Quality per skill (mean score, n graded)\n\n{skill_table(args.folder, experts)}\n\n"
            f"## Run\n\n```\n{json.dumps(t, indent=1)}\n```\n\n"
            f"## Held-out split ({n_test} test rows; policies fitted on {n_train} train rows)\n\n{held_out_table(results, best)}\n")
    print(text)
    write_text(args.markdown, text)
    write_json(args.json, {"timing": t, "held_out": results, "best_single": best})


if __name__ == "__main__":
    main()
