"""A fresh checkout's first `make run`, timed: how long until the proxy answers, and until it
serves a policy learned on its own experts' calibration, with traffic flowing through the swap.

A clean clone of the repository (``--checkout``; made with ``git clone`` when it does not exist)
gets ``make run`` exactly as the README says: the virtualenv, the install, the migration, the
local experts and the proxy, whose background job then calibrates the experts, trains a policy,
gates it against the prior and swaps it in. One client meanwhile asks ``expertmux/auto`` a short
question every ``--interval`` seconds; each answer's ``x-expertmux-policy`` header shows which
policy routed it, and every failed request is counted.

    python -m benchmarks.first_run --checkout /tmp/expertmux-fresh --json var/bench/first_run.json \
        --markdown var/bench/first_run.md
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from benchmarks.load_faults import free_port
from benchmarks.output import write_json, write_text

REPO = Path(__file__).resolve().parent.parent
QUESTION = [{"role": "user", "content": "Is 14 even or odd? Answer with one word."}]
DONE = {"serving", "refused", "failed"}


@dataclass
class FirstRun:
    checkout: str
    up_s: float | None = None  # make run started → the proxy answers /healthz
    stages: dict[str, float] = field(default_factory=dict)  # autolearn stage → first seen (s since make run)
    outcome: str | None = None  # the job's final stage and message
    requests: int = 0
    failed: int = 0
    by_policy: dict[str, int] = field(default_factory=dict)  # requests answered per routing policy
    first_learned_answer_s: float | None = None
    load_avg: list[float] = field(default_factory=list)


def _traffic(url: str, run: FirstRun, t0: float, stop: threading.Event, interval: float, learned: str) -> None:
    with httpx.Client(timeout=300) as http:
        while not stop.is_set():
            try:
                r = http.post(f"{url}/v1/chat/completions",
                              json={"model": "expertmux/auto", "messages": QUESTION, "max_tokens": 8})
                ok = r.status_code == 200
                policy = r.headers.get("x-expertmux-policy", "?")
            except httpx.HTTPError:
                ok, policy = False, "?"
            run.requests += 1
            if not ok:
                run.failed += 1
            else:
                run.by_policy[policy] = run.by_policy.get(policy, 0) + 1
                if policy == learned and run.first_learned_answer_s is None:
                    run.first_learned_answer_s = round(time.monotonic() - t0, 1)
            stop.wait(interval)


def measure(checkout: Path, *, interval: float, timeout_s: float, learned: str = "knn") -> FirstRun:
    if not checkout.exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(checkout)], check=True)
    port, token = free_port(), "first-run-admin"
    env = {**os.environ, "EXPERTMUX_PORT": str(port), "EXPERTMUX_ADMIN_TOKEN": token}
    run, url = FirstRun(str(checkout)), f"http://127.0.0.1:{port}"
    log = (checkout / "first-run.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(["make", "run"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    stop = threading.Event()
    client = None
    try:
        while time.monotonic() - t0 < timeout_s and proc.poll() is None:
            elapsed = round(time.monotonic() - t0, 1)
            try:
                if run.up_s is None and httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    run.up_s = elapsed
                    client = threading.Thread(target=_traffic, args=(url, run, t0, stop, interval, learned))
                    client.start()
                if run.up_s is not None:
                    job = httpx.get(f"{url}/admin/api/autolearn", headers={"authorization": f"Bearer {token}"},
                                    timeout=30).json()["job"]
                    run.stages.setdefault(job["stage"], elapsed)
                    if job["stage"] in DONE:
                        run.outcome = f"{job['stage']}: {job['message']}"
                        if run.first_learned_answer_s is not None or job["stage"] != "serving":
                            break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            run.load_avg.append(round(os.getloadavg()[0], 2))
            time.sleep(5)
    finally:
        stop.set()
        if client is not None:
            client.join(320)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(120)
    return run


def render(run: FirstRun) -> str:
    loads = run.load_avg or [0.0]
    lines = [f"Fresh checkout `{run.checkout}`, `make run`; load average (1 min) {min(loads)}–{max(loads)}.", "",
             "| moment | seconds after `make run` |", "|---|---:|",
             f"| the proxy answers `/healthz` | {run.up_s} |"]
    lines += [f"| autolearn stage `{stage}` first seen | {t} |" for stage, t in run.stages.items()]
    lines += [f"| first answer routed by the learned policy | {run.first_learned_answer_s} |", "",
              f"Outcome: {run.outcome}", "",
              f"Traffic: {run.requests} requests, {run.failed} failed; answered per policy: {run.by_policy}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", type=Path, required=True, help="a clean clone (made when missing)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between the client's requests")
    ap.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    run = measure(args.checkout, interval=args.interval, timeout_s=args.timeout)
    write_json(args.json, asdict(run))
    write_text(args.markdown, render(run))
    print(render(run))


if __name__ == "__main__":
    main()
