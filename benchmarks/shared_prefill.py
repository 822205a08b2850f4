"""Time to first token through the proxy when the probe's features are a local expert's own
prefill (``llamacpp.share_prefill``), against the same probe computing them in the proxy.

Two experts: ``local``, the packaged SmolLM2-135M on llama.cpp (the model the probe reads), and
``remote``, a fake upstream. One probe artifact (``runtime="llamacpp"``), fitted on the llmrouter
matrix's first train rows with its models mapped onto the two experts. Three `expertmux serve`
processes, identical but for one switch:

* ``shared``: ``share_prefill: true``: the expert prefills the conversation, hands its states to
  the probe and keeps the prompt in its KV cache for the answer;
* ``proxy``: ``share_prefill: false``: the proxy runs SmolLM2 up to the probe's block itself, then
  the expert prefills the prompt again for its answer;
* ``fixed``: no probe at all (the floor: the expert's own prefill and first token).

One client, streaming, every prompt new (a test prompt plus a request number). Each request is
pinned to one expert with ``expertmux.allowed_experts`` (the probe still reads the prompt and
decides), so the table shows the time to first token when the answer comes from the probed expert
and when it comes from elsewhere. With ``--clients N`` (N > 1) a last row per server has N clients
at once, every answer from the probed expert: a prefill kept for one request must then survive
the others' requests.

    python -m benchmarks.shared_prefill --data ../shared/data/llmrouter --requests 40 \
        --json var/bench/shared_prefill.json --markdown var/bench/shared_prefill.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.load_faults import free_port
from benchmarks.output import write_json, write_text
from benchmarks.policy_serving import fit_policy, start
from benchmarks.scale_out import wait_http

REPO = Path(__file__).resolve().parent.parent


def write_config(path: Path, upstream: str, artifact: Path | None, models: list[str], *, share: bool) -> None:
    import yaml

    half = len(models) // 2
    expert_map = {m: ("local" if i < half else "remote") for i, m in enumerate(models)}
    experts = [{"name": "local", "backend": "llamacpp", "model": "smollm2-135m-instruct",
                "llamacpp": {"share_prefill": share, "n_threads": 2}},
               {"name": "remote", "backend": "remote", "model": "fake-model", "endpoint": f"{upstream}/v1",
                "input_usd_per_mtok": 5.0, "output_usd_per_mtok": 10.0}]
    options = {"fixed": {"expert": "local"}}
    if artifact is not None:
        options["probe"] = {"artifact": str(artifact), "expert_map": expert_map}
    path.write_text(yaml.safe_dump({"experts": experts, "policy": {"active": "fixed", "lambda": 0, "options": options}}))


def first_token_ms(client, model: str, prompt: str, expert: str, max_tokens: int) -> float:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], stream=True,
                                            max_tokens=max_tokens, temperature=0,
                                            extra_body={"expertmux": {"allowed_experts": [expert]}})
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    return (first if first is not None else time.perf_counter() - t0) * 1e3


def at_once(client, model: str, prompts: list[str], clients: int, max_tokens: int) -> list[float]:
    """Times to first token with ``clients`` threads taking the prompts in turn, answers from local."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda p: first_token_ms(client, model, p, "local", max_tokens), prompts))


def callback_overhead(prompts: list[str], rounds: int = 3, tokens: int = 64) -> dict:
    """What the evaluation callback costs an expert that shares its prefill while nothing is being
    read: generation with and without it, same model and prompts, alternating (best of rounds)."""
    import llama_cpp

    from core import layer_states
    from core.model_files import SMOLLM2, resolve_gguf

    path = str(resolve_gguf(SMOLLM2, data_dir=REPO / "var"))
    plain = llama_cpp.Llama(path, n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False)
    capture = layer_states.LayerCapture()
    with layer_states.install(capture):
        hooked = llama_cpp.Llama(path, n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False)
    best = {"plain": [np.inf] * len(prompts), "callback": [np.inf] * len(prompts)}
    generated = {}
    for _ in range(rounds):
        for name, llm in (("plain", plain), ("callback", hooked)):
            for i, p in enumerate(prompts):
                llm.reset()
                t0 = time.perf_counter()
                out = llm.create_chat_completion(messages=[{"role": "user", "content": p}], max_tokens=tokens, temperature=0)
                best[name][i] = min(best[name][i], time.perf_counter() - t0)
                generated[(name, i)] = out["usage"]["completion_tokens"]
    total = {k: float(sum(v)) for k, v in best.items()}
    n_tokens = sum(generated[("plain", i)] for i in range(len(prompts)))
    return {"prompts": len(prompts), "completion_tokens": n_tokens, "plain_s": total["plain"], "callback_s": total["callback"],
            "ratio": total["callback"] / total["plain"]}


