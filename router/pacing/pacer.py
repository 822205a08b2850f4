"""Pacing on the request path: λ per key from memory, spend read in the background.

``Pacer.pace(key)`` is O(1) on the event loop: it returns the λ and near-cap flag last computed
for the key (and the global scope). ``Pacer.update`` reads the spend of every scope seen
recently (the key's usage row for the window: spent plus reserved; for the global scope, the
window's ledger rollups) and runs the controller; ``Pacer.run`` calls it every ``update_s`` in
a worker thread. A failed read keeps the last λ.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from core.config import PacingConfig
from core.types import Decision, ExpertInfo
from router.access.budgets import window_starts
from router.access.keys import ApiKey
from router.ledger.models import KeyUsageRow, RequestRollupRow
from router.pacing.controller import PacingController, ScopeState

log = logging.getLogger("expertmux.pacing")

GLOBAL = "global"
FORGET_AFTER_S = 2 * 86400.0  # a key not seen for this long is no longer paced (its state is dropped)


def window_bounds(now: datetime, window: str) -> tuple[datetime, datetime]:
    start = window_starts(now)[window]
    if window == "day":
        end = datetime.fromtimestamp(start.timestamp() + 86400, UTC)
    else:
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


@dataclass(frozen=True, slots=True)
class Pace:
    """What pacing asks of one request."""

    lambda_: float | None  # the paced λ (None: not paced)
    near_cap: bool  # route to the cheapest fitting expert
    scope: str | None  # the scope whose λ won


class SpendSource:
    """Spend so far in a window, from the ledger database (worker threads only)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def key_spend(self, key_id: str, window: str, start: datetime) -> float:
        with self.engine.connect() as conn:
            row = conn.execute(select(KeyUsageRow.spent_usd, KeyUsageRow.reserved_usd).where(
                KeyUsageRow.key_id == key_id, KeyUsageRow.window == window, KeyUsageRow.window_start == start)).one_or_none()
        return 0.0 if row is None else float(row.spent_usd + row.reserved_usd)

    def total_spend(self, start: datetime) -> float:
        with self.engine.connect() as conn:
            value = conn.execute(select(func.coalesce(func.sum(RequestRollupRow.cost_usd), 0.0))
                                 .where(RequestRollupRow.slot >= int(start.timestamp()))).scalar_one()
        return float(value)


