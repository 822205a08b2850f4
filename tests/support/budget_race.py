"""100 concurrent requests against a nearly exhausted budget, through the real service and ledger."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.ledger.models import KeyUsageRow, RequestRow


async def fire(urls: list[str], secret: str, n: int) -> list[int]:
    """``n`` concurrent requests with one key, spread over ``urls`` (replicas sharing a ledger)."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as http:
        async def one(i: int) -> int:
            r = await http.post(f"{urls[i % len(urls)]}/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                                json={"model": "cheap", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
            return r.status_code
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def budget_race(url: str, app, *, budget: float, n: int = 100) -> dict:
    """Returns what happened for the caller to assert. Spend must never exceed the budget."""
    service = app.state.service
    key, secret = service.keys.create(name="race", budget_usd_day=budget)
    statuses = asyncio.run(fire([url], secret, n))
    assert service.ledger.flush(30)
    with Session(service.ledger.engine) as s:
        usage = s.scalars(select(KeyUsageRow).where(KeyUsageRow.key_id == key.id, KeyUsageRow.window == "day")).one()
        spent_ledger = s.scalar(select(func.sum(RequestRow.cost_usd)).where(RequestRow.api_key_id == key.id)) or 0.0
        rows = s.scalar(select(func.count()).select_from(RequestRow).where(RequestRow.api_key_id == key.id))
    return {"statuses": statuses, "spent": usage.spent_usd, "reserved": usage.reserved_usd, "spent_ledger": spent_ledger,
            "rows": rows}
