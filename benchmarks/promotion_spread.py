"""A policy promoted (then rolled back) on one replica, and when every replica serves it.

Three ``expertmux serve`` replicas behind HAProxy on one PostgreSQL (``benchmarks.scale_out.Cluster``)
serve a learned policy (kNN on hashing embeddings of the synthetic routing matrix,
``tests.support.routing_matrix``). A second version is registered in the shared registry and
promoted through the admin API of replica 1; every replica is then asked directly (not through the
balancer), one request after another, which version answers (``x-expertmux-policy-version``),
while ``--clients`` connections keep sending requests through HAProxy. Per replica: the time from
the promote call's return to the first answer of the new version. Then the same for a rollback.
The stated bound is ``EXPERTMUX_REGISTRY_POLL_S`` plus one artifact load (timed here on the same
artifact, in this process).

    python -m benchmarks.promotion_spread --poll 5 --markdown var/bench/promotion_spread.md

Needs ``haproxy`` and the PostgreSQL server binaries (``make system-deps``); installs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from benchmarks.output import write_json, write_text
from benchmarks.proxy_services import free_port
from benchmarks.scale_out import REPO, Cluster, answered, wait_http
from tests.support.postgres import postgres_server

ADMIN = "promotion-admin-token"
POLICY = "knn"
PROBE = {"model": "expertmux/auto", "max_tokens": 8,
         "messages": [{"role": "user", "content": "compute the sum of this integer equation"}]}
VERSION_HEADER = "x-expertmux-policy-version"


@dataclass
class Spread:
    """One registry change seen from every replica; times in seconds from the admin call's return."""

    action: str
    version: str  # the version every replica should serve afterwards
    call_s: float  # the admin call itself (replica 1 applies the change before answering)
    reached_s: list[float | None]  # per replica: first answer of ``version`` (None: not within the timeout)
    probes: int = 0
    probe_failures: int = 0
    load_sent: int = 0
    load_failures: int = 0  # requests through the balancer that got no 200, during the whole swap
    load_versions: dict[str, int] = field(default_factory=dict)
    load_avg: float = 0.0

    @property
    def everywhere(self) -> bool:
        return all(t is not None for t in self.reached_s)

    @property
    def max_s(self) -> float | None:
        return max(self.reached_s) if self.everywhere else None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.reached_s) if self.everywhere else None

    def as_dict(self) -> dict:
        return {**asdict(self), "max_s": self.max_s, "median_s": self.median_s}


async def _load(url: str, stop: asyncio.Event, spread: Spread) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while not stop.is_set():
            spread.load_sent += 1
            r = await answered(http, PROBE)
            if r is not None:
                version = r.headers.get(VERSION_HEADER, "?")
                spread.load_versions[version] = spread.load_versions.get(version, 0) + 1
            else:
                spread.load_failures += 1
                await asyncio.sleep(0.05)


