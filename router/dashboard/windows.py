"""The ledger slices the dashboard reads: a time window, the ledger browser's filter and its
keyset cursor on (created_at, id). Datetimes are aware UTC throughout (SQLite hands back naive
UTC values)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_

from core.errors import InvalidRequestError
from router.ledger.models import RequestRow


def utc(dt: datetime | None) -> datetime | None:
    """Aware UTC datetimes in, aware UTC out (SQLite hands back naive UTC values)."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def iso(dt: datetime | None) -> str | None:
    return utc(dt).isoformat() if dt is not None else None


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    @classmethod
    def last(cls, hours: float, *, now: datetime | None = None) -> Window:
        until = utc(now) or datetime.now(UTC)
        return cls(until - timedelta(hours=hours), until)

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None, *, default_hours: float = 24) -> Window:
        until = utc(until) or datetime.now(UTC)
        since = utc(since) or until - timedelta(hours=default_hours)
        if since >= until:
            raise InvalidRequestError("'since' must be before 'until'", param="since")
        return cls(since, until)

    def where(self, column) -> Any:
        return and_(column >= self.since, column < self.until)


@dataclass(frozen=True)
class LedgerFilter:
    since: datetime | None = None
    until: datetime | None = None
    expert: str | None = None
    policy: str | None = None
    status: str | None = None
    api_key_id: str | None = None

    def clauses(self) -> list[Any]:
        r = RequestRow
        out = []
        if self.since is not None:
            out.append(r.created_at >= utc(self.since))
        if self.until is not None:
            out.append(r.created_at < utc(self.until))
        for column, value in ((r.expert, self.expert), (r.policy, self.policy), (r.status, self.status),
                              (r.api_key_id, self.api_key_id)):
            if value:
                out.append(column == value)
        return out


def encode_cursor(created_at: datetime, request_id: str) -> str:
    return f"{utc(created_at).isoformat()}~{request_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        when, request_id = cursor.rsplit("~", 1)
        return utc(datetime.fromisoformat(when)), request_id
    except ValueError:
        raise InvalidRequestError("malformed pagination cursor; use the 'next_cursor' of the previous page",
                                  param="cursor") from None
