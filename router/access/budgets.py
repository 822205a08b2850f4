"""Per-key rate limits and budgets, enforced atomically in the ledger database.

Before a request is sent to an expert its maximum possible cost (and token count) is *reserved*
with one conditional UPDATE per window — ``… WHERE spent + reserved + :cost <= :budget`` — which
the database applies atomically, so concurrent requests on any number of replicas cannot
overshoot. When the request ends, the reservation is *settled* (released and replaced by the
actual cost) in the same transaction that writes its ledger row.

The guarantee rests on the reservation being a true maximum (``router.access.estimate``). The
settlement books the real usage capped at what was reserved, so even an upstream that bills
more than it could have (a miscounted template, a server ignoring ``max_tokens``) cannot push
the key past its limit through requests already in flight; the ledger row keeps the real
figure and the overrun is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from core.errors import BudgetExceededError, RateLimitError
from experts.registry import Expert
from router.access.estimate import ReservationEstimator
from router.access.keys import ApiKey
from router.ledger.models import KeyUsageRow

log = logging.getLogger("expertmux.access")


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
        """What the ledger writer applies together with the request row: the real usage, capped
        at the reservation (see the module docstring)."""
        if cost_usd > self.usd * (1 + 1e-9) or tokens > self.tokens:
            log.warning("key %s: a request used $%.8f / %d tokens, more than its reservation of $%.8f / %d tokens; "
                        "booked the reservation (the ledger row has the real figures)", self.key_id, cost_usd, tokens,
                        self.usd, self.tokens)
        return {"key_id": self.key_id, "windows": [[w, s.isoformat()] for w, s in self.windows],
                "reserved_usd": self.usd, "reserved_tokens": self.tokens, "cost_usd": min(cost_usd, self.usd),
                "tokens": min(tokens, self.tokens)}


def _insert_ignore(conn: Connection):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


class BudgetGuard:
    def __init__(self, engine: Engine, *, estimator: ReservationEstimator | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.estimator = estimator or ReservationEstimator()
        self.clock = clock

    def reserve_request(self, key: ApiKey, *, experts: Iterable[Expert], payload: dict[str, Any],
                        max_completion_tokens: int) -> Reservation | None:
        """Reserve what a chat request can cost at most on any of ``experts`` (or raise 429)."""
        if not key.limited:
            return None
        max_cost, max_tokens = self.estimator.bound(experts, payload, max_completion_tokens)
        return self.reserve(key, max_cost_usd=max_cost, max_tokens=max_tokens)

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

    def extend(self, key: ApiKey, reservation: Reservation, *, max_cost_usd: float, max_tokens: int) -> None:
        """Grow a request's reservation in the windows it already holds (a cascade's next step), or
        raise 429 and leave it as it was. The request is not counted again; the settlement releases the total."""
        u = KeyUsageRow
        with self.engine.begin() as conn:
            for window, start in reservation.windows:
                if window == "minute":
                    where = [u.tokens + u.reserved_tokens + max_tokens <= key.tpm_limit] if key.tpm_limit is not None else []
                    values = {"reserved_tokens": u.reserved_tokens + max_tokens}
                else:
                    budget = key.budget_usd_day if window == "day" else key.budget_usd_month
                    where, values = [u.spent_usd + u.reserved_usd + max_cost_usd <= budget], {"reserved_usd": u.reserved_usd + max_cost_usd}
                stmt = (update(u).where(u.key_id == key.id, u.window == window, u.window_start == start, *where).values(**values))
                if conn.execute(stmt).rowcount != 1:  # raising rolls the transaction back
                    if window == "minute":
                        raise RateLimitError(f"API key {key.name!r} is limited to {key.tpm_limit} tokens per minute; "
                                             f"the next step of this request may use {max_tokens}")
                    period = "daily" if window == "day" else "monthly"
                    raise BudgetExceededError(f"API key {key.name!r} would exceed its {period} budget with the next step of "
                                              f"this request (up to ${max_cost_usd:.6f})")
        reservation.usd += max_cost_usd
        reservation.tokens += max_tokens

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
