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
import shutil
import signal
import sqlite3
import sys
import tempfile
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.proxy_loadgen import LoadGen, _loadgen_main
from benchmarks.proxy_report import (
    TARGET_P50_RATIO,
    TARGET_RPS_RATIO,
    markdown_report,
    merge_hists,
    percentile,
    print_report,
    summarize,
)
from benchmarks.proxy_services import (
    REPO,
    Services,
    Target,
    check_target,
    cpu_layout,
    quiesce,
    start_expertmux,
    start_litellm,
    start_upstream,
    wait_ready,
)
from core.settings import Settings

MAX_ERROR_RATE = 0.01


# --------------------------------------------------------------------------- measuring


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


def loop_lag_buckets(target: Target) -> dict[float, float] | None:
    """expertmux's event-loop lag histogram (cumulative count per upper bound), or None elsewhere."""
    if not target.key.startswith("expertmux"):
        return None
    try:
        with urllib.request.urlopen(target.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    out = {float(s.labels["le"]): s.value  # float("+Inf") is math.inf
           for family in text_string_to_metric_families(text) if family.name == "expertmux_event_loop_lag_seconds"
           for s in family.samples if s.name.endswith("_bucket")}
    return out or None


def lag_summary(deltas: list[dict[float, float]]) -> dict | None:
    """Merge per-run histogram deltas: the share of 50 ms ticks that woke more than 0.1 / 0.5 s late and
    the bucket bound under which 99 % fell (the loop's own tail, outside any one request)."""
    if not deltas:
        return None
    merged = {le: sum(d.get(le, 0.0) for d in deltas) for le in deltas[0]}
    total = merged.get(math.inf, 0.0)
    if not total:
        return None
    p99 = next(le for le in sorted(merged) if merged[le] >= 0.99 * total)
    return {"ticks": int(total), "over_100ms": round(1 - merged.get(0.1, 0.0) / total, 4),
            "over_500ms": round(1 - merged.get(0.5, 0.0) / total, 4), "p99_le_s": None if p99 == math.inf else p99}


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
                lag0 = loop_lag_buckets(t)
                run = gen.run(t, False, c, seconds, histogram=True)
                lag1 = loop_lag_buckets(t)
                if lag0 and lag1:
                    run["loop_lag"] = {le: lag1[le] - lag0.get(le, 0.0) for le in lag1}
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
            hist = merge_hists(rs)  # the tail over every round of the level, not a median of runs
            levels.append({
                "concurrency": c, "requests": requests, "duration_s": round(duration, 3),
                "rps": requests / duration if duration else 0.0,
                "error_rate": errors / attempts if attempts else 1.0,
                "per_run_rps": [round(run["rps"], 1) for run in rs],
                "p50_ms_median_run": sorted(run["p50_ms"] for run in rs)[len(rs) // 2],
                "p50_ms": percentile(hist, 50) / 1000 if hist else None,
                "p99_ms": percentile(hist, 99) / 1000 if hist else None,
                "errors": {k: sum(run["errors"][k] for run in rs) for k in rs[0]["errors"]},
                "cpu_ms_per_request": 1000 * sum(run["cpu_s"] for run in rs) / served if requests else None,
                "loop_lag": lag_summary([run.pop("loop_lag") for run in rs if "loop_lag" in run]),
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
                     # expertmux's server loop: what the environment sets, else the setting's default
                     "expertmux_event_loop": os.environ.get("EXPERTMUX_EVENT_LOOP") or Settings.model_fields["event_loop"].default,
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
