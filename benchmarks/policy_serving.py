"""What learned policies cost the proxy: req/s and latency of `fixed` against each configured
policy, every prompt new (so every decision computes its features: an encoder, or a small LM's
prefill for the probe), with the features computed off the event loop (the default) and, for the
first policy, also inside ``decide`` on the loop (``EXPERTMUX_FEATURES_OFF_LOOP=false``), in one
run.

One fake upstream (``benchmarks.fake_upstream``: the proxy's cost, not a model's) behind two
experts; an artifact per entry fitted on the llmrouter matrix's train rows (its models mapped onto
the two experts); one `expertmux serve` process per (entry, switch), identical otherwise; wrk (or
the Python asyncio client) per concurrency level sending the matrix's test prompts, each made
unique.

    python -m benchmarks.policy_serving --data ../shared/data/llmrouter --concurrency 20,100 \
        --serve knn tryage 'tryage:encoder="minilm-static"' 'probe:conditioning="category";dtype="int8"' \
        --json var/bench/policy_serving.json --markdown var/bench/policy_serving.md
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from benchmarks.load_faults import free_port
from benchmarks.output import write_json, write_text
from benchmarks.scale_out import wait_http
from benchmarks.signals import parse_policy_spec

REPO = Path(__file__).resolve().parent.parent


def fit_policy(data_dir: Path, out: Path, rows: int, name: str = "knn", params: dict | None = None) -> tuple[Path, list[str]]:
    from policies.artifacts import save_artifact
    from policies.data import RoutingData
    from policies.registry import create_policy

    data = RoutingData.load(data_dir)
    train = data.subset(np.flatnonzero(data.split == "train")[:rows])
    policy = create_policy(name, **(params or {})).fit(train)
    return save_artifact(policy, out, data=train, flat=True), list(data.models)


def write_config(path: Path, upstream: str, artifact: Path, models: list[str], policy: str = "knn") -> None:
    import yaml

    half = len(models) // 2
    expert_map = {m: ("cheap" if i < half else "strong") for i, m in enumerate(models)}
    experts = [{"name": n, "backend": "remote", "model": "fake-model", "endpoint": f"{upstream}/v1",
                "input_usd_per_mtok": p, "output_usd_per_mtok": 2 * p} for n, p in (("cheap", 0.1), ("strong", 5.0))]
    path.write_text(yaml.safe_dump({"experts": experts, "policy": {
        "active": "fixed", "lambda": 0, "options": {"fixed": {"expert": "cheap"},
                                                    policy: {"artifact": str(artifact), "expert_map": expert_map}}}}))


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO)


async def closed_loop(url: str, model: str, prompts, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()  # HTTP status or the client's exception
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": next(prompts)}]}
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/chat/completions", json=body)
                reason = None if r.status_code == 200 else f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if reason is None:
                latencies.append(time.perf_counter() - t0)
            else:
                failures[reason] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        t0 = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.monotonic() - t0
    lat = np.sort(np.asarray(latencies)) * 1000 if latencies else np.zeros(1)
    return {"requests": len(latencies), "failed": sum(failures.values()), "failures": dict(failures), "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


PROMPTS_LUA = r"""
local prompts = {}
for line in io.lines("PROMPTS_FILE") do prompts[#prompts + 1] = line end
local n = 0
request = function()  -- every request a prompt never sent before: the policy's encoder runs for each
  n = n + 1
  return wrk.format(nil, nil, nil, '{"model":"MODEL","max_tokens":8,"messages":[{"role":"user","content":'
    .. prompts[(n % #prompts) + 1] .. '\\n\\n(request RUN-' .. n .. ')"}]}')
end
"""


def wrk_closed_loop(url: str, model: str, prompts: list[str], clients: int, seconds: float, work: Path) -> dict:
    """The same closed loop with wrk (one thread), when the Python client would be the bottleneck."""
    from benchmarks.proxy_loadgen import WRK_SCRIPT

    run = uuid.uuid4().hex[:12]
    listing = work / "prompts.jsonl"
    if not listing.exists():  # each line a JSON string without its closing quote: the script appends a suffix
        listing.write_text("".join(json.dumps(p)[:-1] + "\n" for p in prompts))
    script = work / f"wrk-{run}.lua"
    lua = PROMPTS_LUA.replace("PROMPTS_FILE", str(listing)).replace("MODEL", model).replace("RUN", run)
    script.write_text(WRK_SCRIPT.format(body="", headers='wrk.headers["Content-Type"] = "application/json"',
                                        want_hist="false") + lua)
    argv = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, math.ceil(seconds))}s", "--timeout", "10s", "-s", str(script),
            f"{url}/v1/chat/completions"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    raw = json.loads(next(ln for ln in out.splitlines() if ln.startswith("LOADGEN "))[len("LOADGEN "):])
    failures = {k: v for k, v in raw["errors"].items() if v}
    return {"requests": raw["requests"] - raw["errors"]["status"], "failed": sum(failures.values()), "failures": failures,
            "rps": (raw["requests"] - raw["errors"]["status"]) / raw["duration_s"],
            "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000}


def _failed(r: dict) -> str:
    return str(r["failed"]) + (f" ({', '.join(f'{k} ×{v}' for k, v in r['failures'].items())})" if r["failed"] else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--concurrency", default="20,100")
    ap.add_argument("--seconds", type=float, default=10.0, help="per policy, switch and level")
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--serve", nargs="+", default=["knn"],
                    help="one server per entry, features off the loop: POLICY or 'POLICY:param=value;...' (JSON values)")
    ap.add_argument("--skip-on-loop", action="store_true", help="no server with the features inside decide (first entry)")
    ap.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                    help="the timed runs' client: wrk (when installed: auto) or the Python asyncio client")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    from policies.data import RoutingData
    from policies.features import configure_feature_stores

    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="policy-serving-"))
    home = REPO / "var"  # fitting reads the shared feature cache; derived models are made once, shared by the servers
    configure_feature_stores(data_dir=home, cache_dir=home / "cache" / "embeddings")
    entries = [(raw, *parse_policy_spec(raw)) for raw in args.serve]
    artifacts = {}
    for i, (raw, policy, params) in enumerate(entries):
        artifacts[raw], models = fit_policy(args.data, work / f"artifact-{i}", args.train_rows, policy, params)
    data = RoutingData.load(args.data)
    counter = itertools.count()
    test = [p for p, s in zip(data.prompts, data.split) if s == "test"]
    prompts = (f"{test[i % len(test)]}\n\n(request {i})" for i in counter)  # never seen: every decision encodes

    servers = [(raw, policy, "off the loop", "true") for raw, policy, _ in entries]
    if not args.skip_on_loop:
        servers.insert(1, (entries[0][0], entries[0][1], "on the loop", "false"))
    procs, urls = [], {}
    up_port = free_port()
    procs.append(start([sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(up_port)], dict(os.environ),
                       work / "upstream.log"))
    wait_http(f"http://127.0.0.1:{up_port}/health", 60, procs[0])
    try:
        for i, (raw, policy, where, off_loop) in enumerate(servers):
            config = work / f"expertmux-{i}.yaml"
            write_config(config, f"http://127.0.0.1:{up_port}", artifacts[raw], models, policy)
            data_dir = work / f"data-{i}"
            data_dir.mkdir()
            (data_dir / "models").symlink_to(home / "models", target_is_directory=True)
            port = free_port()
            env = {**os.environ, "EXPERTMUX_CONFIG": str(config), "EXPERTMUX_PORT": str(port),
                   "EXPERTMUX_DATA_DIR": str(data_dir), "EXPERTMUX_AUTOSTART_EXPERTS": "false",
                   "EXPERTMUX_LOG_LEVEL": "warning", "EXPERTMUX_FEATURES_OFF_LOOP": off_loop,
                   "EXPERTMUX_AUTOLEARN": "false"}
            procs.append(start([str(REPO / ".venv" / "bin" / "expertmux"), "serve", "--no-experts"], env,
                               work / f"serve-{i}.log"))
            urls[(raw, policy, where)] = f"http://127.0.0.1:{port}"
        for proc, ((_, policy, _), url) in zip(procs[1:], urls.items()):
            wait_http(f"{url}/healthz", 120, proc)
            asyncio.run(closed_loop(url, f"expertmux/{policy}", prompts, 4, 5))  # load the model, warm up
        use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk") is not None)

        def timed(url: str, model: str, clients: int) -> dict:
            if use_wrk:
                return wrk_closed_loop(url, model, test, clients, args.seconds, work)
            return asyncio.run(closed_loop(url, model, prompts, clients, args.seconds))

        results = []
        first = next(iter(urls.values()))
        for c in levels:
            r = timed(first, "expertmux/fixed", c)  # reads no prompt
            results.append({"concurrency": c, "policy": "fixed", "features": "—", **r})
            print(results[-1], flush=True)
            for (raw, policy, where), url in urls.items():
                r = timed(url, f"expertmux/{policy}", c)
                results.append({"concurrency": c, "policy": raw, "features": where, **r})
                print(results[-1], flush=True)
    finally:
        for p in reversed(procs):  # the servers first: their queued requests must not meet a stopped upstream
            p.terminate()
            p.wait(30)
    load = os.getloadavg()
    table = ["| clients | policy | features | req/s | vs fixed | p50 ms | p99 ms | p99 ÷ p50 | failed |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        fixed = next(x["rps"] for x in results if x["concurrency"] == r["concurrency"] and x["policy"] == "fixed")
        table.append(f"| {r['concurrency']} | {r['policy']} | {r['features']} | {r['rps']:.0f} | "
                     f"{r['rps'] / fixed if fixed else float('nan'):.0%} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{r['p99_ms'] / max(r['p50_ms'], 1e-9):.1f} | {_failed(r)} |")
    client = "wrk, one thread" if use_wrk else "Python asyncio client"
    text = "\n".join(table) + (f"\n\nclient: {client}; load average at the end: {load[0]:.2f} / {load[1]:.2f} / "
                               f"{load[2]:.2f}\n")
    write_json(args.json, {"results": results, "load_avg": load, "client": client})
    write_text(args.markdown, text)
    print(text)


if __name__ == "__main__":
    main()
