"""Dashboard queries and training-set build on a large ledger, SQLite and PostgreSQL.

Seeds ``--rows`` synthetic requests (default 1,000,000, over 30 days; attempts and feedback in
proportion, see ``benchmarks/ledger_seed.py``) into a migrated ledger, then times every query
the dashboard makes (``router.dashboard.queries``) — first on the schema of migration 0004 (the peer:
the same figures read from the raw rows, without the dashboard's indexes), then after
migrations 0005 (indexes) and 0006 (rollups, backfilled from the seeded rows) — and the build
of a training set from the ledger (``router.learning.bandit.load_logged``). PostgreSQL runs on a
throw-away cluster (``tests/support/postgres.py``). Prints a table with p50/p95 per query and
the ratio of the 0004 schema's p95 to the head schema's.

    python -m benchmarks.ledger_scale                       # 1M rows, SQLite and PostgreSQL
    python -m benchmarks.ledger_scale --rows 100000 --backend sqlite --json var/bench/ledger_scale.json
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text

from benchmarks.ledger_seed import EXPERTS, seed
from benchmarks.output import write_json, write_text
from router.dashboard.queries import DashboardQueries
from router.dashboard.windows import LedgerFilter, Window, encode_cursor
from router.ledger import migrate
from router.ledger.db import make_engine

BEFORE = "0004_policy_registry"
TARGET_MS = 200.0
console = Console(width=200)


def queries(q: DashboardQueries, end: datetime, days: float, sample_ids: list[str], rng: random.Random) -> dict[str, Callable]:
    """Every dashboard query, as the page makes it; random cursors/ids vary between repeats.
    Nothing is cached between calls: a refresh costs what a first load costs."""
    day, week, month = (Window(end - timedelta(days=d), end) for d in (1, 7, min(30.0, days)))

    def cursor() -> str:  # somewhere in the 30 days: page N of the browser costs what page 1 costs
        when = end - timedelta(seconds=rng.random() * days * 86400)
        return encode_cursor(when, "f" * 32)

    return {
        "overview 24 h: traffic, cost, latency, per expert": lambda: q.overview(day, buckets=48),
        "overview 24 h: feedback quality per policy/expert": lambda: q.quality(day),
        "overview 7 d: traffic, cost, latency, per expert": lambda: q.overview(week, buckets=48),
        "overview 7 d: feedback quality per policy/expert": lambda: q.quality(week),
        "overview 30 d: traffic, cost, latency, per expert": lambda: q.overview(month, buckets=48),
        "overview 30 d: feedback quality per policy/expert": lambda: q.quality(month),
        "overview 7 d, 50 buckets (edges cut slots)": lambda: q.overview(week, buckets=50),
        "ledger: newest page (50)": lambda: q.page(LedgerFilter(), limit=50),
        "ledger: page at a random cursor": lambda: q.page(LedgerFilter(), limit=50, cursor=cursor()),
        "ledger: expert filter, random cursor": lambda: q.page(LedgerFilter(expert=rng.choice(EXPERTS)), limit=50, cursor=cursor()),
        "ledger: policy + status=error": lambda: q.page(LedgerFilter(policy="knn", status="error"), limit=50),
        "ledger: status=client_disconnected (0.5 %), random cursor": lambda: q.page(
            LedgerFilter(status="client_disconnected"), limit=50, cursor=cursor()),
        "ledger: API key, last 7 d": lambda: q.page(LedgerFilter(api_key_id=f"key{rng.randrange(20):02d}",
                                                                 since=end - timedelta(days=7)), limit=50),
        "ledger: request detail": lambda: q.request(rng.choice(sample_ids)),
    }


def timed(fn: Callable, repeats: int) -> tuple[float, float]:
    fn()  # warm: the first call pays plan and cache misses; the dashboard refreshes
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def analyze(engine) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
            conn.commit()


def training_set(engine, end: datetime) -> dict[str, float]:
    from router.learning.bandit import load_logged

    out = {}
    for label, since in (("all 30 d", None), ("last 7 d", end - timedelta(days=7))):
        t0 = time.perf_counter()
        try:
            logged = load_logged(engine, since=since)
        except Exception as exc:  # reported in the table, the query timings still count
            out[label] = {"error": str(exc).splitlines()[0][:200]}
            continue
        out[label] = {"seconds": time.perf_counter() - t0, "rows": len(logged)}
    return out


def run_backend(name: str, url: str, *, rows: int, days: float, repeats: int, base_repeats: int) -> dict:
    migrate.upgrade(url, BEFORE)
    engine = make_engine(url)
    end = datetime.now(UTC).replace(microsecond=0)
    with Progress(TextColumn(f"[bold]{name}[/] seeding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("seed", total=rows)
        t0 = time.perf_counter()
        seeded = seed(engine, rows=rows, days=days, end=end, progress=lambda n: progress.update(task, completed=n))
        seed_s = time.perf_counter() - t0
    analyze(engine)
    rng = random.Random(0)
    q = DashboardQueries(engine, use_rollups=False)  # the 0004 schema has no rollups: every figure from raw rows
    result = {"backend": name, "rows": seeded.requests, "attempts": seeded.attempts, "feedback": seeded.feedback,
              "seed_s": seed_s, "queries": {}}
    console.print(f"{name}: {seeded.requests:,} requests, {seeded.attempts:,} attempts, {seeded.feedback:,} feedback "
                  f"seeded in {seed_s:.0f} s; timing on the 0004 schema")
    for label, fn in queries(q, end, days, seeded.sample_ids, rng).items():
        result["queries"][label] = {"before": timed(fn, base_repeats)}
    t0 = time.perf_counter()
    migrate.upgrade(url, "head")
    result["migrate_s"] = time.perf_counter() - t0
    analyze(engine)
    with engine.connect() as conn:
        result["rollup_rows"] = ", ".join(f"{conn.execute(text(f'SELECT count(*) FROM {t}')).scalar():,} {t}"
                                          for t in ("request_rollups", "latency_rollups", "feedback_rollups"))
    console.print(f"{name}: migration to head in {result['migrate_s']:.1f} s ({result['rollup_rows']}); "
                  "timing with the indexes and rollups")
    q = DashboardQueries(engine)
    for label, fn in queries(q, end, days, seeded.sample_ids, rng).items():
        result["queries"][label]["after"] = timed(fn, repeats)
    result["training"] = training_set(engine, end)
    if engine.dialect.name == "sqlite":
        result["db_mb"] = Path(url.split("///", 1)[1]).stat().st_size / 1e6
    engine.dispose()
    return result


@contextmanager
def backend_url(name: str, workdir: Path):
    if name == "sqlite":
        path = workdir / "ledger_scale.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        from tests.support.postgres import postgres_cluster

        with postgres_cluster() as url:
            yield url


def render(results: list[dict]) -> tuple[Table, str]:
    table = Table(title=f"Dashboard queries on a {results[0]['rows']:,}-request ledger (ms; target p95 < {TARGET_MS:.0f})")
    table.add_column("query")
    md_head = ["query"]
    for r in results:
        b = r["backend"]
        for col in (f"{b} p50", f"{b} p95", f"{b} p95 @0004", f"{b} ratio"):
            table.add_column(col, justify="right")
            md_head.append(col)
    lines = ["| " + " | ".join(md_head) + " |", "|" + "---|" * len(md_head)]
    for label in results[0]["queries"]:
        cells = [label]
        for r in results:
            (p50, p95), (_, b95) = r["queries"][label]["after"], r["queries"][label]["before"]
            flag = "" if p95 < TARGET_MS else " ✗"
            cells += [f"{p50:.1f}", f"{p95:.1f}{flag}", f"{b95:.1f}", f"{b95 / max(p95, 1e-9):.1f}×"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    extra = []
    for r in results:
        t = r["training"]
        extra.append(f"- {r['backend']}: {r['rows']:,} requests, {r['attempts']:,} attempts, {r['feedback']:,} feedback rows "
                     f"(seeded in {r['seed_s']:.0f} s); migrations 0005–0006 (indexes, rollup backfill) {r['migrate_s']:.1f} s "
                     f"({r.get('rollup_rows', '?')}); training set "
                     + "; ".join(f"{k}: {v['rows']:,} rows in {v['seconds']:.2f} s" if "rows" in v else f"{k}: failed ({v['error']})"
                                 for k, v in t.items())
                     + (f"; database file {r['db_mb']:.0f} MB" if "db_mb" in r else ""))
    return table, "\n".join(lines + [""] + extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per query with the indexes")
    ap.add_argument("--base-repeats", type=int, default=5, help="timed runs per query on the 0004 schema")
    ap.add_argument("--workdir", type=Path, default=None, help="where the SQLite file goes (default: a temp dir)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for name in backends:
            with backend_url(name, Path(tmp)) as url:
                results.append(run_backend(name, url, rows=args.rows, days=args.days, repeats=args.repeats,
                                           base_repeats=args.base_repeats))
            write_json(args.json, results)  # kept after each backend: a later failure loses nothing
    table, md = render(results)
    console.print(table)
    console.print(md.split("\n\n", 1)[1] if "\n\n" in md else "")
    write_json(args.json, results)
    write_text(args.markdown, md + "\n")


if __name__ == "__main__":
    main()
