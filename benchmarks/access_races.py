"""Access and money under attack: the table in docs/reliability.md, measured against `expertmux serve`.

Every row is a run against real `expertmux serve` processes (fake upstreams on loopback), read
back from the ledger afterwards:

- malformed requests (bad JSON, schema violations, junk tools, unknown fields) to an expert whose
  upstream answers 500 to anything: every one must get a 4xx, none may reach the upstream;
- 10,000 requests with unique model names: ``/metrics`` must keep its size;
- upstream failures of every kind, against experts configured with every URL shape: no error
  body may contain a configured address or the upstream's secret;
- budget and tokens-per-minute races: 100 and 500 requests at once with one key, on SQLite (one
  process) and on PostgreSQL (three processes sharing it), against an upstream that bills
  SmolLM2's chat template. Real spend beyond the limit must stay within one request's cost.

"failures" counts outcomes that break the row's rule: a 5xx or no answer for bad input and
races, a non-404 for unknown models, a leaking body for upstream failures.

    python -m benchmarks.access_races --markdown var/bench/access_races.md --json var/bench/access_races.json
    python -m benchmarks.access_races --quick      # 100 at once only, no PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from benchmarks.output import write_json, write_text
from router.ledger.db import make_engine
from router.ledger.models import RequestRow
from tests.support import billing_upstream, fake_openai
from tests.support.limit_race import chat_body, create_key, fire, measure_settled, replicas
from tests.support.servers import free_port, serve_in_thread

ADMIN = "bench-admin"
HI = [{"role": "user", "content": "hi"}]
LIMITS = {"day": ("daily budget", 0.0004), "month": ("monthly budget", 0.0004), "tpm": ("tokens per minute", 400)}


def _expert(name: str, url: str, **extra) -> dict:
    return {"name": name, "backend": "remote", "model": "fake-model", "endpoint": f"{url}/v1", "input_usd_per_mtok": 1.0,
            "output_usd_per_mtok": 2.0, "timeout_s": 10, **extra}


def _config(root: Path, experts: list[dict]) -> Path:
    path = root / f"config-{len(list(root.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump({"experts": experts, "policy": {"active": "strongest", "lambda": 0}}))
    return path


def _rows(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        with Session(engine) as s:
            return s.scalar(select(func.count()).select_from(RequestRow)) or 0
    finally:
        engine.dispose()


def malformed(root: Path) -> dict:
    from tests.functional.test_bad_input import BAD_INPUTS
    from tests.functional.test_request_validation import JUNK

    picky = fake_openai.Behaviour(fail_status=500)  # a server that answers 500 to what it does not understand
    db = f"sqlite:///{root / 'malformed.db'}"
    with serve_in_thread(fake_openai.make_app(picky)) as up, serve_in_thread(fake_openai.make_app(fake_openai.Behaviour())) as ok:
        config = _config(root, [_expert("cheap", up), _expert("strong", ok)])
        env = {"EXPERTMUX_REQUIRE_API_KEYS": "false", "EXPERTMUX_MAX_PROMPT_CHARS": "4000", "EXPERTMUX_MAX_BODY_BYTES": "20000"}
        with replicas(1, config=config, database_url=db, data_root=root / "malformed", env=env) as (url,), \
                httpx.Client(base_url=url, timeout=30) as http:
            statuses = []
            for _, body, *_ in BAD_INPUTS:
                kw = {"content": body} if isinstance(body, bytes) else {"json": body}
                statuses.append(http.post("/v1/chat/completions", headers={"content-type": "application/json"}, **kw).status_code)
            for _, fields, _ in JUNK:
                statuses.append(http.post("/v1/chat/completions", json={"model": "cheap", "messages": HI, **fields}).status_code)
            breaker = http.get("/healthz/details").json()["experts"]["cheap"]["breaker"]
    bad = sum(1 for s in statuses if not 400 <= s < 500)
    return {"tried": f"malformed requests ({len(BAD_INPUTS)} protocol cases + {len(JUNK)} schema cases: junk tools, "
                     "unknown fields, bad content parts…)", "sent": len(statuses), "rows": _rows(db), "failures": bad,
            "overspend": "—", "result": f"all 4xx; the upstream received {len(picky.calls)}; its breaker {breaker}"}


async def _unique_models(url: str, n: int) -> list[int]:
    sem = asyncio.Semaphore(32)
    # Idle connections are dropped before the server's 5 s keep-alive timeout closes them under us.
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(keepalive_expiry=2.0)) as http:
        async def one(i: int) -> int:
            async with sem:
                model = f"tenant-{i}-model" if i % 3 else f"expertmux/tenant-{i}"
                try:
                    return (await http.post("/v1/chat/completions", json={"model": model, "messages": HI})).status_code
                except httpx.HTTPError:
                    return 0
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def metrics_cardinality(root: Path, n: int) -> dict:
    db = f"sqlite:///{root / 'metrics.db'}"
    with serve_in_thread(fake_openai.make_app(fake_openai.Behaviour())) as up:
        config = _config(root, [_expert("cheap", up), _expert("strong", up)])
        with replicas(1, config=config, database_url=db, data_root=root / "metrics",
                      env={"EXPERTMUX_REQUIRE_API_KEYS": "false"}) as (url,):
            for model in ("cheap", "strong", "expertmux/auto", "nope"):
                httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": HI}, timeout=30)
            before = len(httpx.get(f"{url}/metrics", timeout=30).content)
            statuses = asyncio.run(_unique_models(url, n))
            after = len(httpx.get(f"{url}/metrics", timeout=30).content)
    return {"tried": f"{n:,} requests with unique model names", "sent": n, "rows": _rows(db) - 4,
            "failures": sum(1 for s in statuses if s != 404), "overspend": "—",
            "result": f"/metrics {before:,} → {after:,} bytes ({after / before - 1:+.1%})"}


def upstream_failures(root: Path) -> dict:
    from tests.functional.test_error_leaks import MODES, SECRET, _needles, leaky_upstream

    db = f"sqlite:///{root / 'leaks.db'}"
    with ExitStack() as stack:
        experts, urls = [], []
        for mode in MODES:
            base = stack.enter_context(serve_in_thread(leaky_upstream(mode)))
            port = base.rsplit(":", 1)[1]
            base = {"500": f"http://localhost:{port}", "401": f"http://user:{SECRET}@127.0.0.1:{port}"}.get(mode, base)
            experts.append(_expert(f"e-{mode}", base, timeout_s=1 if mode == "timeout" else 10))
            urls.append(base)
        dead = f"http://127.0.0.1:{free_port()}"
        experts += [_expert("e-refused", dead), _expert("e-refused-litellm", dead, transport="litellm")]
        urls.append(dead)
        config = _config(root, experts)
        env = {"EXPERTMUX_REQUIRE_API_KEYS": "false", "EXPERTMUX_MAX_ATTEMPTS": "20", "EXPERTMUX_BREAKER_FAILURES": "1000"}
        with replicas(1, config=config, database_url=db, data_root=root / "leaks", env=env) as (url,), \
                httpx.Client(base_url=url, timeout=30) as http:
            bodies = []
            for model in [e["name"] for e in experts] + ["expertmux/auto"]:
                bodies.append(http.post("/v1/chat/completions", json={"model": model, "messages": HI}).text)
                with http.stream("POST", "/v1/chat/completions", json={"model": model, "messages": HI, "stream": True}) as s:
                    bodies.append(s.read().decode())
    needles = _needles(urls)
    leaking = sum(1 for b in bodies if any(n in b for n in needles))
    return {"tried": f"upstream failures ({len(MODES) + 2} kinds × JSON and SSE; URLs with ports, localhost, credentials)",
            "sent": len(bodies), "rows": _rows(db), "failures": leaking, "overspend": "—",
            "result": f"{leaking} of {len(bodies)} error bodies contain a configured address or the upstream secret"}


def budget_races(root: Path, *, label: str, db_url: str, processes: int, sizes: list[int]) -> list[dict]:
    out = []
    with serve_in_thread(billing_upstream.make_app(billing_upstream.ChatTokenizer())) as up:
        config = _config(root, [_expert("cheap", up)])
        env = {"EXPERTMUX_ADMIN_TOKEN": ADMIN, "EXPERTMUX_KEY_HASH_SECRET": "bench-shared-secret"}
        with replicas(processes, config=config, database_url=db_url, data_root=root / f"race-{label}", env=env) as urls:
            engine = make_engine(db_url)
            for kind, (what, limit) in LIMITS.items():
                for n in sizes:
                    key_id, secret = create_key(urls[0], ADMIN, kind=kind, limit=limit)
                    statuses = asyncio.run(fire(urls, secret, n, chat_body(max_tokens=4)))
                    r = measure_settled(engine, key_id=key_id, kind=kind, limit=limit, statuses=statuses)
                    unit = (lambda v: f"{v:g} tokens") if kind == "tpm" else (lambda v: f"${v:.6f}")
                    out.append({"tried": f"{what} {limit:g}, {n} at once, {label}", "sent": r.sent, "rows": r.rows,
                                "failures": r.failures, "overspend": f"{unit(r.overspend)} (one request: {unit(r.max_one)})",
                                "result": f"{r.answered} answered, {r.refused} refused (429); real use {unit(r.used)}",
                                "race": r.as_dict()})
            engine.dispose()
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| input or race tried | requests sent | rows recorded | failures | overspend | result |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['tried']} | {r['sent']:,} | {r['rows']:,} | {r['failures']} | {r['overspend']} | {r['result']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 at once only, no PostgreSQL, 1,000 model names")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    sizes = [100] if args.quick else [100, 500]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="access-races-") as tmp:
        root = Path(tmp)
        rows.append(malformed(root))
        rows.append(upstream_failures(root))
        rows.append(metrics_cardinality(root, 1_000 if args.quick else 10_000))
        rows += budget_races(root, label="SQLite, 1 process", db_url=f"sqlite:///{root / 'races.db'}", processes=1, sizes=sizes)
        if not (args.quick or args.skip_postgres):
            from tests.support.postgres import postgres_cluster

            with postgres_cluster() as pg_url:
                rows += budget_races(root, label="PostgreSQL, 3 processes", db_url=pg_url, processes=3, sizes=sizes)
    table = markdown(rows)
    print(table)
    write_text(args.markdown, table)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
