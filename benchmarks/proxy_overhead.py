"""Proxy overhead: the same load sent directly to an upstream, through expertmux and through LiteLLM's proxy.

One run starts a fast fake OpenAI-compatible upstream (``benchmarks.fake_upstream``), expertmux
(``expertmux serve``, SQLite ledger on) and LiteLLM's proxy (``litellm --config``, from the
``.venv-bench`` virtualenv made by ``make bench-env``) on loopback ports, then drives all of them
with one load generator (``wrk`` when installed, else a Python asyncio client in its own process):

* added latency: sequential requests (concurrency 1, at least ``--latency-requests`` per target
  after a warm-up) directly to the upstream and through each proxy, in interleaved rounds; added
  p50/p99 = proxy percentile minus direct percentile. Non-streaming and SSE streaming (time to the
  last byte).
* sustained throughput: closed loop at increasing concurrency for a fixed time each (also in
  interleaved rounds); the highest requests/s whose error rate stays under 1 %, and the proxy's
  CPU time per request.

Every figure is also given as the ratio expertmux / LiteLLM proxy, measured in the same run.

    python -m benchmarks.proxy_overhead --json var/bench/proxy_overhead.json

On a machine with two or more cores the proxies are pinned to the last core and the upstream and
the load generator to the others, so a proxy never shares its core with the load it measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import fake_upstream

REPO = Path(__file__).resolve().parent.parent
CHAT_PATH = "/v1/chat/completions"
UPSTREAM_MODEL = "fake-model"
MAX_ERROR_RATE = 0.01
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in five words."},
]
TARGET_P50_RATIO = 0.5  # expertmux's added p50 at most half of LiteLLM proxy's
TARGET_RPS_RATIO = 2.0  # expertmux's sustained req/s at least twice LiteLLM proxy's


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_layout(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(cpus for the proxies, cpus for the upstream and the load generator), or (None, None)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def _pinned(cpus: set[int] | None):
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log_path: Path
    started_s: float = 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in the service's process group."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # field 5 of stat: process group id
                total += int(fields[11]) + int(fields[12])
        return total / tick


def quiesce(svc: Service | None, timeout_s: float = 30.0, window_s: float = 0.1, idle_share: float = 0.15) -> float:
    """Wait until ``svc`` has finished the requests a previous run left behind.

    A load generator that stops at a deadline abandons its in-flight requests; a proxy keeps
    working on them (and on its queue) for a while. Measuring the next run before that work is done
    would charge it to the wrong run. Idle = under ``idle_share`` of one core (at most one 10 ms clock
    tick) in two windows in a row.
    """
    if svc is None:
        return 0.0
    start = time.monotonic()
    quiet = 0
    last = svc.cpu_seconds()
    while time.monotonic() - start < timeout_s and quiet < 2:
        time.sleep(window_s)
        now = svc.cpu_seconds()
        quiet = quiet + 1 if now - last < idle_share * window_s else 0
        last = now
    return time.monotonic() - start


class Services:
    """Subprocesses of one run, each in its own session, all stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.items: list[Service] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cpus: set[int] | None,
              cwd: Path | None = None) -> Service:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(argv, env=env, cwd=cwd or REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_pinned(cpus))
        log.close()
        svc = Service(name, proc, log_path, time.monotonic())
        self.items.append(svc)
        return svc

    def stop(self, svc: Service, grace_s: float = 8.0) -> None:
        if svc.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(svc.proc.pid, signal.SIGTERM)
            try:
                svc.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # leftovers of the group, if any
            os.killpg(svc.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            svc.proc.wait(2)

    def stop_all(self) -> None:
        for svc in reversed(self.items):
            self.stop(svc)


def wait_ready(svc: Service, base: str, paths: list[str], timeout_s: float) -> float:
    """Poll until one of ``paths`` answers 200; returns the seconds since the service started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not svc.alive():
            raise RuntimeError(f"{svc.name} exited with code {svc.proc.returncode}:\n{svc.log_tail()}")
        for path in paths:
            try:
                with urllib.request.urlopen(base + path, timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - svc.started_s
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.2)
    raise RuntimeError(f"{svc.name} not ready after {timeout_s:.0f} s:\n{svc.log_tail()}")


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    key: str
    label: str
    base: str  # http://127.0.0.1:PORT
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    service: Service | None = None
    available: bool = True
    note: str = ""
    ledger: str = ""
    startup_s: float | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def body(self, stream: bool) -> bytes:
        req: dict[str, Any] = {"model": self.model, "messages": MESSAGES, "max_tokens": 16}
        if stream:
            req["stream"] = True
            req["stream_options"] = {"include_usage": True}
        return json.dumps(req, separators=(",", ":")).encode()


def check_target(target: Target) -> None:
    """One non-streaming and one streaming request must return the upstream's answer."""
    for stream in (False, True):
        req = urllib.request.Request(target.base + CHAT_PATH, data=target.body(stream), method="POST",
                                     headers={"Content-Type": "application/json", **target.headers})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{target.label}: HTTP {exc.code}: {exc.read()[:400]!r}") from exc
        if stream:
            pieces = [json.loads(line[6:]) for line in text.splitlines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
            answer = "".join((c.get("choices") or [{}])[0].get("delta", {}).get("content") or "" for c in pieces)
            ok = answer == fake_upstream.ANSWER and "data: [DONE]" in text
        else:
            ok = json.loads(text)["choices"][0]["message"]["content"] == fake_upstream.ANSWER
        if not ok:
            raise RuntimeError(f"{target.label}: unexpected {'stream' if stream else 'response'}: {text[:400]!r}")


# --------------------------------------------------------------------------- load generators


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  -- the latency histogram as [microseconds, count] pairs, so that runs can be merged
  local hist = {{}}
  if {want_hist} then
    for i = 1, #latency do
      local v, c = latency(i)
      hist[#hist + 1] = string.format("[%d,%d]", v, c)
    end
  end
  io.write(string.format(
    'LOADGEN {{"requests":%d,"duration_s":%.6f,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},"hist":[',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
  io.write(table.concat(hist, ","), "]}}\\n")
end
"""


@dataclass
class LoadGen:
    kind: str  # "wrk" or "python"
    cpus: set[int] | None
    work_dir: Path
    version: str = ""
    sent: dict[str, int] = field(default_factory=dict)  # completed requests per service

    @classmethod
    def pick(cls, choice: str, cpus: set[int] | None, work_dir: Path) -> LoadGen:
        wrk = shutil.which("wrk")
        if choice == "wrk" and not wrk:
            raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk); or use --loadgen python")
        if choice in ("wrk", "auto") and wrk:
            out = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
            return cls("wrk", cpus, work_dir, out.split("Copyright")[0].strip())
        return cls("python", cpus, work_dir, f"asyncio client, Python {platform.python_version()}")

    def warm_up(self, target: Target, stream: bool, concurrency: int, min_requests: int, min_s: float) -> dict[str, Any]:
        """Run until ``min_requests`` have completed (a proxy's first requests can be slow), at most 20 s."""
        total, start = 0, time.monotonic()
        while True:
            last = self.run(target, stream, concurrency, min_s)
            total += last["requests"]
            if total >= min_requests or time.monotonic() - start > 20:
                return {**last, "warmup_requests": total}

    def run(self, target: Target, stream: bool, concurrency: int, duration_s: float,
            histogram: bool = False) -> dict[str, Any]:
        """One timed run (whole seconds with wrk); ``histogram`` adds the latencies as [µs, count] pairs."""
        quiesce(target.service)
        body = target.body(stream)
        headers = {"Content-Type": "application/json", **target.headers}
        url = target.base + CHAT_PATH
        if self.kind == "wrk":
            script = self.work_dir / f"wrk-{target.key}-{'s' if stream else 'n'}{'-h' if histogram else ''}.lua"
            lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
            script.write_text(WRK_SCRIPT.format(body=body.decode(), headers=lines,
                                                want_hist="true" if histogram else "false"))
            argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, math.ceil(duration_s))}s", "--timeout", "10s",
                    "-s", str(script), url]
        else:
            spec = {"url": url, "headers": headers, "body": body.decode(), "concurrency": concurrency,
                    "duration_s": duration_s, "histogram": histogram}
            argv = [sys.executable, "-m", "benchmarks.proxy_overhead", "loadgen", json.dumps(spec)]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=duration_s + 60,
                              preexec_fn=_pinned(self.cpus))
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LOADGEN ")), None)
        if proc.returncode != 0 or line is None:
            problem = f"load generator failed on {target.label} ({url}), exit {proc.returncode}: " \
                      f"{proc.stdout[-500:]} {proc.stderr[-500:]}"
            if target.service is not None and not target.service.alive():
                problem += f"\n{target.service.name} exited with code {target.service.proc.returncode}; " \
                           f"its log ends with:\n{target.service.log_tail()}"
            raise RuntimeError(problem)
        raw = json.loads(line[len("LOADGEN "):])
        if target.service is not None:
            self.sent[target.service.name] = self.sent.get(target.service.name, 0) + raw["requests"]
        errors = sum(raw["errors"].values())
        attempts = raw["requests"] + raw["errors"]["connect"] + raw["errors"]["timeout"]
        return {
            "concurrency": concurrency,
            "requests": raw["requests"],
            "duration_s": round(raw["duration_s"], 3),
            "rps": raw["requests"] / raw["duration_s"] if raw["duration_s"] else 0.0,
            "error_rate": errors / attempts if attempts else 1.0,
            "errors": raw["errors"],
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "mean_ms": raw["mean_us"] / 1000,
            "hist": raw["hist"],
        }


def _loadgen_main(spec_json: str) -> None:
    """The Python load generator: closed loop, keep-alive HTTP/1.1, one process, one event loop."""
    import asyncio
    from urllib.parse import urlsplit

    spec = json.loads(spec_json)
    url = urlsplit(spec["url"])
    body = spec["body"].encode()
    head = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in spec["headers"].items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    latencies: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}

    async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
                await reader.readexactly(size + 2)
        elif length is not None:
            await reader.readexactly(length)
        else:
            await reader.read()
            close = True
        return status, close

    async def worker(deadline: float) -> None:
        reader = writer = None
        while time.monotonic() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(url.hostname, url.port)
                except OSError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.05)
                    continue
            t0 = time.perf_counter_ns()
            try:
                writer.write(request)
                status, close = await asyncio.wait_for(read_response(reader), 10)
            except TimeoutError:
                errors["timeout"] += 1
                close = True
            except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError):
                errors["read"] += 1
                close = True
            else:
                latencies.append(time.perf_counter_ns() - t0)
                if status >= 400:
                    errors["status"] += 1
            if close:
                writer.close()
                reader = writer = None

    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*(worker(start + spec["duration_s"]) for _ in range(spec["concurrency"])))
        return time.monotonic() - start

    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    duration = asyncio.run(main())
    counts: dict[int, int] = {}
    for ns in latencies:
        counts[ns // 1000] = counts.get(ns // 1000, 0) + 1
    hist = sorted(counts.items())
    out = {"requests": len(latencies), "duration_s": duration, "p50_us": percentile(hist, 50),
           "p99_us": percentile(hist, 99), "mean_us": sum(latencies) / max(1, len(latencies)) / 1000,
           "errors": errors, "hist": hist if spec.get("histogram") else []}
    print("LOADGEN " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- starting the services


def start_upstream(services: Services, cpus: set[int] | None) -> Target:
    port = free_port()
    svc = services.start("fake_upstream", [sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(port)],
                         dict(os.environ), cpus)
    base = f"http://127.0.0.1:{port}"
    target = Target("direct", "direct", base, UPSTREAM_MODEL, service=svc)
    target.startup_s = wait_ready(svc, base, ["/health"], 30)
    return target


def start_expertmux(services: Services, args: argparse.Namespace, upstream: Target, cpus: set[int] | None,
                    work: Path) -> list[Target]:
    exe = Path(args.expertmux_bin)
    labels = [("expertmux", "expertmux auto", "expertmux/auto"),
              ("expertmux_expert", "expertmux expert", "upstream")]
    unavailable = [Target(k, lbl, "", m, available=False) for k, lbl, m in labels]
    if not exe.exists():
        for t in unavailable:
            t.note = f"{exe} not found (make install)"
        return unavailable
    data_dir = work / "expertmux-data"
    data_dir.mkdir()
    config = work / "expertmux.yaml"
    config.write_text(
        "experts:\n"
        "  - name: upstream\n"
        "    backend: remote\n"
        f"    model: {UPSTREAM_MODEL}\n"
        f"    endpoint: {upstream.base}/v1\n"
        "    input_usd_per_mtok: 1\n"
        "    output_usd_per_mtok: 2\n"
        "policy:\n"
        "  active: prior\n"
    )
    port = free_port()
    env = dict(os.environ, EXPERTMUX_CONFIG=str(config), EXPERTMUX_PORT=str(port), EXPERTMUX_HOST="127.0.0.1",
               EXPERTMUX_DATA_DIR=str(data_dir), EXPERTMUX_AUTOSTART_EXPERTS="false",
               EXPERTMUX_LOG_LEVEL=args.proxy_log_level.lower(), LITELLM_LOCAL_MODEL_COST_MAP="True",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               EXPERTMUX_REQUIRE_API_KEYS="true" if args.auth == "on" else "false")
    env.pop("EXPERTMUX_DATABASE_URL", None)

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)

    upgrade = cli("db", "upgrade")
    if upgrade.returncode != 0:
        for t in unavailable:
            t.note = f"`expertmux db upgrade` failed: {(upgrade.stderr or upgrade.stdout)[-300:]}"
        return unavailable
    headers = {}
    if args.auth == "on":  # an API key, as a deployment that is not on loopback requires
        created = cli("keys", "create", "benchmark")
        lines = [ln.strip() for ln in created.stdout.splitlines() if ln.strip()]
        if created.returncode != 0 or not lines or " " in lines[-1]:
            for t in unavailable:
                t.note = f"`expertmux keys create` failed: {(created.stderr or created.stdout)[-300:]}"
            return unavailable
        headers["Authorization"] = f"Bearer {lines[-1]}"
    svc = services.start("expertmux", [str(exe), "serve"], env, cpus)
    base = f"http://127.0.0.1:{port}"
    ledger = "SQLite in the run's temp data dir, one row per request"
    return [Target(key, label, base, model, headers=dict(headers), service=svc, ledger=ledger)
            for key, label, model in labels]


LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {api_base}
      api_key: sk-fake-upstream
litellm_settings:
  drop_params: true
  set_verbose: false
  json_logs: false
  success_callback: []
  failure_callback: []
  callbacks: []
general_settings:
  disable_spend_logs: true
"""


def start_litellm(services: Services, args: argparse.Namespace, upstream: Target, cpus: set[int] | None,
                  work: Path) -> Target:
    exe = Path(args.litellm_bin)
    port = free_port()
    master_key = "sk-bench-" + secrets.token_hex(16)
    target = Target("litellm", "LiteLLM proxy", f"http://127.0.0.1:{port}", UPSTREAM_MODEL,
                    headers={"Authorization": f"Bearer {master_key}"} if args.auth == "on" else {},
                    ledger="none (no database: LiteLLM proxy keeps no spend log without one)")
    if not exe.exists():
        target.available, target.note = False, f"{exe} not found (make bench-env)"
        return target
    config = work / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(model=UPSTREAM_MODEL, api_base=upstream.base + "/v1"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG=args.proxy_log_level.upper(),
               LITELLM_TELEMETRY="False", NO_DOCS="True", NO_REDOC="True")
    if args.auth == "on":  # its master key (it refuses to start without one unless told it is for local use)
        env["LITELLM_MASTER_KEY"] = master_key
    else:
        env["LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY"] = "true"
    target.service = services.start(
        "litellm", [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                    "--num_workers", "1"], env, cpus, cwd=work)
    return target


# --------------------------------------------------------------------------- measuring


def percentile(hist: list[list[int]] | list[tuple[int, int]], p: float) -> int:
    """Nearest-rank percentile of a sorted [value, count] histogram."""
    total = sum(c for _, c in hist)
    if not total:
        return 0
    rank, seen = max(1, math.ceil(p / 100 * total)), 0
    for value, count in hist:
        seen += count
        if seen >= rank:
            return value
    return hist[-1][0]


def merge_hists(runs: list[dict]) -> list[tuple[int, int]]:
    counts: dict[int, int] = {}
    for run in runs:
        for value, count in run["hist"]:
            counts[value] = counts.get(value, 0) + count
    return sorted(counts.items())


def _rotated(items: list, r: int) -> list:
    """A different order each round, so no target always runs right after another."""
    r %= max(1, len(items))
    return items[r:] + items[:r]


def measure_latency(gen: LoadGen, direct: Target, proxies: list[Target], stream: bool,
                    args: argparse.Namespace) -> None:
    """Sequential requests in interleaved rounds: each round runs the upstream directly, then every proxy
    (in a rotating order), so slow drifts of a shared machine reach every target alike. The rounds'
    latency histograms are merged; added p50/p99 = proxy percentile minus direct percentile."""
    mode = "stream" if stream else "nonstream"
    per_round: dict[str, float] = {}
    warmups: dict[str, int] = {}
    for t in proxies:
        warm = gen.warm_up(t, stream, 1, args.warmup_requests, args.warmup_s)
        warmups[t.key] = warm["warmup_requests"]
        total_s = 1.2 * args.latency_requests / max(warm["rps"], 1.0)
        total_s = min(args.max_latency_s, max(args.min_latency_s, total_s))
        per_round[t.key] = max(1, math.ceil(total_s / args.rounds))
    gen.warm_up(direct, stream, 1, args.warmup_requests, args.warmup_s)
    runs: dict[str, list[dict]] = {t.key: [] for t in [direct, *proxies]}
    for r in range(args.rounds):
        runs[direct.key].append(gen.run(direct, stream, 1, 1, histogram=True))
        for t in _rotated(proxies, r):
            runs[t.key].append(gen.run(t, stream, 1, per_round[t.key], histogram=True))
    base = merge_hists(runs[direct.key])
    b50, b99 = percentile(base, 50) / 1000, percentile(base, 99) / 1000
    direct.results.setdefault("latency", {})[mode] = {
        "n": sum(c for _, c in base), "p50_ms": b50, "p99_ms": b99, "rounds": args.rounds}
    for t in proxies:
        hist = merge_hists(runs[t.key])
        p50, p99 = percentile(hist, 50) / 1000, percentile(hist, 99) / 1000
        errors = sum(sum(run["errors"].values()) for run in runs[t.key])
        t.results.setdefault("latency", {})[mode] = {
            "n": sum(c for _, c in hist), "rounds": args.rounds, "seconds_per_round": per_round[t.key],
            "warmup_requests": warmups[t.key], "errors": errors,
            "p50_ms": p50, "p99_ms": p99, "direct_p50_ms": b50, "direct_p99_ms": b99,
            "added_p50_ms": p50 - b50, "added_p99_ms": p99 - b99,
            "per_round_p50_ms": [run["p50_ms"] for run in runs[t.key]],
        }


def measure_throughput(gen: LoadGen, targets: list[Target], args: argparse.Namespace) -> None:
    """Closed loop at each concurrency level; every level runs ``--rounds`` times per target, interleaved.

    A target's CPU time is counted from the start of a run until it is idle again, and shared by the
    requests it completed and the ~c requests the load generator abandoned at its deadline (the
    proxy still serves those)."""
    seconds = max(1, math.ceil(args.duration / args.rounds))
    for t in targets:
        gen.warm_up(t, False, min(args.concurrency), args.warmup_requests, args.warmup_s)
    runs: dict[tuple[str, int], list[dict]] = {}
    for c in args.concurrency:
        for r in range(args.rounds):
            for t in _rotated(targets, r):
                quiesce(t.service)
                cpu0 = t.service.cpu_seconds() if t.service else 0.0
                run = gen.run(t, False, c, seconds)
                run["drain_s"] = round(quiesce(t.service), 2)
                run["cpu_s"] = (t.service.cpu_seconds() - cpu0) if t.service else 0.0
                runs.setdefault((t.key, c), []).append(run)
    for t in targets:
        levels = []
        for c in args.concurrency:
            rs = runs[(t.key, c)]
            requests = sum(run["requests"] for run in rs)
            duration = sum(run["duration_s"] for run in rs)
            errors = sum(sum(run["errors"].values()) for run in rs)
            attempts = requests + sum(run["errors"]["connect"] + run["errors"]["timeout"] for run in rs)
            served = requests + c * len(rs)
            levels.append({
                "concurrency": c, "requests": requests, "duration_s": round(duration, 3),
                "rps": requests / duration if duration else 0.0,
                "error_rate": errors / attempts if attempts else 1.0,
                "per_run_rps": [round(run["rps"], 1) for run in rs],
                "p50_ms_median_run": sorted(run["p50_ms"] for run in rs)[len(rs) // 2],
                "cpu_ms_per_request": 1000 * sum(run["cpu_s"] for run in rs) / served if requests else None,
            })
        ok = [lv for lv in levels if lv["error_rate"] < MAX_ERROR_RATE and lv["requests"] > 0]
        best = max(ok, key=lambda lv: lv["rps"]) if ok else None
        t.results["throughput"] = {"levels": levels, "seconds_per_run": seconds, "rounds": args.rounds,
                                   "max_sustained_rps": best["rps"] if best else 0.0,
                                   "at_concurrency": best["concurrency"] if best else None}


def count_ledger_rows(db_path: Path) -> dict[str, int]:
    if not db_path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        wanted = [t for t in ("requests", "attempts") if t in tables] or [t for t in tables if t != "alembic_version"]
        return {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in wanted}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# --------------------------------------------------------------------------- report


def summarize(targets: list[Target]) -> dict:
    by = {t.key: t for t in targets if t.available}
    out: dict[str, Any] = {}
    lite = by.get("litellm")
    for key in ("expertmux", "expertmux_expert"):
        mux = by.get(key)
        if not mux or not lite:
            continue
        r: dict[str, float | None] = {}
        for mode in ("nonstream", "stream"):
            for p in ("p50", "p99"):
                a = mux.results.get("latency", {}).get(mode, {}).get(f"added_{p}_ms")
                b = lite.results.get("latency", {}).get(mode, {}).get(f"added_{p}_ms")
                r[f"added_{p}_ms_{mode}"] = ratio(a, b)
        r["max_sustained_rps"] = ratio(mux.results.get("throughput", {}).get("max_sustained_rps"),
                                       lite.results.get("throughput", {}).get("max_sustained_rps"))
        out[f"{key}/litellm"] = r
    return out


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def report_tables(doc: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables, built from the JSON document alone."""
    live = [(k, t) for k, t in doc["targets"].items() if t["available"] and "latency" in t]
    ratios = doc["ratios"].get("expertmux/litellm", {})
    ratio_col = "expertmux auto / LiteLLM"

    header = ["added latency, ms", *(t["label"] for _, t in live), ratio_col]
    rows = []
    for mode, mode_label in (("nonstream", "non-streaming"), ("stream", "streaming, last byte")):
        for p in ("p50", "p99"):
            row = [f"{mode_label} {p}"]
            for key, t in live:
                m = t["latency"].get(mode)
                if not m:
                    row.append("–")
                elif key == "direct":
                    row.append(f"({m[f'{p}_ms']:.3f} abs)")
                else:
                    row.append(f"{m[f'added_{p}_ms']:.2f}")
            row.append(_fmt(ratios.get(f"added_{p}_ms_{mode}")))
            if any(c != "–" for c in row[1:-1]):
                rows.append(row)
    n = {key: t["latency"].get("nonstream", {}).get("n") for key, t in live}
    rows.append(["sequential requests (non-streaming)", *(str(n[k]) for k, _ in live), ""])
    tables = [("Added latency at concurrency 1: proxy minus direct at the same percentile", header, rows)]

    header = ["req/s at concurrency", *(t["label"] for _, t in live), ratio_col]
    rows = []
    for i, c in enumerate(doc["settings"]["concurrency"]):
        row, rates = [str(c)], {}
        for key, t in live:
            levels = t.get("throughput", {}).get("levels", [])
            lv = levels[i] if i < len(levels) else None
            if lv is None:
                row.append("–")
                continue
            rates[key] = lv["rps"]
            row.append(f"{lv['rps']:.0f}" + (f" ({100 * lv['error_rate']:.1f}% err)" if lv["error_rate"] else ""))
        row.append(_fmt(ratio(rates.get("expertmux"), rates.get("litellm"))))
        rows.append(row)
    best, cpu = ["highest sustained (errors < 1%)"], ["proxy CPU ms per request, at that level"]
    cpu_of: dict[str, float | None] = {}
    for key, t in live:
        tp = t.get("throughput")
        if not tp or tp.get("at_concurrency") is None:
            best.append("–")
            cpu.append("–")
            continue
        best.append(f"{tp['max_sustained_rps']:.0f} (c={tp['at_concurrency']})")
        lv = next(lv for lv in tp["levels"] if lv["concurrency"] == tp["at_concurrency"])
        cpu_of[key] = lv.get("cpu_ms_per_request") if key != "direct" else None
        cpu.append(_fmt(cpu_of[key]))
    best.append(_fmt(ratios.get("max_sustained_rps")))
    cpu.append(_fmt(ratio(cpu_of.get("expertmux"), cpu_of.get("litellm"))))
    rows += [best, cpu]
    tables.append((f"Throughput, non-streaming, closed loop, {doc['settings']['duration_s']:g} s per level", header, rows))
    return tables


def report_notes(doc: dict) -> list[str]:
    notes = []
    for key, t in doc["targets"].items():
        if key == "direct":
            continue
        status = f"ledger: {t['ledger']}" if t["available"] else f"NOT MEASURED: {t['note']}"
        start = f", ready {t['startup_s']:.1f} s after start" if t.get("startup_s") is not None else ""
        notes.append(f"{t['label']} (model {t['model']}){start}; {status}")
    if doc.get("ledger_rows"):
        sent = doc.get("requests_completed", {}).get("expertmux", 0)
        notes.append(f"expertmux ledger rows after the run: {doc['ledger_rows']}; requests completed through expertmux "
                     f"by the load generator: {sent} (the ledger also has the checks and the requests cut off at the "
                     "end of each timed run)")
    ratios = doc["ratios"].get("expertmux/litellm", {})
    if ratios:
        p50, rps = ratios.get("added_p50_ms_nonstream"), ratios.get("max_sustained_rps")
        notes.append(f"targets: added p50 expertmux/LiteLLM {_fmt(p50)} (wanted <= {TARGET_P50_RATIO}: "
                     f"{'met' if p50 is not None and p50 <= TARGET_P50_RATIO else 'NOT met'}); sustained req/s "
                     f"expertmux/LiteLLM {_fmt(rps)} (wanted >= {TARGET_RPS_RATIO}: "
                     f"{'met' if rps is not None and rps >= TARGET_RPS_RATIO else 'NOT met'})")
    m = doc["machine"]
    auth = doc["settings"].get("auth")
    if auth:
        notes.append("API keys: " + ("an expertmux key and LiteLLM's master key checked on every request" if auth == "on"
                                     else "off on both proxies"))
    notes.append(f"load generator: {m['load_generator']}; CPU pinning: {m['pinning']}; "
                 f"load average before/after: {m['loadavg_before']} / {m['loadavg_after']}")
    return notes


def print_report(doc: dict) -> None:
    """Rich tables when rich is installed (it is in the project's virtualenv), plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None  # noqa: N806
    for title, header, rows in report_tables(doc):
        if Console is None:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            print(f"\n{title}")
            for r in [header, *rows]:
                print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
            continue
        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        console = Console()
        (console if console.is_terminal else Console(width=160)).print(table)
    for note in report_notes(doc):
        print(note)


def markdown_report(doc: dict) -> str:
    out = []
    for title, header, rows in report_tables(doc):
        out.append(f"**{title}**\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    out += [f"- {note}" for note in report_notes(doc)]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    p.add_argument("--markdown", type=Path, help="also write the tables here as Markdown")
    p.add_argument("--render", type=Path, metavar="JSON", help="only print the report of an earlier run's JSON")
    p.add_argument("--latency-requests", type=int, default=500, help="sequential requests per latency figure (at least)")
    p.add_argument("--min-latency-s", type=float, default=3.0, help="least time per proxy for the sequential runs")
    p.add_argument("--max-latency-s", type=float, default=24.0, help="most time per proxy for the sequential runs")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per figure (spreads a shared machine's drift)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="length of one warm-up run")
    p.add_argument("--warmup-requests", type=int, default=50, help="warm-up runs repeat until this many completed")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64],
                   help="closed-loop concurrency levels, comma-separated")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per concurrency level and target, over all rounds")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--no-stream", action="store_true", help="skip the streaming latency figures")
    p.add_argument("--skip", default="", help="comma-separated targets to leave out: expertmux,expertmux_expert,litellm")
    p.add_argument("--expertmux-bin", default=str(REPO / ".venv" / "bin" / "expertmux"))
    p.add_argument("--litellm-bin", default=str(REPO / ".venv-bench" / "bin" / "litellm"))
    p.add_argument("--proxy-log-level", default="warning", help="log level of both proxies (no access log)")
    p.add_argument("--auth", choices=["on", "off"], default="on",
                   help="on: an expertmux API key and LiteLLM's master key on every request; off: neither checks keys")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--keep-logs", action="store_true", help="keep the services' logs and temp files")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    proxy_cpus, aux_cpus = cpu_layout(not args.no_pin)
    work = Path(tempfile.mkdtemp(prefix="expertmux-bench-"))
    services = Services(work)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    gen = LoadGen.pick(args.loadgen, aux_cpus, work)

    def on_term(signum, frame):  # SIGTERM: unwind through finally like Ctrl-C
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    targets: list[Target] = []
    ledger_rows = None
    try:
        direct = start_upstream(services, aux_cpus)
        targets.append(direct)
        # Both proxies start together (their start-ups overlap); only one target is under load at a time.
        if {"expertmux", "expertmux_expert"} <= skip:
            mux_targets = []
        else:
            mux_targets = [t for t in start_expertmux(services, args, direct, proxy_cpus, work) if t.key not in skip]
        lite = None if "litellm" in skip else start_litellm(services, args, direct, proxy_cpus, work)
        targets += mux_targets + ([lite] if lite else [])
        ready_paths = {"litellm": ["/health/liveliness"], "expertmux": ["/health", "/healthz", "/v1/models"]}
        started: dict[int, float] = {}
        for t in targets[1:]:
            if not t.available or t.service is None:
                continue
            try:
                if id(t.service) not in started:
                    started[id(t.service)] = wait_ready(t.service, t.base, ready_paths.get(t.key, ready_paths["expertmux"]),
                                                       args.startup_timeout)
                t.startup_s = started[id(t.service)]
                check_target(t)
            except RuntimeError as exc:
                t.available, t.note = False, str(exc).splitlines()[0][:300]
                print(f"! {t.label} left out: {exc}", file=sys.stderr)
        check_target(direct)

        live = [t for t in targets if t.available]
        proxies = [t for t in live if t.key != "direct"]
        for stream in ([False] if args.no_stream else [False, True]):
            print(f"· added latency, {'streaming' if stream else 'non-streaming'}: "
                  f"{args.rounds} interleaved rounds", file=sys.stderr, flush=True)
            measure_latency(gen, direct, proxies, stream, args)
        print(f"· throughput at concurrency {args.concurrency}: {args.rounds} interleaved rounds",
              file=sys.stderr, flush=True)
        measure_throughput(gen, live, args)
    finally:
        mux_svc = next((t.service for t in targets if t.key.startswith("expertmux") and t.service), None)
        services.stop_all()  # expertmux flushes its ledger on shutdown
        if mux_svc is not None:
            with contextlib.suppress(sqlite3.Error):
                ledger_rows = count_ledger_rows(work / "expertmux-data" / "expertmux.db")
        signal.signal(signal.SIGTERM, old_term)
        if not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and temp files kept in {work}", file=sys.stderr)

    doc = {
        "benchmark": "proxy_overhead",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_generator": f"{gen.kind} ({gen.version})",
            "pinning": ({"proxies": sorted(proxy_cpus), "upstream_and_load_generator": sorted(aux_cpus)}
                        if proxy_cpus else "none"),
            "loadavg_before": loadavg_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"latency_requests_min": args.latency_requests, "warmup_s": args.warmup_s, "rounds": args.rounds,
                     "concurrency": args.concurrency, "duration_s": args.duration,
                     "max_error_rate": MAX_ERROR_RATE, "proxy_log_level": args.proxy_log_level,
                     "request_body": json.loads(Target("x", "x", "", "MODEL").body(False)),
                     "auth": args.auth,
                     "litellm_proxy": "litellm --config CFG --num_workers 1 (uvicorn + uvloop), "
                                      + ("master key, " if args.auth == "on" else "no key, ")
                                      + "no database, no callbacks, LITELLM_LOG=" + args.proxy_log_level.upper()},
        "targets": {t.key: {"label": t.label, "model": t.model, "available": t.available, "note": t.note,
                            "ledger": t.ledger, "startup_s": t.startup_s, **t.results} for t in targets},
        "ledger_rows": ledger_rows,
        "requests_completed": dict(gen.sent),
    }
    doc["ratios"] = summarize(targets)
    r = doc["ratios"].get("expertmux/litellm", {})
    doc["targets_met"] = {
        "added_p50_le_half_litellm": (r.get("added_p50_ms_nonstream") or 99) <= TARGET_P50_RATIO if r else None,
        "sustained_rps_ge_twice_litellm": (r.get("max_sustained_rps") or 0) >= TARGET_RPS_RATIO if r else None,
    }
    return doc


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadgen"]:
        _loadgen_main(argv[1])
        return
    args = parse_args(argv)
    if args.render:
        doc = json.loads(args.render.read_text())
    else:
        try:
            doc = run(args)
        except KeyboardInterrupt:
            print("interrupted; every service was stopped", file=sys.stderr)
            raise SystemExit(130) from None
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"wrote {args.json}", file=sys.stderr)
    print_report(doc)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown_report(doc))
        print(f"wrote {args.markdown}", file=sys.stderr)


if __name__ == "__main__":
    main()
