"""What the service learns about one request while serving it, turned into ledger rows."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import ExpertmuxError
from core.types import Decision
from router.access.budgets import Reservation
from router.ledger.records import LedgerRecord


@dataclass(slots=True)
class AttemptTrace:
    attempt_no: int
    expert: str
    started_at: datetime
    t0: float
    ttft_ms: float | None = None
    latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    status: str = "pending"
    error: str | None = None
    usage_details: dict[str, Any] | None = None
    queue_at_start: float = 0.0  # requests ahead of this one at the expert (load-aware routing)
    answer: str | None = None  # the answer text, kept only while the request is handled (judge)

    def row(self, request_id: str) -> dict[str, Any]:
        return {"request_id": request_id, "attempt_no": self.attempt_no, "expert": self.expert,
                "started_at": self.started_at, "ttft_ms": self.ttft_ms, "latency_ms": self.latency_ms,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": self.cost_usd, "status": self.status, "error": self.error, "usage_details": self.usage_details}


@dataclass(slots=True)
class RequestTrace:
    id: str
    api_key_id: str | None = None
    tenant: str | None = None
    reservation: Reservation | None = None
    t0: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    requested_model: str | None = None
    stream: bool = False
    decision: Decision | None = None
    prompt_hash: str | None = None
    prompt_text: str | None = None
    attempts: list[AttemptTrace] = field(default_factory=list)
    status: str = "pending"
    http_status: int | None = None
    error: str | None = None
    recorded: bool = False
    final_attempt: AttemptTrace | None = None  # a cascade's returned answer (not always its last call)
    session_id: str | None = None  # the conversation the request belongs to (router/sessions)
    route: Any = None  # what routing over time needs after the answer (router/request/over_time.RouteContext)
    held: Callable[[], None] | None = None  # releases what the request holds until its first call (a kept prefill)

    def hold(self, release: Callable[[], None]) -> None:
        """Keep something for this request until its first call starts, or until it ends."""
        self.release_hold()
        self.held = release

    def release_hold(self) -> None:
        release, self.held = self.held, None
        if release is not None:
            release()

    def set_prompt(self, prompt: str, storage: str) -> None:
        self.prompt_hash = hashlib.sha256(prompt.encode()).hexdigest()
        self.prompt_text = prompt if storage == "full" else None

    def start_attempt(self, expert: str, *, queue: float = 0.0) -> AttemptTrace:
        self.release_hold()  # the call starts now: whatever waited for it is no longer needed
        attempt = AttemptTrace(attempt_no=len(self.attempts) + 1, expert=expert,
                               started_at=datetime.now(UTC), t0=time.perf_counter(), queue_at_start=queue)
        self.attempts.append(attempt)
        return attempt

    @property
    def served_by(self) -> AttemptTrace | None:
        """The attempt whose answer reached the client (the last successful one, or a cascade's pick)."""
        if self.final_attempt is not None:
            return self.final_attempt
        ok = [a for a in self.attempts if a.status == "ok"]
        return ok[-1] if ok else (self.attempts[-1] if self.attempts else None)

    def fail(self, exc: BaseException, status: str) -> None:
        self.status = status
        if isinstance(exc, ExpertmuxError):
            self.http_status, self.error = exc.status, exc.message
        else:
            self.http_status, self.error = 500, f"{type(exc).__name__}: {exc}"

    def to_record(self) -> LedgerRecord:
        elapsed = time.perf_counter() - self.t0
        served = self.served_by
        d = self.decision
        request = {
            "id": self.id, "created_at": self.created_at, "finished_at": self.created_at + timedelta(seconds=elapsed),
            "api_key_id": self.api_key_id, "tenant": self.tenant, "requested_model": self.requested_model,
            "policy": d.policy if d else None, "policy_version": d.policy_version if d else None,
            "expert": served.expert if served else (d.expert if d else None),
            "decision": d.as_record() if d else None,
            "prompt_hash": self.prompt_hash, "prompt_text": self.prompt_text,
            "prompt_tokens": sum(a.prompt_tokens for a in self.attempts),
            "completion_tokens": sum(a.completion_tokens for a in self.attempts),
            "cost_usd": sum(a.cost_usd for a in self.attempts),
            "ttft_ms": served.ttft_ms if served else None, "latency_ms": elapsed * 1000,
            "stream": self.stream, "status": self.status, "http_status": self.http_status, "error": self.error,
            "n_attempts": len(self.attempts),
            "usage_details": served.usage_details if served else None,
            "session_id": self.session_id,
        }
        settlement = None
        if self.reservation is not None:
            settlement = self.reservation.settlement(cost_usd=request["cost_usd"],
                                                     tokens=request["prompt_tokens"] + request["completion_tokens"])
        return LedgerRecord(request=request, attempts=[a.row(self.id) for a in self.attempts], settlement=settlement)