class Pacer:
    def __init__(self, cfg: PacingConfig, spend: SpendSource, *, default_lambda: float = 0.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.cfg = cfg
        self.spend = spend
        self.clock = clock
        self.controller = PacingController(cfg)
        self.lambda_init = cfg.lambda_init if cfg.lambda_init is not None else max(default_lambda, cfg.lambda_min)
        self.states: dict[str, ScopeState] = {}
        self.keys: dict[str, tuple[ApiKey, float]] = {}  # key id → (key, last seen, epoch s)
        self._lock = threading.Lock()
        self._new = asyncio.Event()  # a key seen for the first time: read its spend now
        self.read_failures = 0
        if cfg.global_budget_usd is not None:
            self.states[GLOBAL] = self.controller.initial(self.lambda_init)

    def budget_of(self, key: ApiKey) -> float | None:
        return key.budget_usd_day if self.cfg.window == "day" else key.budget_usd_month

    # -- request path -----------------------------------------------------------------------------
    def pace(self, key: ApiKey | None) -> Pace:
        best: tuple[float, str] | None = None
        near = False
        scopes = [GLOBAL] if GLOBAL in self.states else []
        if key is not None and self.budget_of(key):
            sid = "key:" + key.id
            with self._lock:
                if key.id not in self.keys:
                    self._new.set()
                self.keys[key.id] = (key, self.clock().timestamp())
                if sid not in self.states:
                    self.states[sid] = self.controller.initial(self.lambda_init)
            scopes.append(sid)
        for sid in scopes:
            s = self.states[sid]
            near = near or self.controller.near_cap(s)
            if best is None or s.lambda_ > best[0]:
                best = (s.lambda_, sid)
        if best is None:
            return Pace(None, False, None)
        return Pace(best[0], near, best[1])

    # -- background -------------------------------------------------------------------------------
    def update(self, now: datetime | None = None) -> None:
        """Read every paced scope's spend and update its λ (blocking: call from a worker thread)."""
        now = now or self.clock()
        start, end = window_bounds(now, self.cfg.window)
        t, t0, t1 = now.timestamp(), start.timestamp(), end.timestamp()
        with self._lock:
            for key_id in [k for k, (_, seen) in self.keys.items() if t - seen > FORGET_AFTER_S]:
                del self.keys[key_id]
                self.states.pop("key:" + key_id, None)
            keys = [k for k, _ in self.keys.values()]
        jobs: list[tuple[str, float, Callable[[], float]]] = []
        if self.cfg.global_budget_usd is not None:
            jobs.append((GLOBAL, self.cfg.global_budget_usd, lambda: self.spend.total_spend(start)))
        for key in keys:
            budget = self.budget_of(key)
            if budget:
                jobs.append(("key:" + key.id, budget, lambda k=key: self.spend.key_spend(k.id, self.cfg.window, start)))
        for sid, budget, read in jobs:
            try:
                spent = read()
            except Exception as exc:  # the ledger being down leaves λ where it was
                self.read_failures += 1
                log.warning("pacing could not read the spend of %s: %s", sid, exc)
                continue
            with self._lock:
                state = self.states.setdefault(sid, self.controller.initial(self.lambda_init))
                self.controller.update(state, now=t, spent=spent, budget=budget, t0=t0, t1=t1)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.update)
            except Exception:  # the pacer must outlive any one failure
                log.exception("pacing update failed")
            try:
                await asyncio.wait_for(self._new.wait(), self.cfg.update_s)
            except TimeoutError:
                pass
            self._new.clear()

    def status(self) -> list[dict]:
        """Every paced scope: budget, spend, plan and λ now, and their history (the dashboard's line)."""
        with self._lock:
            names = {"key:" + k: key.name for k, (key, _) in self.keys.items()}
            out = []
            for sid, s in self.states.items():
                out.append({"scope": sid, "name": names.get(sid, sid), "window": self.cfg.window, "budget_usd": s.budget,
                            "spent_usd": s.spent, "lambda": s.lambda_, "rate_usd_per_h": None if s.rate is None else s.rate * 3600,
                            "planned_rate_usd_per_h": None if s.planned_rate is None else s.planned_rate * 3600,
                            "near_cap": self.controller.near_cap(s),
                            "history": [{"t": datetime.fromtimestamp(t, UTC).isoformat(), "spent_usd": sp, "planned_usd": pl,
                                         "lambda": lam} for t, sp, pl, lam in s.history]})
        return out


def cheapest(decision: Decision, experts: Sequence[ExpertInfo], *, prompt_tokens: int, completion_tokens: int,
             alone: bool = False, why: str = "near the budget cap") -> Decision:
    """The decision moved to the cheapest of its feasible candidates (the policy's constraints
    hold); the others follow cheapest first, or none with ``alone`` (a reservation then only
    covers that expert)."""
    info = {e.name: e for e in experts}
    names = [n for n in decision.ranking if n in decision.scores and n in info] or [decision.expert]
    by_cost = sorted(names, key=lambda n: (info[n].cost_usd(prompt_tokens, completion_tokens) if n in info else 0.0,
                                           names.index(n)))
    pick = by_cost[0]
    ranking = [pick] if alone else by_cost
    adjustments = {**(decision.adjustments or {}), "pacing": {"downgrade": True, "from": decision.expert, "why": why}}
    return replace(decision, expert=pick, ranking=ranking, propensities={pick: 1.0},
                   reason=f"{decision.reason}; pacing: {why}, cheapest fitting expert {pick}", adjustments=adjustments)
