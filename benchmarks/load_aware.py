"""Load-aware routing: two replicas of one local model, one saturated.

Two llama.cpp servers run SmolLM2-135M-Instruct (`smol-a`, `smol-b`, identical prices and prior).
Background clients keep `smol-a` saturated (long answers, by name, through the proxy). Probe
clients send short requests to `expertmux/auto`. The same run is made load-blind
(`latency_weight: 0`, the policy's tie goes to `smol-a`) and load-aware (latency weight + SLO);
the probes' latency percentiles and where they went are compared.

    python -m benchmarks.load_aware --duration 40 --json var/bench/load_aware.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from benchmarks.load_faults import free_port, start_proxy

REPO = Path(__file__).resolve().parent.parent


def replica(name: str) -> dict:
    return {"name": name, "backend": "llamacpp", "model": "smollm2-135m-instruct", "input_usd_per_mtok": 0.05,
            "output_usd_per_mtok": 0.10, "params_b": 0.135, "prior_quality": 0.4, "timeout_s": 300,
            "llamacpp": {"n_threads": 1, "n_ctx": 2048}}


def write_config(path: Path, *, aware: bool) -> Path:
    policy = {"active": "prior", "lambda": 0}
    if aware:
        policy.update({"latency_weight": 0.05, "latency_slo_s": 5.0})
    path.write_text(yaml.safe_dump({"experts": [replica("smol-a"), replica("smol-b")], "policy": policy}))
    return path


async def saturate(url: str, stop_at: float, clients: int) -> None:
    async def loop() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            while time.monotonic() < stop_at:
                await http.post("/v1/chat/completions", json={"model": "smol-a", "max_tokens": 96, "messages": [
                    {"role": "user", "content": "Write a long story about a lighthouse keeper."}]})
    await asyncio.gather(*(loop() for _ in range(clients)))


async def probe(url: str, start_at: float, stop_at: float, clients: int, out: list[tuple[float, str]]) -> None:
    async def loop(seed: int) -> None:
        rng = random.Random(seed)
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                r = await http.post("/v1/chat/completions", json={"model": "expertmux/auto", "max_tokens": 12, "messages": [
                    {"role": "user", "content": rng.choice(["Say hi.", "Name a colour.", "What is 3 + 4?"])}]})
                if r.status_code == 200:
                    out.append((time.monotonic() - t0, r.headers["x-expertmux-expert"]))
                await asyncio.sleep(rng.uniform(0.2, 0.6))
    await asyncio.gather(*(loop(i) for i in range(clients)))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_mode(aware: bool, duration: float, saturators: int, probes: int) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="expertmux-loadaware-"))
    config = write_config(data_dir / "config.yaml", aware=aware)
    port = free_port()
    proc = start_proxy(data_dir, port, config)
    url = f"http://127.0.0.1:{port}"
    results: list[tuple[float, str]] = []
    try:
        start = time.monotonic()
        stop_at = start + duration

        async def main() -> None:
            await asyncio.gather(saturate(url, stop_at, saturators), probe(url, start + 5, stop_at, probes, results))

        asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        subprocess.run([sys.executable, "-m", "cli", "experts", "down"], capture_output=True,
                       env={**os.environ, "EXPERTMUX_CONFIG": str(config), "EXPERTMUX_DATA_DIR": str(data_dir)})
    with sqlite3.connect(data_dir / "expertmux.db") as db:
        rows = db.execute("select count(*) from requests").fetchone()[0]
    latencies = [r[0] for r in results]
    return {"mode": "load-aware" if aware else "load-blind", "probes": len(results),
            "to_idle_replica": round(Counter(e for _, e in results)["smol-b"] / max(1, len(results)), 3),
            "p50_s": round(pct(latencies, 0.5), 3), "p95_s": round(pct(latencies, 0.95), 3), "ledger_rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=40)
    ap.add_argument("--saturators", type=int, default=4)
    ap.add_argument("--probes", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    blind = run_mode(False, args.duration, args.saturators, args.probes)
    aware = run_mode(True, args.duration, args.saturators, args.probes)
    from rich.console import Console
    from rich.table import Table

    table = Table("routing", "probe requests", "share to idle replica", "p50 s", "p95 s",
                  title="load-aware routing: one of two replicas saturated")
    for r in (blind, aware):
        table.add_row(r["mode"], str(r["probes"]), f"{r['to_idle_replica']:.0%}", f"{r['p50_s']:.2f}", f"{r['p95_s']:.2f}")
    ratio = aware["p95_s"] / blind["p95_s"] if blind["p95_s"] else float("nan")
    table.caption = f"p95 load-aware / load-blind = {ratio:.2f}"
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"load_blind": blind, "load_aware": aware, "p95_ratio": round(ratio, 3)}, indent=2))


if __name__ == "__main__":
    main()
