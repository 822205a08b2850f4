"""How many new prompts/s the sentence-embedding encoder can reach on this machine, and what int8 buys.

The ceiling is arithmetic: all-MiniLM-L6-v2's forward pass costs a known number of
floating-point operations per word piece (6 layers of hidden size 384, feed-forward 1,536),
the prompts have a measured number of word pieces, and the machine sustains a measured
GFLOP/s on a large float32 matrix product. Their quotient is the most prompts/s any float32
implementation can reach. Beside it: the encoder as served (float32, one thread), with two
threads, and with int8 weights (torch dynamic quantisation, one scale per output channel), each on the
same prompts, and how far the int8 vectors move from the float32 ones (cosine) and whether the
nearest train prompt of each test prompt stays the same (what kNN-style policies read).

    python -m benchmarks.encoder_ceiling --data ../shared/data/llmrouter --json var/bench/signals/encoder_ceiling.json
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


def matmul_gflops(threads: int, n: int = 2048, reps: int = 5, trials: int = 3) -> float:
    """Sustained float32 GFLOP/s of a large matrix product, best of a few trials (the best case for
    any encoder: its products are smaller and it has attention, softmax and layer norms besides)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def flops_per_prompt(n_tokens: np.ndarray, layers: int = 6, d: int = 384, ff: int = 1536) -> np.ndarray:
    """Forward-pass FLOPs of a BERT-style encoder for prompts of ``n_tokens`` word pieces (padding excluded)."""
    per_token = layers * (2 * 4 * d * d + 2 * 2 * d * ff)  # Q, K, V, output projections; feed-forward
    attention = layers * 2 * 2 * d * n_tokens  # scores and weighted sum, per token
    return n_tokens * (per_token + attention)


def throughput(model, prompts: list[str], threads: int, batch_size: int = 32) -> float:
    import torch

    torch.set_num_threads(threads)
    model.encode(prompts[:batch_size], batch_size=batch_size)  # warm
    t0 = time.perf_counter()
    model.encode(prompts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return len(prompts) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=512, help="prompts timed per configuration")
    parser.add_argument("--neighbours", type=int, default=1000, help="train prompts for the nearest-neighbour check")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    import torch

    from policies.data import RoutingData
    from policies.embeddings import MiniLMBackend

    data = RoutingData.load(args.data)
    train, test = data.subset(data.split == "train"), data.subset(data.split == "test")
    rng = np.random.default_rng(0)
    timed = [test.prompts[i] for i in rng.permutation(len(test))[: args.prompts]]
    base = MiniLMBackend()._load()  # the ``minilm`` encoder as served (word pieces cut at its max_seq_length)
    lengths = np.array([min(base.max_seq_length, len(base.tokenizer(p)["input_ids"])) for p in timed])
    flops = float(flops_per_prompt(lengths).mean())
    load = os.getloadavg()[0]

    peak = {t: matmul_gflops(t) for t in (1, 2)}
    rows = []
    for label, threads in (("float32, 1 thread (as served)", 1), ("float32, 2 threads", 2)):
        rows.append({"encoder": label, "per_s": throughput(base, timed, threads)})
        print(rows[-1], flush=True)
    quant = MiniLMBackend(int8=True)._load()  # the ``minilm-int8`` encoder as served
    n_quantised = sum(type(m).__name__ == "Linear" and m.__module__.startswith("torch.ao") for m in quant.modules())
    assert n_quantised > 0, "dynamic quantisation replaced no linear layer"
    for label, threads in (("int8 per-channel (minilm-int8), 1 thread", 1), ("int8 per-channel (minilm-int8), 2 threads", 2)):
        rows.append({"encoder": label, "per_s": throughput(quant, timed, threads)})
        print(rows[-1], flush=True)

    # How far int8 moves the vectors, and the nearest train prompt of each test prompt.
    torch.set_num_threads(2)
    ref = [train.prompts[i] for i in rng.permutation(len(train))[: args.neighbours]]
    e32 = base.encode(timed + ref, batch_size=32, normalize_embeddings=True)
    e8 = quant.encode(timed + ref, batch_size=32, normalize_embeddings=True)
    cos = np.sum(e32 * e8, axis=1)
    n = len(timed)
    nn32 = np.argmax(e32[:n] @ e32[n:].T, axis=1)
    nn8 = np.argmax(e8[:n] @ e8[n:].T, axis=1)
    same_nn = float(np.mean(nn32 == nn8))

    ceiling = {t: peak[t] * 1e9 / flops for t in peak}
    out = {"load_average_1min": load, "prompts": n, "mean_word_pieces": float(lengths.mean()),
           "gflop_per_prompt": flops / 1e9, "matmul_gflops": peak, "ceiling_per_s": ceiling, "rows": rows,
           "int8_cosine_mean": float(cos.mean()), "int8_cosine_min": float(cos.min()), "int8_same_nearest": same_nn}
    lines = [f"Load average at start {load:.1f}; {n} llmrouter test prompts, {lengths.mean():.0f} word pieces on "
             f"average (cut at 128): {flops / 1e9:.2f} GFLOP per prompt.", "",
             "| encoder | prompts/s | share of the float32 ceiling (same threads) |", "|---|---:|---:|"]
    for t in (1, 2):
        lines.append(f"| float32 ceiling, {t} thread{'s' if t > 1 else ''} ({peak[t]:.0f} GFLOP/s matrix product) | "
                     f"{ceiling[t]:.0f} | 100 % |")
    for r in rows:
        t = 2 if "2 threads" in r["encoder"] else 1
        lines.append(f"| {r['encoder']} | {r['per_s']:.1f} | {100 * r['per_s'] / ceiling[t]:.0f} % |")
    lines += ["", f"int8 against float32: cosine mean {cos.mean():.4f}, min {cos.min():.4f}; the nearest of "
              f"{len(ref)} train prompts is the same for {100 * same_nn:.1f} % of the test prompts."]
    publish(lines, out, json_path=args.json, markdown_path=args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
