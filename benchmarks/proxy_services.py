"""Processes of the proxy-overhead benchmark: ports, CPU pinning, the services it starts and the targets it measures.

Starts the fake upstream, expertmux and LiteLLM's proxy as subprocesses (each in its own session,
all stopped on exit), waits until they answer and checks that each one returns the upstream's answer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import fake_upstream

REPO = Path(__file__).resolve().parent.parent
CHAT_PATH = "/v1/chat/completions"
UPSTREAM_MODEL = "fake-model"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in five words."},
]


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
