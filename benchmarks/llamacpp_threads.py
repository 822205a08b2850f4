"""A local llama.cpp expert as ``llama_cpp.server`` runs it, against ``experts.llamacpp_server``
(the same server with every evaluation on one thread, ``core.llama_thread``).

The packaged SmolLM2-135M, the same flags for both (2 threads, the expert's defaults), the official
``openai`` client streaming chat completions, every prompt new (a test prompt plus a request
number; both servers get the same prompts). The servers take turns (A B A B …) so drift on the
machine falls on both alike. Reported: time to first token and the decode time per generated token
(first to last token over the tokens after the first), p50 and p90 over all requests of a server.

    python -m benchmarks.llamacpp_threads --data ../shared/data/llmrouter --requests 24 --turns 2 \
        --json var/bench/llamacpp_threads.json --markdown var/bench/llamacpp_threads.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.load_faults import free_port
from benchmarks.output import publish
from benchmarks.policy_serving import start
from benchmarks.scale_out import wait_http
from benchmarks.shared_prefill import summary

REPO = Path(__file__).resolve().parent.parent
SERVERS = ("llama_cpp.server", "experts.llamacpp_server")


def stream_once(client, prompt: str, max_tokens: int) -> tuple[float, float | None]:
    """(time to first token, decode ms per later token) of one streamed completion."""
    t0 = time.perf_counter()
    stamps = []
    stream = client.chat.completions.create(model="local", messages=[{"role": "user", "content": prompt}], stream=True,
                                            max_tokens=max_tokens, temperature=0)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
    if not stamps:
        return (time.perf_counter() - t0) * 1e3, None
    per_token = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3 if len(stamps) > 1 else None
    return (stamps[0] - t0) * 1e3, per_token


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=24, help="per server and turn")
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    from openai import OpenAI

    from core.model_files import SMOLLM2, resolve_gguf
    from policies.data import RoutingData

    data = RoutingData.load(args.data)
    test = [p for p, s in zip(data.prompts, data.split) if s == "test"]
    model = resolve_gguf(SMOLLM2, data_dir=REPO / "var")
    work = Path(tempfile.mkdtemp(prefix="llamacpp-threads-"))
    ttft: dict[str, list[float]] = {k: [] for k in SERVERS}
    decode: dict[str, list[float]] = {k: [] for k in SERVERS}
    for turn in range(args.turns):
        for module in SERVERS:
            port = free_port()
            proc = start([sys.executable, "-m", module, "--model", str(model), "--model_alias", "local", "--host", "127.0.0.1",
                          "--port", str(port), "--n_threads", "2", "--n_ctx", "4096", "--interrupt_requests", "False"],
                         dict(os.environ), work / f"{module}-{turn}.log")
            try:
                wait_http(f"http://127.0.0.1:{port}/v1/models", 120, proc)
                client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
                stream_once(client, "Say hello.", 4)  # warm-up
                for i in range(turn * args.requests, (turn + 1) * args.requests):  # both servers: the same prompts
                    first, per_token = stream_once(client, f"{test[i % len(test)]}\n\n(request {i})", args.max_tokens)
                    ttft[module].append(first)
                    if per_token is not None:
                        decode[module].append(per_token)
            finally:
                proc.terminate()
                proc.wait(60)
            print(f"turn {turn + 1}: {module} done", flush=True)

    results = {m: {"ttft": summary(ttft[m]), "decode": summary(decode[m])} for m in SERVERS}
    base = results["llama_cpp.server"]["decode"]
    rows = ["| server | requests | TTFT p50 ms | TTFT p90 ms | decode ms/token p50 | p90 | decode p50 ÷ llama_cpp.server |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for m, r in results.items():
        t, d = r["ttft"], r["decode"]
        rows.append(f"| `{m}` | {t['n']} | {t['p50_ms']:.0f} | {t['p90_ms']:.0f} | "
                    f"{d['p50_ms']:.1f} | {d['p90_ms']:.1f} | ×{d['p50_ms'] / base['p50_ms']:.2f} |")
    load = os.getloadavg()
    rows.append(f"\n{args.turns} turns of {args.requests} requests per server, one client, streaming, "
                f"{args.max_tokens} tokens at most; load average at the end {load[0]:.2f}")
    publish(rows, {"results": results, "load_avg": load, "args": {k: str(v) for k, v in vars(args).items()}},
            json_path=args.json, markdown_path=args.markdown)


if __name__ == "__main__":
    main()
