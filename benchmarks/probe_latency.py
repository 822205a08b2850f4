"""Decision latency of the activation features, the feature cost measured apart from the head.

For each probed model (and MiniLM and the static encoder distilled from it as the peers, measured
in the same run), at every probed block and, with ``--served-layers``, up to one block only (what
a fitted probe runs for a new prompt): one prompt at a time
(p50 / p90 over real prompts near the shared sets' median length, and over prompts of 512
tokens, which the probe cuts to its ``max_tokens``), and batched throughput (prompts/s) on a
sample of real prompts; then the probe head alone on precomputed features (decisions/s). The
cache is bypassed: every prompt is encoded.

    python -m benchmarks.probe_latency --data ../shared/data/llmrouter --models smollm2-135m-instruct \
        --dtypes float32 int8 --served-layers 18 12 --json var/bench/signals/probe_latency.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.output import publish

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _single(encode, prompts) -> list[float]:
    encode(prompts[:1])  # warm
    out = []
    for p in prompts:
        t0 = time.perf_counter()
        encode([p])
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _batched(encode, prompts) -> float:
    t0 = time.perf_counter()
    encode(prompts)
    return len(prompts) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--single", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["auto"], help="activation weights: auto (bfloat16 where the "
                        "CPU has native kernels, else float32), bfloat16, float32, int8")
    parser.add_argument("--served-layers", nargs="*", type=int, default=[],
                        help="also time the blocks up to each of these only (a fitted probe's served cost)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    from policies.activations import ActivationBackend, default_layers, native_dtype
    from policies.data import RoutingData
    from policies.embeddings import MiniLMBackend
    from policies.neural import single_thread
    from policies.static_encoder import StaticBackend

    data = RoutingData.load(args.data)
    rng = np.random.default_rng(0)
    prompts = [data.prompts[i] for i in rng.permutation(len(data))]
    chars = np.array([len(p) for p in prompts])
    med = float(np.median(chars))
    near = [p for p, c in zip(prompts, chars) if 0.8 * med <= c <= 1.25 * med][: args.single]
    long = [("word " * 600)[: 512 * 5] + f" {i}" for i in range(args.single // 2)]  # ≥ 512 tokens
    batch = prompts[: args.batch]
    rows = []
    peers = [("MiniLM-L6 (128 word pieces)", MiniLMBackend()),
             ("MiniLM-L6 int8 (one text per pass)", MiniLMBackend(int8=True)),
             ("static encoder distilled from MiniLM", StaticBackend(teacher=MiniLMBackend.model_dir))]
    dtypes = [native_dtype() if d == "auto" else d for d in args.dtypes]
    for m in args.models:
        sets = [default_layers(m)] + [(layer,) for layer in args.served_layers]
        for layers in sets:
            blocks = f"blocks {layers[0]}…{layers[-1]}" if len(layers) > 1 else f"blocks 1…{layers[0]}, one read"
            peers += [(f"{m} activations ({blocks}, last 64 tokens, {d})",
                       ActivationBackend(m, layers, threads=args.threads, dtype=d)) for d in dtypes]
    load = os.getloadavg()[0]
    for label, backend in peers:
        if isinstance(backend, MiniLMBackend | StaticBackend):
            def encode(texts, backend=backend):
                with single_thread():
                    return backend.encode(texts)
        else:
            encode = backend.encode
        s = _single(encode, near)
        s512 = _single(encode, long)
        rows.append({"features": label, "single_p50_ms": float(np.percentile(s, 50)), "single_p90_ms": float(np.percentile(s, 90)),
                     "p90_at_512_tokens_ms": float(np.percentile(s512, 90)), "batched_per_s": _batched(encode, batch)})
        print(rows[-1], flush=True)
    # the head alone: a ridge head on 1,152 features for 9 experts (the probe's largest)
    F = np.random.default_rng(1).normal(size=(4096, 1152)).astype(np.float32)
    W = np.random.default_rng(2).normal(size=(1152, 9)).astype(np.float32)
    with single_thread():
        t0 = time.perf_counter()
        for _ in range(5):
            _ = F @ W
        head_rate = 5 * len(F) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(200):
            _ = F[i : i + 1] @ W
        head_single_ms = (time.perf_counter() - t0) / 200 * 1e3
    out = {"load_average_1min": load, "median_prompt_chars": med, "rows": rows,
           "head": {"batched_per_s": head_rate, "single_ms": head_single_ms}, "threads": args.threads}
    lines = [f"Load average at start {load:.1f} on 2 cores; prompts near the median length ({med:.0f} characters); "
             f"torch threads: {args.threads} for activations, 1 for MiniLM (the static encoder: numpy, one thread).", "",
             "| features | single p50 ms | single p90 ms | p90 ms at 512 tokens | batched prompts/s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['features']} | {r['single_p50_ms']:.1f} | {r['single_p90_ms']:.1f} | {r['p90_at_512_tokens_ms']:.1f} | "
                     f"{r['batched_per_s']:.1f} |")
    lines.append(f"| ridge head alone (1,152 features × 9 experts) | {head_single_ms:.3f} | | | {head_rate:,.0f} |")
    publish(lines, out, json_path=args.json, markdown_path=args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