async def _first_answer(url: str, version: str, t0: float, deadline: float, spread: Spread) -> float | None:
    """Seconds from ``t0`` to this replica's first answer decided by ``version``."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            spread.probes += 1
            r = await answered(http, PROBE)
            if r is None:
                spread.probe_failures += 1
            elif r.headers.get(VERSION_HEADER) == version:
                return round(time.monotonic() - t0, 3)
            await asyncio.sleep(0.01)
    return None


def measure(action: str, call: Callable[[], str | None], *, replicas: list[str], balancer: str, clients: int,
            timeout_s: float, fallback: str, settle_s: float = 0.5) -> Spread:
    """Run ``call`` (the admin request; returns the version it made active, None: ``fallback``, the
    configured artifact) under load through ``balancer``, then watch each replica until it serves it."""

    async def main() -> Spread:
        spread = Spread(action=action, version="", call_s=0.0, reached_s=[])
        stop = asyncio.Event()
        load = [asyncio.create_task(_load(balancer, stop, spread)) for _ in range(clients)]
        await asyncio.sleep(settle_s)
        t_call = time.monotonic()
        spread.version = await asyncio.to_thread(call) or fallback
        t0 = time.monotonic()
        spread.call_s = round(t0 - t_call, 3)
        spread.reached_s = list(await asyncio.gather(*(_first_answer(u, spread.version, t0, t0 + timeout_s, spread)
                                                       for u in replicas)))
        await asyncio.sleep(settle_s)  # the balancer's traffic right after the last replica swapped
        stop.set()
        await asyncio.gather(*load)
        spread.load_avg = round(os.getloadavg()[0], 1)
        return spread

    return asyncio.run(main())


def served_version(url: str) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", json=PROBE, timeout=30)
    r.raise_for_status()
    return r.headers[VERSION_HEADER]


def admin_call(url: str, path: str, body: dict) -> Callable[[], str | None]:
    def call() -> str | None:
        r = httpx.post(f"{url}/admin/api/policies/{POLICY}/{path}", json=body, timeout=60,
                       headers={"authorization": f"Bearer {ADMIN}"})
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code}: {r.text}")
        return r.json()["version"]
    return call


def train_versions(root: Path) -> tuple[Path, Path]:
    """Two kNN artifacts (v1, v2) on different samples of the synthetic matrix; hashing encoder, no download."""
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders
    from policies.training import train_policy
    from tests.support.routing_matrix import make_frame

    configure_encoders(cache_dir=None)
    paths = [train_policy(POLICY, RoutingData.from_frame(make_frame(n_per_task=40, seed=seed), name="synthetic"),
                          params={"encoder": "hashing", "k": 5}, out=root / POLICY).path for seed in (3, 4)]
    return paths[0], paths[1]


def artifact_load_s(path: Path, repeat: int = 3) -> float:
    """Median seconds to load the artifact and answer one prediction (what a replica does before it swaps)."""
    from policies.artifacts import load_artifact

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        load_artifact(path, policy=POLICY).policy.predict_quality(["warm-up"])
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


@dataclass
class Setup:
    cluster: Cluster
    replicas: list[str]  # each replica's own URL
    balancer: str
    configured: str  # the version of the configured artifact (what a rollback returns to)
    candidate: str  # the registered version to promote
    artifact_load_s: float


@contextmanager
def promotion_cluster(work: Path, *, poll_s: float, n: int = 3) -> Iterator[Setup]:
    """PostgreSQL, a fake upstream, ``n`` replicas serving the v1 artifact with v2 registered, HAProxy."""
    from router.lifecycle import registry

    with ExitStack() as stack:
        db = stack.enter_context(postgres_server())
        up_port = free_port()
        upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(up_port)],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        stack.callback(upstream.wait, 10)
        stack.callback(upstream.terminate)
        configured_path, candidate_path = train_versions(work / "artifacts")
        wait_http(f"http://127.0.0.1:{up_port}/health", 30, upstream)
        cluster = Cluster(work, db, f"http://127.0.0.1:{up_port}")
        experts = "".join(f"  - name: {name}\n    backend: remote\n    model: fake-model\n    endpoint: {cluster.upstream}/v1\n"
                          f"    input_usd_per_mtok: {price}\n    output_usd_per_mtok: {price}\n"
                          for name, price in (("cheap", 0.1), ("strong", 2)))
        cluster.config.write_text(f"experts:\n{experts}policy:\n  active: {POLICY}\n  lambda: 0\n  options:\n"
                                  f"    {POLICY}:\n      artifact: {configured_path}\n"
                                  "      expert_map: {small: cheap, mid: cheap, large: strong}\n")
        cluster.extra_env = {"EXPERTMUX_ADMIN_TOKEN": ADMIN, "EXPERTMUX_REGISTRY_POLL_S": str(poll_s)}
        stack.callback(cluster.stop_all)
        cluster.migrate()
        candidate = registry.register(db.url, POLICY, candidate_path)
        cluster.start_replicas(list(range(1, n + 1)))
        cluster.start_balancer(list(range(1, n + 1)))
        urls = [f"http://127.0.0.1:{cluster.ports[i]}" for i in range(1, n + 1)]
        yield Setup(cluster, urls, f"http://127.0.0.1:{cluster.port}", served_version(urls[0]), candidate,
                    artifact_load_s(candidate_path))


def promote_and_roll_back(setup: Setup, *, clients: int, timeout_s: float) -> list[Spread]:
    """Promote the candidate on replica 1, wait for all; roll back on replica 1, wait for all."""
    first = setup.replicas[0]
    kw = {"replicas": setup.replicas, "balancer": setup.balancer, "clients": clients, "timeout_s": timeout_s,
          "fallback": setup.configured}
    promoted = measure("promote", admin_call(first, "promote", {"version": setup.candidate, "force": True,
                                                                "reason": "promotion spread"}), **kw)
    rolled = measure("rollback", admin_call(first, "rollback", {"reason": "promotion spread"}), **kw)
    return [promoted, rolled]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poll", type=float, default=5.0, help="EXPERTMUX_REGISTRY_POLL_S of every replica")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20, help="connections sending requests through HAProxy meanwhile")
    ap.add_argument("--rounds", type=int, default=3, help="promote + rollback cycles")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed: make system-deps")
    work = Path(tempfile.mkdtemp(prefix="expertmux-promote-"))
    out: dict = {"cores": len(os.sched_getaffinity(0)), "poll_s": args.poll, "replicas": args.replicas,
                 "clients": args.clients, "spreads": []}
    try:
        with promotion_cluster(work, poll_s=args.poll, n=args.replicas) as setup:
            out["artifact_load_s"] = setup.artifact_load_s
            out["bound_s"] = round(args.poll + setup.artifact_load_s, 3)
            for _ in range(args.rounds):
                for spread in promote_and_roll_back(setup, clients=args.clients, timeout_s=3 * args.poll + 30):
                    out["spreads"].append(spread.as_dict())
                    print(json.dumps(out["spreads"][-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(out))
    write_json(args.json, out, indent=2)
    write_text(args.markdown, render(out))


def render(out: dict) -> str:
    lines = [f"{out['replicas']} replicas behind HAProxy on one PostgreSQL, registry poll {out['poll_s']:g} s, "
             f"one artifact load {out['artifact_load_s']} s: stated bound {out['bound_s']} s. "
             f"{out['clients']} clients through the balancer meanwhile; cores: {out['cores']} (shared).", "",
             "| change (on replica 1) | admin call s | per replica s (1, 2, …) | median s | max s | within bound | "
             "requests via balancer | failed (balancer, direct) | answers per version | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in out["spreads"]:
        within = s["max_s"] is not None and s["max_s"] <= out["bound_s"]
        per = ", ".join("—" if t is None else f"{t:.2f}" for t in s["reached_s"])
        versions = ", ".join(f"{v}: {c}" for v, c in Counter(s["load_versions"]).most_common())
        lines.append(f"| {s['action']} → {s['version']} | {s['call_s']:.2f} | {per} | {s['median_s']} | {s['max_s']} | "
                     f"{'yes' if within else 'no'} | {s['load_sent']} | {s['load_failures']}, {s['probe_failures']} | "
                     f"{versions} | {s['load_avg']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
