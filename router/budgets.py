"""Per-key rate limits and budgets, enforced atomically in the ledger database.

Before a request is sent to an expert its maximum possible cost (and token count) is *reserved*
with one conditional UPDATE per window — ``… WHERE spent + reserved + :cost <= :budget`` — which
the database applies atomically, so concurrent requests on any number of replicas cannot
overshoot. When the request ends, the reservation is *settled* (released and replaced by the
actual cost) in the same transaction that writes its ledger row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from router.errors import BudgetExceededError, RateLimitError
from router.keys import ApiKey
from router.ledger.models import KeyUsageRow


def window_starts(now: datetime) -> dict[str, datetime]:
    return {
        "minute": now.replace(second=0, microsecond=0),
        "day": now.replace(hour=0, minute=0, second=0, microsecond=0),
        "month": now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
    }


@dataclass(slots=True)
class Reservation:
    key_id: str
    windows: list[tuple[str, datetime]] = field(default_factory=list)
    usd: float = 0.0
    tokens: int = 0

    def settlement(self, *, cost_usd: float, tokens: int) -> dict[str, Any]:
        """What the ledger writer applies together with the request row."""
        return {"key_id": self.key_id, "windows": [[w, s.isoformat()] for w, s in self.windows],
                "reserved_usd": self.usd, "reserved_tokens": self.tokens, "cost_usd": cost_usd, "tokens": tokens}


def _insert_ignore(conn: Connection):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


class BudgetGuard:
    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.clock = clock

    def reserve(self, key: ApiKey, *, max_cost_usd: float, max_tokens: int) -> Reservation | None:
        """Reserve a request's maximum cost/tokens in every limited window, or raise 429."""
        if not key.limited:
            return None
        starts = window_starts(self.clock())
        res = Reservation(key_id=key.id, usd=max_cost_usd, tokens=max_tokens)
        with self.engine.begin() as conn:
            insert = _insert_ignore(conn)
            for window in self._windows(key):
                start = starts[window]
                conn.execute(insert(KeyUsageRow).values(key_id=key.id, window=window, window_start=start, requests=0, tokens=0,
                                                        reserved_tokens=0, spent_usd=0.0, reserved_usd=0.0).on_conflict_do_nothing())
                where, values = self._condition(key, window, max_cost_usd, max_tokens)
                stmt = (update(KeyUsageRow)
                        .where(KeyUsageRow.key_id == key.id, KeyUsageRow.window == window, KeyUsageRow.window_start == start, *where)
                        .values(**values))
                if conn.execute(stmt).rowcount != 1:
                    usage = conn.execute(select(KeyUsageRow).where(KeyUsageRow.key_id == key.id, KeyUsageRow.window == window,
                                                                   KeyUsageRow.window_start == start)).one()
                    raise self._refusal(key, window, usage, max_cost_usd, max_tokens)  # rolls the transaction back
                res.windows.append((window, start))
        return res

    @staticmethod
    def _windows(key: ApiKey) -> list[str]:
        out = []
        if key.rpm_limit is not None or key.tpm_limit is not None:
            out.append("minute")
        if key.budget_usd_day is not None:
            out.append("day")
        if key.budget_usd_month is not None:
            out.append("month")
        return out

    @staticmethod
    def _condition(key: ApiKey, window: str, usd: float, tokens: int):
        u = KeyUsageRow
        if window == "minute":
            where = []
            if key.rpm_limit is not None:
                where.append(u.requests + 1 <= key.rpm_limit)
            if key.tpm_limit is not None:
                where.append(u.tokens + u.reserved_tokens + tokens <= key.tpm_limit)
            return where, {"requests": u.requests + 1, "reserved_tokens": u.reserved_tokens + tokens}
        budget = key.budget_usd_day if window == "day" else key.budget_usd_month
        return [u.spent_usd + u.reserved_usd + usd <= budget], {"reserved_usd": u.reserved_usd + usd, "requests": u.requests + 1}

    @staticmethod
    def _refusal(key: ApiKey, window: str, usage, usd: float, tokens: int) -> Exception:
        if window == "minute":
            if key.rpm_limit is not None and usage.requests + 1 > key.rpm_limit:
                return RateLimitError(f"API key {key.name!r} is limited to {key.rpm_limit} requests per minute; retry in the next minute")
            return RateLimitError(f"API key {key.name!r} is limited to {key.tpm_limit} tokens per minute "
                                  f"({usage.tokens} used, {usage.reserved_tokens} in flight, this request may use {tokens})")
        budget = key.budget_usd_day if window == "day" else key.budget_usd_month
        period = "daily" if window == "day" else "monthly"
        return BudgetExceededError(f"API key {key.name!r} would exceed its {period} budget of ${budget:g}: "
                                   f"${usage.spent_usd:.6f} spent, ${usage.reserved_usd:.6f} reserved by requests in flight, "
                                   f"this request may cost up to ${usd:.6f}")


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
