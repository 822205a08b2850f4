"""Decision latency of the routing policies: one request at a time, and in batches.

For every policy with an artifact under ``--artifacts`` (``make policies`` trains them), and the
``prior`` policy as the peer that needs no embedding, measured in the same run:

* single: ``Policy.decide`` on one request, as the service calls it, *including* the query
  embedding (the encoder's cache is emptied first and every prompt is new to it): p50/p90/p99 ms;
* batched: ``decide_many`` on ``--batch`` new prompts at one λ, embedding included: decisions/s;
  and again with the embeddings cached (the policy's own work only);
* the encoder alone (MiniLM, one request and batched), the floor every learned policy stands on.

Prompts come from the evaluation split of a routing matrix (the llmrouter test split by default:
real prompts, 84 word pieces on average). Torch runs on one thread, as in the service.

    python -m benchmarks.decision_latency --artifacts var/policies --data ../shared/data/llmrouter
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

POLICIES = ("knn", "mlp", "mf", "coe", "tryage", "graphrouter")


def _prompts(data_dir: Path, n: int, seed: int) -> list[str]:
    from policies.data import RoutingData

    data = RoutingData.load(data_dir)
    rows = data.rows_of("test")
    rows = rows if len(rows) else np.arange(len(data))
    prompts = list(dict.fromkeys(data.prompts[i] for i in rows))  # distinct
    rng = np.random.default_rng(seed)
    return [prompts[i] for i in rng.permutation(len(prompts))[:n]]


def _request(prompt: str):
    from core.types import RouteRequest

    return RouteRequest(prompt=prompt, prompt_tokens=len(prompt) // 4 + 1, max_completion_tokens=256)


def _single(policy, prompts: list[str], encoder) -> np.ndarray:
    if encoder is not None:
        encoder.forget()
    out = []
    for p in prompts:
        t0 = time.perf_counter()
        policy.decide(_request(p))
        out.append((time.perf_counter() - t0) * 1e3)
    return np.array(out)


def _batched(policy, prompts: list[str], encoder, lam: float) -> tuple[float, float]:
    if encoder is not None:
        encoder.forget()
    t0 = time.perf_counter()
    policy.decide_many(prompts, [lam])
    cold = len(prompts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    policy.decide_many(prompts, [lam])
    warm = len(prompts) / (time.perf_counter() - t0)
    return cold, warm


def run(args) -> dict:
    from core.errors import PolicyError
    from policies import create_policy
    from policies.artifacts import load_artifact
    from policies.embeddings import configure_encoders, get_encoder

    configure_encoders(cache_dir=None)  # nothing from disk: every embedding is computed here
    pool = _prompts(args.data, (args.single + args.batch) * (len(POLICIES) + 2), args.seed)
    cursor = [0]

    def take(n: int) -> list[str]:  # the next prompts of the pool (it wraps round when the split is small)
        start = cursor[0] % max(len(pool) - n, 1)
        cursor[0] += n
        return pool[start : start + n]

    rows = []
    experts = None
    enc = get_encoder(args.encoder)
    enc.encode(["warm up the encoder"])
    single = []
    for p in take(args.single):
        enc.forget()
        t0 = time.perf_counter()
        enc.encode([p])
        single.append((time.perf_counter() - t0) * 1e3)
    enc.forget()
    batch = take(args.batch)
    t0 = time.perf_counter()
    enc.encode(batch)
    rows.append({"policy": "(encoder alone)", "artifact": args.encoder, "p50_ms": float(np.median(single)),
                 "p90_ms": float(np.percentile(single, 90)), "p99_ms": float(np.percentile(single, 99)),
                 "batched_per_s": args.batch / (time.perf_counter() - t0), "batched_cached_per_s": None})

    for name in POLICIES:
        try:
            policy = load_artifact(args.artifacts / name).policy
        except PolicyError as exc:
            print(f"skipping {name}: {exc.message}")
            continue
        experts = experts or policy.experts_
        policy.decide(_request("warm up"))
        lat = _single(policy, take(args.single), enc)
        cold, warm = _batched(policy, take(args.batch), enc, args.lam)
        rows.append({"policy": name, "artifact": str(args.artifacts / name), "p50_ms": float(np.median(lat)),
                     "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
                     "batched_per_s": cold, "batched_cached_per_s": warm})
    if experts:
        peer = create_policy("prior").fit(None, experts=experts)
        lat = _single(peer, take(args.single), None)
        cold, warm = _batched(peer, take(args.batch), None, args.lam)
        rows.append({"policy": "prior (peer, no embedding)", "artifact": "-", "p50_ms": float(np.median(lat)),
                     "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
                     "batched_per_s": cold, "batched_cached_per_s": warm})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"data": str(args.data), "single_requests": args.single, "batch": args.batch, "encoder": args.encoder,
            "cpu_count": os.cpu_count(), "load_average_1m": load, "rows": rows}


def markdown(report: dict) -> str:
    enc = next(r for r in report["rows"] if r["policy"] == "(encoder alone)")
    lines = [
        f"Single request: `decide()` including the embedding of a prompt the encoder has not seen; batched: "
        f"`decide_many()` on {report['batch']} new prompts (with their embedding), then again with the embeddings "
        f"cached. {report['cpu_count']} cores, load average {report['load_average_1m']:.1f} during the run.",
        "",
        "| policy | single p50 ms | p90 ms | p99 ms | batched decisions/s | batched, embeddings cached /s | p50 vs encoder |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        cached = "—" if r["batched_cached_per_s"] is None else f"{r['batched_cached_per_s']:,.0f}"
        ratio = f"{r['p50_ms'] / enc['p50_ms']:.2f}×"
        lines.append(f"| {r['policy']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['batched_per_s']:,.0f} | {cached} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("var/policies"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/llmrouter"))
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--single", type=int, default=100, help="single requests timed per policy")
    parser.add_argument("--batch", type=int, default=400, help="prompts per batched measurement")
    parser.add_argument("--lam", type=float, default=0.0, help="λ of the batched decisions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    report = run(args)
    table = Table(title="decision latency (embedding included)")
    for col in ("policy", "single p50 ms", "p90 ms", "p99 ms", "batched /s", "batched, cached /s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in report["rows"]:
        table.add_row(r["policy"], f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}",
                      f"{r['batched_per_s']:,.0f}", "—" if r["batched_cached_per_s"] is None else f"{r['batched_cached_per_s']:,.0f}")
    Console().print(table)
    write_json(args.json, report)
    write_text(args.markdown, markdown(report))


if __name__ == "__main__":
    main()