def summary(values: list[float]) -> dict:
    a = np.asarray(values)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--train-rows", type=int, default=300)
    ap.add_argument("--requests", type=int, default=40, help="per server and destination")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--clients", type=int, default=1, help="also a row with this many clients at once (answers from local)")
    ap.add_argument("--layer", type=int, default=18, help="the probe's block (fixed here: this measures time, not routing)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    from openai import OpenAI

    from policies.data import RoutingData
    from policies.features import configure_feature_stores

    work = Path(tempfile.mkdtemp(prefix="shared-prefill-"))
    home = REPO / "var"
    configure_feature_stores(data_dir=home, cache_dir=home / "cache" / "embeddings")
    artifact, models = fit_policy(args.data, work / "artifact", args.train_rows, "probe",
                                  {"runtime": "llamacpp", "layer": args.layer, "pooling": "both"})
    data = RoutingData.load(args.data)
    test = [p for p, s in zip(data.prompts, data.split) if s == "test"]
    # Every server gets the same prompts in the same order (their experts are separate processes,
    # so no cache carries over); within a server every prompt is new.
    concurrent = args.requests * args.clients if args.clients > 1 else 0
    prompts = [f"{test[i % len(test)]}\n\n(request {i})" for i in range(3 + 2 * args.requests + concurrent)]

    overhead = callback_overhead(test[:8])
    print(overhead, flush=True)
    procs = [start([sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(up := free_port())], dict(os.environ),
                   work / "upstream.log")]
    wait_http(f"http://127.0.0.1:{up}/health", 60, procs[0])
    results = []
    try:
        for server, share, policy in (("shared", True, "probe"), ("proxy", False, "probe"), ("fixed", False, "fixed")):
            config = work / f"{server}.yaml"
            write_config(config, f"http://127.0.0.1:{up}", artifact if policy == "probe" else None, models, share=share)
            data_dir = work / f"data-{server}"
            data_dir.mkdir()
            (data_dir / "models").symlink_to(home / "models", target_is_directory=True)
            port = free_port()
            env = {**os.environ, "EXPERTMUX_CONFIG": str(config), "EXPERTMUX_PORT": str(port),
                   "EXPERTMUX_DATA_DIR": str(data_dir), "EXPERTMUX_LOG_LEVEL": "warning", "EXPERTMUX_AUTOLEARN": "false"}
            proc = start([str(REPO / ".venv" / "bin" / "expertmux"), "serve"], env, work / f"serve-{server}.log")
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", 240, proc)
                client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
                model = f"expertmux/{policy}"
                order = iter(prompts)
                for _ in range(3):  # load the models, warm up
                    first_token_ms(client, model, next(order), "local", args.max_tokens)
                for expert in ("local", "remote"):
                    times = [first_token_ms(client, model, next(order), expert, args.max_tokens) for _ in range(args.requests)]
                    results.append({"server": server, "answer_from": expert, **summary(times)})
                    print(results[-1], flush=True)
                if concurrent:
                    batch = [next(order) for _ in range(concurrent)]
                    times = at_once(client, model, batch, args.clients, args.max_tokens)
                    results.append({"server": server, "answer_from": f"local, {args.clients} clients", **summary(times)})
                    print(results[-1], flush=True)
            finally:
                proc.terminate()
                proc.wait(60)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    load = os.getloadavg()
    fixed = {r["answer_from"]: r for r in results if r["server"] == "fixed"}
    rows = ["| features from | answer from | TTFT p50 ms | TTFT p90 ms | mean ms | p50 over `fixed` ms |",
            "|---|---|---:|---:|---:|---:|"]
    label = {"shared": "the expert's own prefill (`share_prefill`)", "proxy": "SmolLM2 in the proxy (llama.cpp, to the block)",
             "fixed": "— (`fixed`, no probe)"}
    for r in results:
        over = r["p50_ms"] - fixed[r["answer_from"]]["p50_ms"]
        rows.append(f"| {label[r['server']]} | {r['answer_from']} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | "
                    f"{r['mean_ms']:.0f} | {over:+.0f} |")
    text = "\n".join(rows) + (f"\n\n{args.requests} requests per row, one client, streaming, {args.max_tokens} tokens; "
                              f"probe block {args.layer}; load average at the end {load[0]:.2f}\n")
    text += (f"\nThe evaluation callback while nothing is read (in-process, {overhead['prompts']} prompts, "
             f"{overhead['completion_tokens']} tokens, best of 3): {overhead['plain_s']:.2f} s without it, "
             f"{overhead['callback_s']:.2f} s with it (×{overhead['ratio']:.3f})\n")
    write_json(args.json, {"results": results, "load_avg": load, "layer": args.layer, "callback_overhead": overhead})
    write_text(args.markdown, text)
    print(text)


if __name__ == "__main__":
    main()
