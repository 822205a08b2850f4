"""What a learned policy costs the proxy: req/s and latency of `fixed` against `knn`, with every
prompt new (so every `knn` decision runs the MiniLM encoder), with the features computed off the
event loop (the default) and inside ``decide`` on the loop (``EXPERTMUX_FEATURES_OFF_LOOP=false``),
in one run.

One fake upstream (``benchmarks.fake_upstream``: the proxy's cost, not a model's) behind two
experts; a `knn` artifact fitted on the llmrouter matrix's train rows (its models mapped onto the
two experts); two `expertmux serve` processes, identical but for the switch; an asyncio client
per concurrency level sending the matrix's test prompts, each made unique.

    python -m benchmarks.policy_serving --data ../shared/data/llmrouter --concurrency 20,100 \
        --json var/bench/policy_serving.json --markdown var/bench/policy_serving.md
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.load_faults import free_port
from benchmarks.output import write_json, write_text
from benchmarks.scale_out import wait_http

REPO = Path(__file__).resolve().parent.parent


def fit_knn(data_dir: Path, out: Path, rows: int) -> tuple[Path, list[str]]:
    from policies.artifacts import save_artifact
    from policies.data import RoutingData
    from policies.registry import create_policy

    data = RoutingData.load(data_dir)
    train = data.subset(np.flatnonzero(data.split == "train")[:rows])
    return save_artifact(create_policy("knn").fit(train), out, data=train, flat=True), list(data.models)


def write_config(path: Path, upstream: str, artifact: Path, models: list[str]) -> None:
    import yaml

    half = len(models) // 2
    expert_map = {m: ("cheap" if i < half else "strong") for i, m in enumerate(models)}
    experts = [{"name": n, "backend": "remote", "model": "fake-model", "endpoint": f"{upstream}/v1",
                "input_usd_per_mtok": p, "output_usd_per_mtok": 2 * p} for n, p in (("cheap", 0.1), ("strong", 5.0))]
    path.write_text(yaml.safe_dump({"experts": experts, "policy": {
        "active": "fixed", "lambda": 0, "options": {"fixed": {"expert": "cheap"},
                                                    "knn": {"artifact": str(artifact), "expert_map": expert_map}}}}))


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO)


async def closed_loop(url: str, model: str, prompts, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    failed = 0
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failed
        while time.monotonic() < stop:
            body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": next(prompts)}]}
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/chat/completions", json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                failed += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        t0 = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.monotonic() - t0
    lat = np.sort(np.asarray(latencies)) * 1000 if latencies else np.zeros(1)
    return {"requests": len(latencies), "failed": failed, "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--concurrency", default="20,100")
    ap.add_argument("--seconds", type=float, default=10.0, help="per policy, switch and level")
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="policy-serving-"))
    artifact, models = fit_knn(args.data, work / "knn", args.train_rows)
    from policies.data import RoutingData

    data = RoutingData.load(args.data)
    counter = itertools.count()
    test = [p for p, s in zip(data.prompts, data.split) if s == "test"]
    prompts = (f"{test[i % len(test)]}\n\n(request {i})" for i in counter)  # never seen: every decision encodes

    procs, urls = [], {}
    up_port = free_port()
    procs.append(start([sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(up_port)], dict(os.environ),
                       work / "upstream.log"))
    wait_http(f"http://127.0.0.1:{up_port}/health", 60, procs[0])
    config = work / "expertmux.yaml"
    write_config(config, f"http://127.0.0.1:{up_port}", artifact, models)
    try:
        for name, off_loop in (("off the loop", "true"), ("on the loop", "false")):
            port = free_port()
            env = {**os.environ, "EXPERTMUX_CONFIG": str(config), "EXPERTMUX_PORT": str(port),
                   "EXPERTMUX_DATA_DIR": str(work / f"data-{off_loop}"), "EXPERTMUX_AUTOSTART_EXPERTS": "false",
                   "EXPERTMUX_LOG_LEVEL": "warning", "EXPERTMUX_FEATURES_OFF_LOOP": off_loop,
                   "EXPERTMUX_AUTOLEARN": "false"}
            procs.append(start([str(REPO / ".venv" / "bin" / "expertmux"), "serve", "--no-experts"], env,
                               work / f"serve-{off_loop}.log"))
            urls[name] = f"http://127.0.0.1:{port}"
        for proc, url in zip(procs[1:], urls.values()):
            wait_http(f"{url}/healthz", 120, proc)
            asyncio.run(closed_loop(url, "expertmux/knn", prompts, 4, 3))  # load the encoder, warm up
        results = []
        for c in levels:
            for policy, (name, url) in itertools.product(("fixed", "knn"), urls.items()):
                if policy == "fixed" and name != "off the loop":
                    continue  # fixed reads no prompt: the switch changes nothing for it
                r = asyncio.run(closed_loop(url, f"expertmux/{policy}", prompts, c, args.seconds))
                results.append({"concurrency": c, "policy": policy, "features": name if policy != "fixed" else "—", **r})
                print(results[-1], flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    load = os.getloadavg()
    table = ["| clients | policy | features | req/s | vs fixed | p50 ms | p99 ms | p99 ÷ p50 | failed |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        fixed = next(x["rps"] for x in results if x["concurrency"] == r["concurrency"] and x["policy"] == "fixed")
        table.append(f"| {r['concurrency']} | {r['policy']} | {r['features']} | {r['rps']:.0f} | {r['rps'] / fixed:.0%} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['p99_ms'] / max(r['p50_ms'], 1e-9):.1f} | {r['failed']} |")
    text = "\n".join(table) + f"\n\nload average at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n"
    write_json(args.json, {"results": results, "load_avg": load})
    write_text(args.markdown, text)
    print(text)


if __name__ == "__main__":
    main()
