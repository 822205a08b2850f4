"""Extract (and cache) prefill activations of a small LM for every prompt of routing matrices.

A long job (about 26,000 prompts for both shared sets): run it in the background; it resumes
where it stopped, since features land in the shared text-hash cache in shards of 256 prompts.

    nohup .venv/bin/python -m benchmarks.extract_activations --model smollm2-135m-instruct \
        --data ../shared/data/llmrouter ../shared/data/routerdc > var/logs/act-smollm2.log 2>&1 &

Prints prompts/s and tokens/s at the end (the feature cost, apart from any head).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="packaged model name, GGUF path or HF folder")
    parser.add_argument("--layers", default="", help="comma-separated 1-based blocks (default: the model's probe set)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "int8"])
    parser.add_argument("--runtime", default="transformers", choices=["transformers", "llamacpp"],
                        help="llamacpp: the GGUF's own prefill states of the chat-formatted prompt (no token cap)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", nargs="+", type=Path, required=True, help="routing-matrix folders")
    parser.add_argument("--splits", default="", help="only these splits (comma-separated; default all)")
    parser.add_argument("--sample", default="", help="seeded random rows per split, e.g. train=3000,test=3000 "
                        "(as benchmarks.signals --sample)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/embeddings"))
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from benchmarks.routing_stats import parse_sample, subsample
    from policies.activations import activation_encoder, default_layers
    from policies.data import RoutingData
    from policies.features import configure_feature_stores

    configure_feature_stores(data_dir=args.cache_dir.parent.parent, cache_dir=args.cache_dir)  # var/cache/embeddings → var
    layers = tuple(int(x) for x in args.layers.split(",") if x.strip()) or None
    if args.runtime == "llamacpp":
        from policies.prefill_states import prefill_encoder

        enc = prefill_encoder(args.model, layers or default_layers(args.model), threads=args.threads)
    else:
        enc = activation_encoder(args.model, layers, max_tokens=args.max_tokens, threads=args.threads, dtype=args.dtype)
    prompts: list[str] = []
    splits = {s for s in args.splits.split(",") if s}
    for folder in args.data:
        data = subsample(RoutingData.load(folder), parse_sample(args.sample))
        rows = [i for i in range(len(data)) if not splits or data.split[i] in splits]
        prompts += [data.prompts[i] for i in rows]
    todo = enc.missing(prompts)
    console = Console()
    console.print(f"{enc.backend.id}: {len(set(prompts))} prompts, {len(todo)} to extract (dim {enc.dim})")
    n_tokens = sum(len(x) for x in enc.backend.token_ids(todo)) if todo else 0
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("prefill activations", total=max(len(todo), 1), completed=0 if todo else 1)
        enc.warm(todo, progress=lambda n: progress.advance(task, n))
    dt = time.perf_counter() - t0
    if todo:
        console.print(f"done: {len(todo)} prompts, {n_tokens} tokens in {dt:.0f} s "
                      f"({len(todo) / dt:.2f} prompts/s, {n_tokens / dt:.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
