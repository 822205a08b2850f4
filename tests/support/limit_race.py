"""Concurrent requests against one limited key, and what they really cost.

Used by the budget tests (SQLite in-process, PostgreSQL across ``expertmux serve`` processes) and
by ``benchmarks/access_races.py``, which prints the table in docs/reliability.md. The *real*
spend is read from the ledger rows (what the upstream billed), not from the key's counters, so a
counter that under-books cannot hide an overspend.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from router.ledger.models import KeyUsageRow, RequestRow
from tests.support.servers import free_port

LIMITS = {"day": "budget_usd_day", "month": "budget_usd_month", "tpm": "tpm_limit"}
WINDOW = {"day": "day", "month": "month", "tpm": "minute"}


def chat_body(max_tokens: int = 4) -> dict:
    return {"model": "cheap", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}


async def fire(urls: list[str], secret: str, n: int, body: dict) -> list[int]:
    """``n`` requests at once with one key, spread over ``urls``; status codes (0 = no answer)."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=2.0)  # < the server's 5 s
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        async def one(i: int) -> int:
            try:
                r = await http.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {secret}"})
            except httpx.HTTPError:
                return 0
            return r.status_code
        return list(await asyncio.gather(*(one(i) for i in range(n))))


@dataclass
class RaceResult:
    """What one race did; ``overspend`` is in USD for budgets, in tokens for ``tpm``."""

    kind: str
    sent: int
    answered: int
    refused: int
    failures: int  # neither 200 nor 429: errors, timeouts, dropped connections
    rows: int
    limit: float
    used: float  # real spend (USD) or tokens, from the ledger
    booked: float  # what the key's counters booked
    reserved_left: float  # reservations never settled (must be 0)
    overspend: float  # real use beyond the limit in the fullest window (never negative)
    max_one: float  # the dearest single request, real

    @property
    def within_one_request(self) -> bool:
        return self.overspend <= self.max_one + 1e-12

    def as_dict(self) -> dict:
        return {**asdict(self), "within_one_request": self.within_one_request}


def measure(engine: Engine, *, key_id: str, kind: str, limit: float, statuses: list[int]) -> RaceResult:
    """Read back the ledger and the key's counters after a race (the writers flushed)."""
    window = WINDOW[kind]
    with Session(engine) as s:
        usage = s.scalars(select(KeyUsageRow).where(KeyUsageRow.key_id == key_id, KeyUsageRow.window == window)).all()
        rows = s.scalar(select(func.count()).select_from(RequestRow).where(RequestRow.api_key_id == key_id)) or 0
        mine = RequestRow.api_key_id == key_id
        if kind == "tpm":
            used = s.scalar(select(func.sum(RequestRow.prompt_tokens + RequestRow.completion_tokens)).where(mine)) or 0
            max_one = s.scalar(select(func.max(RequestRow.prompt_tokens + RequestRow.completion_tokens)).where(mine)) or 0
            per_window = [u.tokens for u in usage]
            reserved_left = sum(u.reserved_tokens for u in usage)
        else:
            used = s.scalar(select(func.sum(RequestRow.cost_usd)).where(mine)) or 0.0
            max_one = s.scalar(select(func.max(RequestRow.cost_usd)).where(mine)) or 0.0
            per_window = [u.spent_usd for u in usage]
            reserved_left = sum(u.reserved_usd for u in usage)
    booked = sum(per_window)
    # Real use the counters did not book is charged to the fullest window: the worst case.
    fullest = max(per_window, default=0) + max(0.0, used - booked)
    return RaceResult(kind=kind, sent=len(statuses), answered=statuses.count(200), refused=statuses.count(429),
                      failures=sum(1 for c in statuses if c not in (200, 429)), rows=rows, limit=limit, used=float(used),
                      booked=float(booked), reserved_left=float(reserved_left), overspend=max(0.0, fullest - limit),
                      max_one=float(max_one))


def measure_settled(engine: Engine, *, timeout_s: float = 30, **kw) -> RaceResult:
    """``measure`` once every request has its row (replicas write theirs in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = measure(engine, **kw)
        if result.rows >= result.sent or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def create_key(admin_url: str, admin_token: str, *, kind: str, limit: float) -> tuple[str, str]:
    """(key id, secret) of a fresh key limited by ``kind``."""
    r = httpx.post(f"{admin_url}/admin/keys", headers={"authorization": f"Bearer {admin_token}"},
                   json={"name": f"race-{kind}", LIMITS[kind]: limit}, timeout=30)
    r.raise_for_status()
    return r.json()["id"], r.json()["key"]


@contextmanager
def replicas(n: int, *, config: Path, database_url: str, data_root: Path, env: dict[str, str] | None = None):
    """``n`` ``expertmux serve`` processes sharing one ledger database; yields their base URLs.

    Stopped with SIGTERM (each drains its ledger queue), so every row is written when this exits.
    """
    base = {**os.environ, "EXPERTMUX_CONFIG": str(config), "EXPERTMUX_DATABASE_URL": database_url,
            "EXPERTMUX_REQUIRE_API_KEYS": "true", "EXPERTMUX_KEY_CACHE_TTL_S": "0", "EXPERTMUX_AUTOSTART_EXPERTS": "false",
            "EXPERTMUX_LOG_LEVEL": "warning", **(env or {})}
    ports = [free_port() for _ in range(n)]
    procs = []
    try:
        for i, port in enumerate(ports):
            data_dir = data_root / f"replica{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            log = (data_dir / "serve.log").open("wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port)], stdout=log,
                                          stderr=subprocess.STDOUT, env={**base, "EXPERTMUX_DATA_DIR": str(data_dir)}))
            if i == 0:  # the first one migrates the database; the others start once it is done
                _wait_up(procs[0], port, data_dir)
        for i, (proc, port) in enumerate(zip(procs, ports)):
            _wait_up(proc, port, data_root / f"replica{i}")
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_up(proc: subprocess.Popen, port: int, data_dir: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"expertmux serve exited:\n{(data_dir / 'serve.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"expertmux serve on port {port} did not start")
