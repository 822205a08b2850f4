"""The learning loop, closed on a routing matrix where the truth is known.

1. A weak initial policy (``--initial``: always the cheapest model, or a kNN fitted on
   ``--seed-rows`` training queries) serves ``--requests`` requests drawn from the matrix's
   ``train`` split, exploring ε-greedily (``router.lifecycle.exploration``).
   Each request becomes a ledger row the way the service writes it (``RequestTrace`` → the
   batched ``LedgerWriter`` → a real SQLite file), priced with the matrix's cost of the chosen
   model; the matrix's ``score::<model>`` of that model comes back as ``auto`` feedback through
   ``FeedbackService.record`` (what ``POST /v1/feedback`` calls).
2. ``load_logged`` reads the ledger back; policies are retrained from it (targets ``observed``,
   ``ipw``, ``dr``) and judged by their TRUE mean score on the held-out ``test`` split, next to
   the same policy trained on the full matrix (every model's outcome on every train query).
3. Off-policy estimates (IPS, SNIPS, DR) of candidates on the logged traffic are compared with
   their true value on the same requests.

Why rows are written through the ledger writer and not sent over HTTP: the outcome and cost of
a simulated call must be the matrix's for that (query, model); an HTTP upstream would price
its own token counts. The rows are the service's own (same trace, same writer, same decision
record); a functional test checks that rows written by the running service load the same way.

    python -m benchmarks.closed_loop --data ../shared/data/llmrouter --requests 4000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def open_ledger(path: Path):
    """A migrated SQLite ledger file: (url, engine)."""
    from router.ledger.db import make_engine
    from router.ledger.migrate import upgrade

    url = f"sqlite:///{Path(path).resolve()}"
    upgrade(url)
    return url, make_engine(url)


def sync_models(engine, data) -> None:
    """The matrix's models as the deployment's experts (prices into the ledger's experts table)."""
    from core.config import ExpertConfig
    from router.ledger.repository import sync_experts

    experts = []
    for e in data.experts():
        experts.append(ExpertConfig(name=e.name, backend="remote", model=e.name, endpoint="http://127.0.0.1:9/v1",
                                    input_usd_per_mtok=e.input_usd_per_mtok, output_usd_per_mtok=e.output_usd_per_mtok,
                                    params_b=e.params_b, context_window=min(e.context_window, 1_000_000)))
    sync_experts(engine, experts=experts)


@dataclass
class Traffic:
    request_ids: list[str]
    rows: np.ndarray  # matrix row of each request
    chosen: np.ndarray  # matrix column of the expert that answered
    seconds: float


def simulate(engine, data, rows: np.ndarray, policy, *, epsilon: float = 0.3, lam: float = 0.0, seed: int = 0,
             start: datetime | None = None, step: timedelta = timedelta(minutes=1), progress=None) -> Traffic:
    """Serve ``rows`` of ``data`` with ``policy`` (ε-greedy), write ledger rows and auto feedback."""
    from core.config import ExplorationConfig
    from core.types import RouteRequest
    from router.learning.feedback import FeedbackService
    from router.ledger.writer import LedgerWriter
    from router.lifecycle.exploration import Explorer
    from router.request.trace import RequestTrace

    t0 = time.perf_counter()
    explorer = Explorer(ExplorationConfig(method="epsilon", epsilon=epsilon, seed=seed)) if epsilon > 0 else None
    col = {m: j for j, m in enumerate(data.models)}
    costs = data.cost_matrix()
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    writer = LedgerWriter(engine)
    writer.start()
    ids, chosen = [], []
    for i, row in enumerate(rows):
        prompt = data.prompts[row]
        req = RouteRequest(prompt=prompt, prompt_tokens=len(prompt) // 4 + 1, max_completion_tokens=256)
        decision = policy.decide(req, lambda_=lam)
        if explorer is not None:
            decision = explorer.apply(decision)
        trace = RequestTrace(id=uuid.uuid4().hex, created_at=start + i * step)
        trace.requested_model, trace.decision = "expertmux/auto", decision
        trace.set_prompt(prompt, "full")
        attempt = trace.start_attempt(decision.expert)
        j = col[decision.expert]
        attempt.prompt_tokens, attempt.completion_tokens = req.prompt_tokens, 256
        attempt.cost_usd, attempt.latency_ms, attempt.status = float(costs[row, j]), 100.0, "ok"
        trace.status, trace.http_status = "ok", 200
        writer.submit(trace.to_record())
        ids.append(trace.id)
        chosen.append(j)
        if progress is not None:
            progress(i + 1)
    writer.flush()
    writer.close()
    feedback = FeedbackService(engine=engine, ledger=writer, keys=None, auth_required=False)
    for rid, row, j in zip(ids, rows, chosen):
        score = data.scores[row, j]
        if np.isfinite(score):
            feedback.record(request_id=rid, score=float(np.clip(score, 0.0, 1.0)), source="auto")
    return Traffic(ids, np.asarray(rows), np.asarray(chosen), time.perf_counter() - t0)


def true_value(policy, data, rows: np.ndarray, *, lam: float = 0.0) -> tuple[float, float]:
    """(mean score, mean cost) the policy really gets on ``rows`` (looked up in the matrix)."""
    choice = policy.decide_many([data.prompts[i] for i in rows], [lam])[0]
    cols = np.array([data.models.index(n) for n in policy.expert_names])[choice]
    return float(data.scores[rows, cols].mean()), float(data.cost_matrix()[rows, cols].mean())


def ope_truth(target: np.ndarray, logged, data, traffic: Traffic) -> tuple[float, float]:
    """True mean score and cost of a candidate (action probabilities over ``logged.experts``) on
    the logged requests themselves: the quantity the off-policy estimators target."""
    where = {rid: r for rid, r in zip(traffic.request_ids, traffic.rows)}
    rows = np.array([where[r] for r in logged.request_id])
    cols = [data.models.index(e) for e in logged.experts]
    q = (target * data.scores[rows][:, cols]).sum(axis=1)
    c = (target * data.cost_matrix()[rows][:, cols]).sum(axis=1)
    return float(q.mean()), float(c.mean())


def _fit(name: str, train, params: dict):
    from policies import create_policy

    return create_policy(name, **params).fit(train)


def run(args) -> dict:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from policies.data import RoutingData
    from policies.embeddings import configure_encoders, get_encoder
    from policies.logged_eval import candidate_probs, evaluate_logged
    from policies.logged_training import fit_logged
    from router.learning.bandit import expert_info, load_logged

    console = Console(width=150)
    configure_encoders(cache_dir=args.cache_dir)
    data = RoutingData.load(args.data)
    rng = np.random.default_rng(args.seed)
    train_rows, test_rows = data.rows_of("train"), data.rows_of("test")
    served = rng.choice(train_rows, size=args.requests, replace=args.requests > len(train_rows))
    seed_rows = rng.choice(train_rows, size=args.seed_rows, replace=False)
    enc = get_encoder(args.encoder)
    enc.warm(enc.missing(list(dict.fromkeys(data.prompts))))
    params = {"encoder": args.encoder}
    if args.initial == "cheapest":
        from policies import create_policy

        initial = create_policy("cheapest").fit(None, experts=data.experts())
        initial_label = "initial (cheapest model)"
    else:
        initial = _fit("knn", data.subset(seed_rows), params)
        initial_label = f"initial (kNN, {args.seed_rows} rows)"
    folder = Path(args.ledger_dir or tempfile.mkdtemp(prefix="closed-loop-"))
    url, engine = open_ledger(folder / "ledger.db")
    sync_models(engine, data)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("serving simulated traffic", total=len(served))
        traffic = simulate(engine, data, served, initial, epsilon=args.epsilon, seed=args.seed,
                           progress=lambda n: bar.update(task, completed=n))
    t0 = time.perf_counter()
    logged = load_logged(url)
    load_s = time.perf_counter() - t0
    info = expert_info(url)
    console.print(f"{data.name}: {len(served)} requests served (ε={args.epsilon}) in {traffic.seconds:.1f} s; "
                  f"ledger → {len(logged)} logged rows in {load_s * 1000:.0f} ms")
    out: dict = {"requests": len(served), "epsilon": args.epsilon, "load_s": load_s, "value": {}, "ope": []}
    full_train = data.subset(train_rows)
    base = {initial_label: true_value(initial, data, test_rows)}
    q_single = data.scores[train_rows].mean(axis=0)
    base["best single (on train)"] = (float(data.scores[test_rows, int(np.argmax(q_single))].mean()), float("nan"))
    base["oracle"] = (float(data.scores[test_rows].max(axis=1).mean()), float("nan"))
    table = Table(title=f"True mean score on {data.name}/test ({len(test_rows)} queries), λ = 0")
    for col in ("policy", "trained on", "target", "score", "vs full matrix", "gap closed", "fit s"):
        table.add_column(col, justify="left" if col in ("policy", "trained on", "target") else "right")
    for label, (q, _) in base.items():
        table.add_row(label, "—", "—", f"{q:.4f}", "", "", "")
    q0 = base[initial_label][0]
    candidates: dict = {}
    for name in args.policies:
        t = time.perf_counter()
        full = _fit(name, full_train, params)
        fit_full = time.perf_counter() - t
        q_full, _ = true_value(full, data, test_rows)
        candidates[f"{name} (full matrix)"] = full
        table.add_row(name, f"full matrix ({len(train_rows)}×{data.n_models})", "all outcomes", f"{q_full:.4f}", "1.000",
                      "1.000", f"{fit_full:.1f}")
        out["value"][f"{name}/full"] = q_full
        for target in args.targets:
            t = time.perf_counter()
            pol, _, facts = fit_logged(name, logged, params=params, target=target, expert_info=info, seed=args.seed)
            fit_s = time.perf_counter() - t
            q, _ = true_value(pol, data, test_rows)
            gap = (q - q0) / (q_full - q0) if q_full != q0 else float("nan")
            table.add_row(name, f"ledger ({len(logged)} rows)", target, f"{q:.4f}", f"{q / q_full:.3f}", f"{gap:.3f}",
                          f"{fit_s:.1f}")
            out["value"][f"{name}/{target}"] = q
            candidates[f"{name} (ledger, {target})"] = pol
    console.print(table)
    if args.curve:
        curve = Table(title=f"{args.policies[0]} (ipw) retrained on the first N logged requests: true score on test")
        for col in ("N", "score", "vs full matrix", "gap closed"):
            curve.add_column(col, justify="right")
        q_full = out["value"][f"{args.policies[0]}/full"]
        for size in args.curve:
            pol, _, _ = fit_logged(args.policies[0], logged.subset(np.arange(min(size, len(logged)))), params=params,
                                   target="ipw", expert_info=info, seed=args.seed)
            q, _ = true_value(pol, data, test_rows)
            curve.add_row(str(size), f"{q:.4f}", f"{q / q_full:.3f}", f"{(q - q0) / (q_full - q0):.3f}")
            out.setdefault("curve", {})[size] = q
        console.print(curve)
    # Off-policy estimates are judged on a later slice of the ledger than any candidate learned
    # from: a policy scored on the very log it was fitted to looks better than it is.
    cut = logged.created_at[int(len(logged) * args.train_share)]
    early, late = logged.subset(logged.created_at < cut), logged.subset(logged.created_at >= cut)
    candidates = {k: v for k, v in candidates.items() if "full matrix" in k}
    candidates["initial (greedy part)"] = initial
    candidates["best_single"] = _fit("best_single", full_train, {})
    for name in args.policies[:1]:
        for target in args.targets:
            pol, _, _ = fit_logged(name, early, params=params, target=target, expert_info=info, seed=args.seed)
            candidates[f"{name} (ledger before {str(cut)[:16]}, {target})"] = pol
    logged = late
    ope = Table(title=f"Off-policy estimates on the {len(logged)} latest logged requests vs the truth (95% CLT intervals)")
    for col in ("candidate", "truth", "IPS", "SNIPS", "DR", "covered (IPS/SNIPS/DR)", "agree"):
        ope.add_column(col, justify="left" if col == "candidate" else "right")
    for label, pol in candidates.items():
        rep = evaluate_logged(pol, logged)
        target, _ = candidate_probs(pol, logged.with_reward())
        truth, _ = ope_truth(target, logged.with_reward(), data, traffic)
        q = rep["quality"]
        cells = [f"{q[m]['value']:.4f} [{q[m]['lo']:.3f}, {q[m]['hi']:.3f}]" for m in ("ips", "snips", "dr")]
        cov = ["✓" if q[m]["lo"] <= truth <= q[m]["hi"] else "✗" for m in ("ips", "snips", "dr")]
        ope.add_row(label, f"{truth:.4f}", *cells, " ".join(cov), f"{rep['agreement']:.2f}")
        out["ope"].append({"candidate": label, "truth": truth, **{m: q[m] for m in ("ips", "snips", "dr")}})
    console.print(ope)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "llmrouter")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--initial", choices=("cheapest", "knn"), default="cheapest", help="the serving policy that explores")
    ap.add_argument("--seed-rows", type=int, default=50, help="training queries of the initial kNN")
    ap.add_argument("--epsilon", type=float, default=0.5)
    ap.add_argument("--policies", type=lambda s: s.split(","), default=["mlp", "knn", "tryage"])
    ap.add_argument("--curve", type=lambda s: [int(x) for x in s.split(",")], default=[],
                    help="also retrain the first policy (ipw) on the first N logged requests, e.g. 1000,2000,4000")
    ap.add_argument("--targets", type=lambda s: s.split(","), default=["observed", "ipw", "dr"])
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parents[1] / "var" / "cache" / "embeddings")
    ap.add_argument("--ledger-dir", type=Path, default=None)
    ap.add_argument("--train-share", type=float, default=0.6, help="earlier share of the ledger candidates learn from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    out = run(args)
    if args.json:
        import json

        args.json.write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
