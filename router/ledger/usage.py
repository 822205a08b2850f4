"""Booking a request's real cost against its key's usage counters, inside the ledger writer's
transaction (the reservation itself is taken by ``router.access.budgets``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, update

from router.ledger.models import KeyUsageRow


def apply_settlement(conn: Connection, settlement: dict[str, Any]) -> None:
    """Release a reservation and book the actual cost (inside the ledger writer's transaction)."""
    u = KeyUsageRow
    for window, start in settlement["windows"]:
        start_dt = datetime.fromisoformat(start) if isinstance(start, str) else start
        conn.execute(update(u).where(u.key_id == settlement["key_id"], u.window == window, u.window_start == start_dt).values(
            reserved_usd=u.reserved_usd - settlement["reserved_usd"] if window != "minute" else u.reserved_usd,
            spent_usd=u.spent_usd + settlement["cost_usd"],
            reserved_tokens=u.reserved_tokens - settlement["reserved_tokens"] if window == "minute" else u.reserved_tokens,
            tokens=u.tokens + settlement["tokens"],
        ))
