"""Scale-out and ledger faults: `expertmux serve` replicas behind HAProxy, sharing one PostgreSQL.

A fake upstream on loopback (``benchmarks.fake_upstream``), a private PostgreSQL cluster
(``tests.support.postgres``), N replicas and Debian's ``haproxy`` in front (health check on the
cheap ``/healthz``, retries on connection failures). It prints:

* req/s for 1, 2 and 3 replicas (closed loop, ``--clients`` connections, Python load generator),
  with the cores the machine had and its load average, and the database transactions per request
  (``pg_stat_database.xact_commit``);
* faults under load, each read back from the ledger: one replica SIGKILLed (the balancer routes
  around it; rows of answered requests lost on the killed replica), the PostgreSQL server
  restarted (rows spooled and replayed, none lost).

    python -m benchmarks.scale_out --markdown var/bench/scale_out.md

Needs ``haproxy`` and the PostgreSQL server binaries (``make system-deps``); installs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from benchmarks.proxy_loadgen import LoadGen
from benchmarks.proxy_services import Target, free_port
from tests.support.postgres import postgres_server

REPO = Path(__file__).resolve().parent.parent
EXE = REPO / ".venv" / "bin" / "expertmux"
BODY = {"model": "expertmux/auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello"}]}


@dataclass
class FaultRun:
    fault: str
    clients: int
    duration_s: float
    sent: int = 0
    answered: int = 0
    client_errors: int = 0
    rows_recorded: int = 0
    answered_not_recorded: int = 0
    recovery_s: float | None = None
    load_avg: float = 0.0
    notes: str = ""
    error_times: list[float] = field(default_factory=list)
    answered_ids: list[str] = field(default_factory=list)


class Cluster:
    """Replicas, the balancer and the database; every process started here is stopped here."""

    def __init__(self, work: Path, db: object, upstream: str) -> None:
        self.work, self.db, self.upstream = work, db, upstream
        self.replicas: dict[int, subprocess.Popen] = {}
        self.ports: dict[int, int] = {}
        self.haproxy: subprocess.Popen | None = None
        self.port = free_port()
        self.config = work / "expertmux.yaml"
        self.extra_env: dict[str, str] = {}  # e.g. the admin token, the registry poll
        self.config.write_text(f"experts:\n  - name: upstream\n    backend: remote\n    model: fake-model\n"
                               f"    endpoint: {upstream}/v1\n    input_usd_per_mtok: 1\n    output_usd_per_mtok: 2\n"
                               "policy:\n  active: prior\n")

    def env(self, i: int) -> dict[str, str]:
        return {**os.environ, "EXPERTMUX_CONFIG": str(self.config), "EXPERTMUX_DATA_DIR": str(self.work / f"replica{i}"),
                "EXPERTMUX_DATABASE_URL": self.db.url, "EXPERTMUX_PORT": str(self.ports[i]),
                "EXPERTMUX_AUTOSTART_EXPERTS": "false", "EXPERTMUX_AUTO_MIGRATE": "false",
                "EXPERTMUX_REQUIRE_API_KEYS": "false", "EXPERTMUX_LOG_LEVEL": "warning",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", **self.extra_env}

    def migrate(self) -> None:
        subprocess.run([str(EXE), "db", "upgrade"], env={**os.environ, "EXPERTMUX_DATABASE_URL": self.db.url,
                                                           "EXPERTMUX_CONFIG": str(self.config)},
                       check=True, capture_output=True, cwd=REPO)

    def start_replica(self, i: int) -> None:
        self.start_replicas([i])

    def start_replicas(self, ids: list[int]) -> None:
        """Start them all, then wait until each is healthy."""
        for i in ids:
            self.ports.setdefault(i, free_port())
            log = (self.work / f"replica{i}.log").open("ab")
            self.replicas[i] = subprocess.Popen([str(EXE), "serve"], env=self.env(i), stdout=log, stderr=subprocess.STDOUT,
                                                cwd=REPO, start_new_session=True)
        for i in ids:
            wait_http(f"http://127.0.0.1:{self.ports[i]}/healthz", 120, self.replicas[i])

    def start_balancer(self, replicas: list[int]) -> None:
        self.stop_balancer()
        # The check's timeout must outlast /healthz's latency at saturation (requests queue on the
        # event loop ahead of it): with HAProxy's default (= inter, 500 ms) every replica was marked
        # DOWN at once under 100 clients and 97 % of requests got the balancer's 503.
        servers = "\n".join(f"    server r{i} 127.0.0.1:{self.ports[i]} check inter 1s fall 3 rise 2" for i in replicas)
        cfg = self.work / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 10s
    retries 2
    option redispatch
    retry-on conn-failure empty-response
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend be
backend be
    balance leastconn
    option httpchk GET /healthz
    http-reuse safe
{servers}
""")
        self.haproxy = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=(self.work / "haproxy.log").open("ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/healthz", 30, self.haproxy)

    def stop_balancer(self) -> None:
        if self.haproxy is not None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
            self.haproxy = None

    def kill(self, i: int) -> None:
        self.replicas.pop(i).send_signal(signal.SIGKILL)

    def stop_all(self) -> None:
        self.stop_balancer()
        for proc in self.replicas.values():
            proc.terminate()
        for proc in self.replicas.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.replicas.clear()

    def query(self, sql: str) -> int:
        engine = create_engine(self.db.url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                return int(conn.execute(text(sql)).scalar() or 0)
        finally:
            engine.dispose()

    def rows(self) -> int:
        return self.query("select count(*) from requests")

    def xacts(self) -> int:
        return self.query("select xact_commit + xact_rollback from pg_stat_database where datname = 'expertmux'")


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} while starting")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not healthy after {timeout_s:g} s")


