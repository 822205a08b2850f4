"""Load with faults: many concurrent clients against `expertmux serve` with real local experts.

Mixed streaming and non-streaming clients hammer the proxy for a fixed time; in the middle one
expert process is killed (the supervisor restarts it), and optionally the proxy itself gets a
SIGTERM. Afterwards the ledger is read back: every request that got an answer (any status) must
have exactly one row. A connection the proxy closed at shutdown without answering is ambiguous
(the request may or may not have been read), so it may add at most one row: answered-with-a-status
<= rows <= that + cut.

    python -m benchmarks.load_faults --clients 100 --duration 60 --kill-at 20 --json var/bench/load_faults.json
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Say hello.", "Name a colour.", "What is 2 + 2?", "Give one word for happy.", "Name a fruit."]


@dataclass
class LoadReport:
    clients: int
    duration_s: float
    sent: int = 0
    answered: int = 0
    failed_mid_stream: int = 0  # the expert died after the first byte: an error event ends the stream
    failed_no_candidate: int = 0  # an error status: no expert could answer
    failed_shutdown: int = 0  # 503: the proxy shut down before the answer was ready (grace time ran out)
    not_reached: int = 0  # connection refused: the request was never sent (after SIGTERM)
    cut: int = 0  # connection closed without a response: the proxy may or may not have read the request
    ledger_rows: int = 0
    statuses: dict = field(default_factory=dict)
    killed_expert: str | None = None
    killed_at_s: float | None = None
    restarted: bool | None = None
    sigterm_at_s: float | None = None
    p50_latency_s: float | None = None
    p95_latency_s: float | None = None

    @property
    def reached(self) -> int:
        """Requests the proxy answered with a status (200, 503, an error event): each owes one row."""
        return self.sent - self.not_reached - self.cut

    @property
    def rows_accounted(self) -> bool:
        return self.reached <= self.ledger_rows <= self.reached + self.cut


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(data_dir: Path, port: int, config: Path, *, grace_s: float = 60) -> subprocess.Popen:
    env = {**os.environ, "EXPERTMUX_CONFIG": str(config), "EXPERTMUX_DATA_DIR": str(data_dir), "EXPERTMUX_PORT": str(port),
           "EXPERTMUX_SUPERVISE_INTERVAL_S": "1", "EXPERTMUX_LOG_LEVEL": "warning",
           # the shipped config calibrates its experts in the background: not part of this measurement
           "EXPERTMUX_AUTOLEARN": "false", "EXPERTMUX_SHUTDOWN_GRACE_S": str(grace_s)}
    log = (data_dir / "proxy.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"expertmux exited while starting:\n{(data_dir / 'proxy.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("expertmux did not become healthy in 300 s")


async def client_loop(url: str, stop_at: float, report: LoadReport, latencies: list[float], rng: random.Random) -> None:
    # A fresh connection per request: after a SIGTERM "not reached" is then unambiguous.
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        while time.monotonic() < stop_at:
            stream = rng.random() < 0.5
            body = {"model": "expertmux/random", "max_tokens": 8, "stream": stream,
                    "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
            report.sent += 1
            t0 = time.monotonic()
            try:
                if stream:
                    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                        text = (await r.aread()).decode()
                        status = r.status_code
                        if status == 200 and '"error"' in text and "[DONE]" not in text:
                            report.failed_mid_stream += 1
                            report.statuses["stream_error"] = report.statuses.get("stream_error", 0) + 1
                            continue
                else:
                    r = await http.post("/v1/chat/completions", json=body)
                    status = r.status_code
            except (httpx.ConnectError, httpx.ConnectTimeout):
                report.not_reached += 1
                await asyncio.sleep(0.2)
                continue
            except httpx.TransportError:  # connected, then closed, reset or timed out without an answer
                report.cut += 1
                await asyncio.sleep(0.2)
                continue
            report.statuses[str(status)] = report.statuses.get(str(status), 0) + 1
            if status == 200:
                report.answered += 1
                latencies.append(time.monotonic() - t0)
            elif status == 503:
                report.failed_shutdown += 1
            else:
                report.failed_no_candidate += 1


async def run_load(url: str, report: LoadReport, *, kill=None, sigterm=None, seed: int = 0) -> None:
    rng = random.Random(seed)
    start = time.monotonic()
    stop_at = start + report.duration_s
    latencies: list[float] = []
    tasks = [asyncio.create_task(client_loop(url, stop_at, report, latencies, random.Random(rng.random())))
             for _ in range(report.clients)]
    events = sorted([(t, fn) for t, fn in (kill, sigterm) if t is not None], key=lambda e: e[0])
    for at, fn in events:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        fn()
    await asyncio.gather(*tasks)
    if latencies:
        latencies.sort()
        report.p50_latency_s = round(latencies[len(latencies) // 2], 3)
        report.p95_latency_s = round(latencies[int(len(latencies) * 0.95)], 3)


def wait_until_up(url: str, expert: str, timeout_s: float) -> bool:
    """True once the proxy reports ``expert`` answering again. A llama.cpp server answers its
    health route only between generations, so one busy moment is not a verdict: poll."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz/details", timeout=10).json()["experts"][expert]["up"]:
                return True
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(1)
    return False


