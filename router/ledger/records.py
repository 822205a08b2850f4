"""The unit the service hands to the ledger: one request row and its attempt rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class LedgerRecord:
    """Written together, in one transaction."""

    request: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    settlement: dict[str, Any] | None = None  # a budget reservation to settle (router/access/budgets.py)