async def answered(http: httpx.AsyncClient, body: dict = BODY) -> httpx.Response | None:
    """One chat completion's response if it is a 200; None for any other status or no answer."""
    try:
        r = await http.post("/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return None
    return r if r.status_code == 200 else None


async def _client(url: str, stop_at: float, run: FaultRun, t0: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while time.monotonic() < stop_at:
            run.sent += 1
            r = await answered(http)
            if r is not None:
                run.answered += 1
                run.answered_ids.append(r.headers.get("x-expertmux-request-id", ""))
            else:
                run.client_errors += 1
                run.error_times.append(time.monotonic() - t0)
                await asyncio.sleep(0.05)


def fault_run(cluster: Cluster, fault: str, clients: int, duration_s: float, at_s: float, action) -> FaultRun:
    run = FaultRun(fault=fault, clients=clients, duration_s=duration_s)
    rows_before = cluster.rows()
    url = f"http://127.0.0.1:{cluster.port}"

    async def main() -> float:
        t0 = time.monotonic()
        tasks = [asyncio.create_task(_client(url, t0 + duration_s, run, t0)) for _ in range(clients)]
        await asyncio.sleep(at_s)
        fault_at = time.monotonic() - t0
        await asyncio.to_thread(action)
        await asyncio.gather(*tasks)
        return fault_at

    fault_at = asyncio.run(main())
    run.load_avg = round(os.getloadavg()[0], 1)
    time.sleep(3)  # the surviving writers drain their queues and spools
    deadline = time.monotonic() + 60
    while cluster.rows() - rows_before < run.answered and time.monotonic() < deadline:
        time.sleep(0.5)
    run.rows_recorded = cluster.rows() - rows_before
    ids = [i for i in run.answered_ids if i]
    if ids:
        recorded = cluster.query("select count(*) from requests where id in (" + ",".join(f"'{i}'" for i in ids) + ")")
        run.answered_not_recorded = len(ids) - recorded
    late = [t for t in run.error_times if t >= fault_at]
    run.recovery_s = round(max(late) - fault_at, 2) if late else 0.0
    run.answered_ids, run.error_times = [], []
    return run


def throughput(cluster: Cluster, gen: LoadGen, clients: int, duration_s: float) -> dict:
    target = Target("lb", "haproxy", f"http://127.0.0.1:{cluster.port}", "expertmux/auto")
    gen.warm_up(target, False, min(clients, 20), 50, 1.0)
    x0 = cluster.xacts()
    result = gen.run(target, False, clients, duration_s)
    time.sleep(2)  # the batched ledger writes of the run's last requests
    result["db_xacts_per_request"] = round((cluster.xacts() - x0) / max(result["requests"], 1), 2)
    result["load_avg"] = round(os.getloadavg()[0], 1)
    result.pop("hist", None)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per throughput figure and per fault run")
    ap.add_argument("--fault-clients", type=int, default=50)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    for tool in ("haproxy",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: make system-deps")
    out: dict = {"cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "throughput": [], "faults": []}
    work = Path(tempfile.mkdtemp(prefix="expertmux-scale-"))
    with ExitStack() as stack:
        db = stack.enter_context(postgres_server())
        up_port = free_port()
        upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(up_port)],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        stack.callback(upstream.terminate)
        wait_http(f"http://127.0.0.1:{up_port}/health", 30, upstream)
        cluster = Cluster(work, db, f"http://127.0.0.1:{up_port}")
        stack.callback(cluster.stop_all)
        cluster.migrate()
        gen = LoadGen.pick("python", None, work)
        for n in (1, 2, 3):
            cluster.start_replica(n)
            cluster.start_balancer(list(range(1, n + 1)))
            res = throughput(cluster, gen, args.clients, args.duration)
            out["throughput"].append({"replicas": n, **res})
            print(json.dumps(out["throughput"][-1]), flush=True)
        d = args.duration
        out["faults"].append(asdict(fault_run(cluster, "one of 3 replicas SIGKILLed", args.fault_clients, d, d / 3,
                                              lambda: cluster.kill(2))))
        print(json.dumps(out["faults"][-1]), flush=True)
        resumed: dict[str, float] = {}

        def restart_db() -> None:  # and time until the replicas' rows reach the database again
            t0 = time.monotonic()
            db.restart()
            before = cluster.rows()
            while cluster.rows() == before and time.monotonic() - t0 < 60:
                time.sleep(0.1)
            resumed["s"] = round(time.monotonic() - t0, 2)

        pg = fault_run(cluster, "PostgreSQL restarted (fast shutdown + start)", args.fault_clients, d, d / 3, restart_db)
        pg.notes = f"ledger writes resumed {resumed.get('s')} s after the restart began"
        out["faults"].append(asdict(pg))
        print(json.dumps(out["faults"][-1]), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    report = render(out)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if args.markdown:
        args.markdown.write_text(report)


def render(out: dict) -> str:
    lines = [f"Cores: {out['affinity']} (shared with other jobs; load average next to each figure).", "",
             "| replicas | clients | req/s | p50 ms | p99 ms | errors | DB transactions / request | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["throughput"]:
        lines.append(f"| {r['replicas']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{sum(r['errors'].values())} | {r['db_xacts_per_request']} | {r['load_avg']} |")
    lines += ["", "| fault tried | requests sent | answered | rows recorded | answered, no row | client errors | "
              "recovery (last client error after the fault) | load avg |", "|---|---|---|---|---|---|---|---|"]
    for f in out["faults"]:
        name = f"{f['fault']} ({f['notes']})" if f["notes"] else f["fault"]
        lines.append(f"| {name} | {f['sent']} | {f['answered']} | {f['rows_recorded']} | {f['answered_not_recorded']} | "
                     f"{f['client_errors']} | {f['recovery_s']} s | {f['load_avg']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