def ledger_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "expertmux.db") as db:
        return db.execute("select count(*) from requests").fetchone()[0]


def run(clients: int, duration: float, kill_at: float | None, sigterm_at: float | None,
        config: Path = REPO / "config" / "expertmux.yaml", victim: str = "gemma3-270m", grace_s: float = 60) -> LoadReport:
    data_dir = Path(tempfile.mkdtemp(prefix="expertmux-load-"))
    port = free_port()
    proc = start_proxy(data_dir, port, config, grace_s=grace_s)
    report = LoadReport(clients=clients, duration_s=duration)
    url = f"http://127.0.0.1:{port}"

    def kill_expert() -> None:
        state = json.loads((data_dir / "experts-state.json").read_text())
        os.kill(state[victim]["pid"], signal.SIGKILL)
        report.killed_expert, report.killed_at_s = victim, kill_at

    def terminate_proxy() -> None:
        proc.send_signal(signal.SIGTERM)
        report.sigterm_at_s = sigterm_at

    try:
        asyncio.run(run_load(url, report, kill=(kill_at, kill_expert) if kill_at is not None else (None, None),
                             sigterm=(sigterm_at, terminate_proxy) if sigterm_at is not None else (None, None)))
        if report.killed_expert and proc.poll() is None:
            report.restarted = wait_until_up(url, victim, timeout_s=90)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        # the proxy stops its own experts on a graceful exit; make sure nothing lingers
        subprocess.run([sys.executable, "-m", "cli", "experts", "down"], capture_output=True,
                       env={**os.environ, "EXPERTMUX_CONFIG": str(config), "EXPERTMUX_DATA_DIR": str(data_dir)})
    report.ledger_rows = ledger_rows(data_dir)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--kill-at", type=float, default=20, help="seconds into the run; negative = no kill")
    ap.add_argument("--sigterm-at", type=float, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = run(args.clients, args.duration, args.kill_at if args.kill_at >= 0 else None, args.sigterm_at)
    from rich.console import Console
    from rich.table import Table

    table = Table("clients", "seconds", "sent", "answered", "failed mid-stream", "failed (no candidate)", "503 at shutdown", "not reached",
                  "cut", "ledger rows", "rows accounted", title="load with faults (real llama.cpp experts)")
    table.add_row(str(report.clients), f"{report.duration_s:g}", str(report.sent), str(report.answered),
                  str(report.failed_mid_stream), str(report.failed_no_candidate), str(report.failed_shutdown), str(report.not_reached),
                  str(report.cut), str(report.ledger_rows), "yes" if report.rows_accounted else "NO")
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**asdict(report), "reached": report.reached}, indent=2))


if __name__ == "__main__":
    main()
