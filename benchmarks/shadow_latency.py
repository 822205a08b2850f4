"""Shadow on vs off: served latency in the same run, and the shadow log against offline decisions.

Two ``expertmux serve`` processes share one configuration except the ``shadow`` section: nine
experts named after the routing matrix's models (prices from its ``models.json``), all answered
by the fast fake upstream (``benchmarks.fake_upstream``), and a kNN policy trained on the
matrix's train split serving (``--k-served``). The "on" process also runs the shadow of a
second registered kNN version (``--k-candidate``) on every request (``sample_rate`` 1). Poisson
arrivals (``--rate`` per second) of the matrix's test prompts go to one process per block, the
blocks alternating off/on; between blocks the shadow's queue is drained, so no block pays for
another's work. Reported: served latency per mode (p50/p90/p99), the difference of medians with
a bootstrap interval, and the noise floor (the same difference between the off blocks' two
halves). Then every logged shadow decision is compared with the candidate's own ``decide`` on the
request's prompt, offline.

    python -m benchmarks.shadow_latency --data ../shared/data/llmrouter --json var/bench/shadow.json \
        --markdown var/bench/shadow.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text
from benchmarks.proxy_services import REPO, free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ADMIN = "bench-admin"


def _wait(url: str, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def _serve(config: Path, data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "EXPERTMUX_DATA_DIR": str(data_dir), "EXPERTMUX_ADMIN_TOKEN": ADMIN, "EXPERTMUX_LOG_LEVEL": "warning"}
    return subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(config), "--port", str(port), "--no-experts"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(data_dir / "serve.log", "w"),
                            start_new_session=True)


async def _block(url: str, prompts: list[str], rate: float, seconds: float, rng: np.random.Generator,
                 failed: list[str]) -> list[float]:
    """Poisson arrivals for ``seconds``; the latency (ms) of each answered request (failures go to ``failed``)."""
    import httpx

    out: list[float] = []

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        t0 = time.perf_counter()
        try:
            r = await client.post("/v1/chat/completions", json={"model": "expertmux/auto", "max_tokens": 16,
                                                                "messages": [{"role": "user", "content": prompt}]})
        except httpx.HTTPError:
            failed.append(prompt)
            return
        if r.status_code == 200:
            out.append((time.perf_counter() - t0) * 1000)
        else:
            failed.append(prompt)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        tasks, t_end, t = [], time.perf_counter() + seconds, time.perf_counter()
        while True:
            t += rng.exponential(1 / rate)
            if t >= t_end:
                break
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, prompts[int(rng.integers(len(prompts)))])))
        await asyncio.gather(*tasks)
    return out


def _drain(url: str, timeout: float = 120.0) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        live = httpx.get(f"{url}/admin/api/shadow", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10).json()["live"]
        c = live["counts"]
        if c["decided"] + c["error"] >= c["submitted"] or time.monotonic() > deadline:
            return live
        time.sleep(0.2)


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def _median_diff(a: list[float], b: list[float], rng: np.random.Generator, boot: int = 2000) -> dict:
    a, b = np.asarray(a), np.asarray(b)
    d = [np.median(rng.choice(b, len(b))) - np.median(rng.choice(a, len(a))) for _ in range(boot)]
    return {"diff_ms": float(np.median(b) - np.median(a)), "ci95_ms": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/llmrouter"))
    ap.add_argument("--k-served", type=int, default=10)
    ap.add_argument("--k-candidate", type=int, default=40)
    ap.add_argument("--rate", type=float, default=3.0, help="requests per second (Poisson)")
    ap.add_argument("--block-s", type=float, default=30.0)
    ap.add_argument("--blocks", type=int, default=6, help="blocks per mode (alternating off/on)")
    ap.add_argument("--lambda", dest="lambda_", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)

    import yaml

    from core.types import RouteRequest
    from policies.artifacts import load_artifact
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders
    from policies.training import train_policy
    from router.ledger import migrate
    from router.lifecycle import registry as reg

    configure_encoders(cache_dir=REPO / "var" / "cache" / "embeddings")
    work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    data = RoutingData.load(args.data)
    served_art = train_policy("knn", data, params={"k": args.k_served}, out=work / "knn").path
    cand_art = train_policy("knn", data, params={"k": args.k_candidate}, out=work / "knn").path
    models = json.loads((args.data / "models.json").read_text())["models"]
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(up_port)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    experts = [{"name": m, "backend": "remote", "model": "fake-model", "endpoint": f"http://127.0.0.1:{up_port}/v1",
                "input_usd_per_mtok": info.get("input_usd_per_mtok", 0.0), "output_usd_per_mtok": info.get("output_usd_per_mtok", 0.0),
                "params_b": info.get("params_b")} for m, info in models.items()]
    procs, urls = {}, {}
    try:
        for mode in ("off", "on"):
            home = work / mode
            home.mkdir()
            cfg = {"experts": experts, "policy": {"active": "knn", "lambda": args.lambda_,
                                                  "options": {"knn": {"artifact": str(served_art)}}}}
            if mode == "on":
                cfg["shadow"] = {"policy": "knn", "sample_rate": 1.0, "max_pending": 4096}
                url = f"sqlite:///{home / 'expertmux.db'}"
                migrate.upgrade(url)
                reg.register(url, "knn", cand_art)  # registered, not promoted: the shadow's candidate
            (home / "c.yaml").write_text(yaml.safe_dump(cfg))
            port = free_port()
            procs[mode] = _serve(home / "c.yaml", home, port)
            urls[mode] = f"http://127.0.0.1:{port}"
        for u in urls.values():
            _wait(f"{u}/healthz")
        test = [data.prompts[i] for i in data.rows_of("test")]
        rng = np.random.default_rng(args.seed)
        lat: dict[str, list[list[float]]] = {"off": [], "on": []}
        failures: dict[str, list[str]] = {"off": [], "on": []}
        for mode in ("off", "on"):  # warm-up: first requests load lazily
            asyncio.run(_block(urls[mode], test, args.rate, 3.0, rng, []))
        _drain(urls["on"])
        for b in range(args.blocks):
            for mode in (("off", "on") if b % 2 == 0 else ("on", "off")):
                lat[mode].append(asyncio.run(_block(urls[mode], test, args.rate, args.block_s, rng, failures[mode])))
                if mode == "on":
                    live = _drain(urls["on"])
        off = [x for blk in lat["off"] for x in blk]
        on = [x for blk in lat["on"] for x in blk]
        half_a = [x for blk in lat["off"][0::2] for x in blk]
        half_b = [x for blk in lat["off"][1::2] for x in blk]
        result = {"rate": args.rate, "block_s": args.block_s, "blocks": args.blocks, "off": _stats(off), "on": _stats(on),
                  "on_minus_off": _median_diff(off, on, rng), "noise_off_vs_off": _median_diff(half_a, half_b, rng),
                  "shadow_counts": live["counts"], "candidate_version": live["version"],
                  "failed": {m: len(f) for m, f in failures.items()}, "load_average": os.getloadavg()}
    finally:
        for p in [*procs.values(), upstream]:
            p.terminate()
        for p in [*procs.values(), upstream]:
            p.wait(30)
    # the shadow log against the candidate's offline decisions on the same prompts
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{work / 'on' / 'expertmux.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT s.expert, s.decision, s.lambda, r.prompt_text FROM shadow_decisions s "
                                 "JOIN requests r ON r.id = s.request_id")).all()
    from core.config import ExpertConfig
    from experts.registry import expert_info

    infos = [expert_info(ExpertConfig(**e)) for e in experts]
    cand = load_artifact(cand_art).policy
    cand = cand.for_experts(infos, {m: m for m in cand.expert_names})
    mismatch = 0
    for expert, decision, lam, prompt in rows:
        d = cand.decide(RouteRequest(prompt=prompt, prompt_tokens=len(prompt) // 4 + 1, max_completion_tokens=16), lambda_=lam)
        scores = json.loads(decision)["scores"] if isinstance(decision, str) else decision["scores"]
        mismatch += d.expert != expert or any(abs(d.scores[k] - v) > 1e-9 for k, v in scores.items())
    agree = None
    with engine.connect() as conn:
        agree = conn.execute(text("SELECT AVG(CASE WHEN agrees THEN 1.0 ELSE 0.0 END) FROM shadow_decisions")).scalar()
    result.update({"shadow_rows": len(rows), "offline_mismatches": mismatch, "agreement": agree})
    md = render(result)
    print(md)
    write_json(args.json, result)
    write_text(args.markdown, md)
    return result


def render(r: dict) -> str:
    d, n = r["on_minus_off"], r["noise_off_vs_off"]
    lines = [f"Served latency, shadow off vs on (Poisson {r['rate']:g} req/s, {r['blocks']} blocks of {r['block_s']:g} s per mode, "
             f"alternating; candidate {r['candidate_version']} on every request)", "",
             "| mode | requests | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|---:|"]
    for mode in ("off", "on"):
        s = r[mode]
        lines.append(f"| {mode} | {s['n']} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['p99_ms']:.1f} | {s['mean_ms']:.1f} |")
    lines += ["", f"median on − off: {d['diff_ms']:+.2f} ms (95 % CI {d['ci95_ms'][0]:+.2f} … {d['ci95_ms'][1]:+.2f}); "
              f"noise floor, off blocks vs off blocks: {n['diff_ms']:+.2f} ms (95 % CI {n['ci95_ms'][0]:+.2f} … {n['ci95_ms'][1]:+.2f})",
              f"failed requests: {r['failed']}; machine load average (1, 5, 15 min) at the end: "
              f"{', '.join(f'{x:.1f}' for x in r['load_average'])}",
              "", f"shadow: {r['shadow_counts']}; {r['shadow_rows']} logged decisions, agreement with the served policy "
              f"{r['agreement']:.1%}, {r['offline_mismatches']} differ from the candidate's offline decision"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
