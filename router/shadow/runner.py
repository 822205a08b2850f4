"""The shadow runner: the candidate decides on answered requests, off the request path.

``submit`` is what the request path calls once a request has been answered: a sampled, bounded,
non-blocking queue put (a full queue skips the request and counts it). Workers then, per request:

1. run the candidate's ``decide`` on the same routing request, at the same λ, with the experts
   that were unavailable then (a worker thread: a learned policy embeds the prompt);
2. where it chose another expert than the served one and ``call_experts`` is on, call that
   expert with the client's request if its worst-case cost fits what is left of the daily
   shadow budget (``budget_usd_day``, counted per replica);
3. with ``judge`` on and the prompt stored in full (as the judge requires), have the configured
   judge rate both answers — each on its own, neither labelled, in random order;
4. write one ``shadow_decisions`` row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert

from core.config import ShadowConfig
from core.errors import ExpertmuxError
from core.types import Decision, RouteRequest
from router.ledger.models import ShadowDecisionRow

log = logging.getLogger("expertmux.shadow")


@dataclass(slots=True)
class ShadowItem:
    """One answered request, as the shadow needs it."""

    request_id: str
    route_request: RouteRequest
    lambda_: float
    unavailable: frozenset[str]
    served: Decision
    served_expert: str | None
    served_cost_usd: float | None
    served_answer: str | None = None
    question: str | None = None  # the prompt, when it may be shown to a judge (stored in full)
    payload: Callable[[], dict[str, Any]] | None = None  # the client's request as sent upstream


class ShadowRunner:
    def __init__(self, cfg: ShadowConfig, candidate: Any, *, engine: Engine, experts: Any = None, judge: Any = None,
                 workers: int = 2, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.cfg = cfg
        self.candidate = candidate
        self.engine = engine
        self.experts = experts
        self.judge = judge
        self.workers = workers
        self.clock = clock
        self._rng = np.random.default_rng(cfg.seed)
        self._queue: asyncio.Queue[ShadowItem] = asyncio.Queue(maxsize=cfg.max_pending)
        self._day: str | None = None
        self.spent_today = 0.0
        self.counts = {"submitted": 0, "skipped_full": 0, "decided": 0, "called": 0, "judged": 0, "skipped_budget": 0,
                       "error": 0, "logged": 0}  # logged: rows written; a decision is counted before its row is

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def version(self) -> str:
        return self.candidate.version

    # -- request path -----------------------------------------------------------------------------
    def submit(self, item: ShadowItem) -> bool:
        """Queue an answered request for the candidate (sampled); never waits."""
        if self.cfg.sample_rate < 1.0 and self._rng.random() >= self.cfg.sample_rate:
            return False
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.counts["skipped_full"] += 1
            return False
        self.counts["submitted"] += 1
        return True

    # -- workers ----------------------------------------------------------------------------------
    async def run(self) -> None:
        await asyncio.gather(*(self._work() for _ in range(self.workers)))

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self.handle(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # a shadow failure must never reach anything served
                self.counts["error"] += 1
                log.exception("shadow evaluation of request %s failed", item.request_id)
            finally:
                self._queue.task_done()

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued request has been handled (tests, benchmarks, shutdown)."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            return True
        except TimeoutError:
            return False

    async def handle(self, item: ShadowItem) -> dict[str, Any]:
        rr = item.route_request
        row: dict[str, Any] = {"request_id": item.request_id, "created_at": self.clock(), "policy": self.name,
                               "policy_version": self.version, "served_policy": item.served.policy,
                               "served_version": item.served.policy_version, "served_expert": item.served_expert,
                               "lambda": item.lambda_, "served_cost_usd": item.served_cost_usd, "cost_usd": None,
                               "latency_ms": None, "served_score": None, "score": None, "error": None}
        try:
            decision = await asyncio.to_thread(self.candidate.decide, rr, lambda_=item.lambda_, unavailable=item.unavailable)
        except ExpertmuxError as exc:
            self.counts["error"] += 1
            row.update(expert="", agrees=False, decision={}, status="error", error=exc.message)
            await asyncio.to_thread(self._write, row)
            return row
        row.update(expert=decision.expert, agrees=decision.expert == item.served_expert, decision=decision.as_record(),
                   status="decided")
        self.counts["decided"] += 1
        if self.cfg.call_experts and not row["agrees"] and item.payload is not None and self.experts is not None:
            await self._call(item, decision, row)
        await asyncio.to_thread(self._write, row)
        return row

    async def _call(self, item: ShadowItem, decision: Decision, row: dict[str, Any]) -> None:
        from experts import client

        expert = self.experts[decision.expert]
        rr = item.route_request
        day = self.clock().date().isoformat()
        if day != self._day:
            self._day, self.spent_today = day, 0.0
        worst = expert.info.cost_usd(rr.prompt_tokens * 2, rr.max_completion_tokens)  # chars/4 may undercount: ×2
        if self.spent_today + worst > self.cfg.budget_usd_day:
            row["status"] = "skipped_budget"
            self.counts["skipped_budget"] += 1
            return
        self.spent_today += worst  # held until the bill is known
        payload = {**item.payload(), "max_tokens": rr.max_completion_tokens}
        payload.pop("max_completion_tokens", None)
        t0 = time.perf_counter()
        expert.in_flight += 1
        try:
            resp = await client.complete(expert, payload)
        except ExpertmuxError as exc:
            self.spent_today -= worst
            row.update(status="error", error=f"candidate expert {expert.name}: {exc.operator_message}")
            self.counts["error"] += 1
            return
        finally:
            expert.in_flight -= 1
        usage = resp.get("usage") or {}
        cost = expert.cost_usd(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        self.spent_today += cost - worst
        answer = "".join((c.get("message") or {}).get("content") or "" for c in resp.get("choices", []))
        row.update(status="called", cost_usd=cost, latency_ms=(time.perf_counter() - t0) * 1000)
        self.counts["called"] += 1
        if self.cfg.judge and self.judge is not None and item.question and item.served_answer and answer.strip():
            await self._judge(item, answer, row)

    async def _judge(self, item: ShadowItem, answer: str, row: dict[str, Any]) -> None:
        """Both answers rated one at a time, in random order, neither labelled: a blind comparison."""
        pair = [("served_score", item.served_answer), ("score", answer)]
        if self._rng.random() < 0.5:
            pair.reverse()
        try:
            for field, text in pair:
                row[field], _ = await self.judge.judge_text(item.question, text)
        except ExpertmuxError as exc:
            row["error"] = f"judge: {exc.operator_message}"
            return
        if row["served_score"] is not None and row["score"] is not None:
            row["status"] = "judged"
            self.counts["judged"] += 1

    def _write(self, row: dict[str, Any]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(ShadowDecisionRow), [row])
            self.counts["logged"] += 1
        except Exception as exc:  # the shadow log is best effort: the served request is long answered
            self.counts["error"] += 1
            log.warning("could not write the shadow decision for %s: %s", row["request_id"], exc)
