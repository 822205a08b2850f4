"""A session's routing state and how one request changes it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from core.config import SessionsConfig
from core.types import SessionView

STAY, SWITCH, ESCALATE, FIRST = "stay", "switch", "escalate", "first"


@dataclass(slots=True)
class SessionState:
    """Mirrors a ``routing_sessions`` row, plus what this replica knows of the last answer's feedback."""

    id: str
    updated_at: datetime | None = None
    expert: str | None = None
    turns: int = 0
    switches: int = 0
    escalations: int = 0
    failures: int = 0
    prefix_tokens: int = 0
    floor_expert: str | None = None
    last_request_id: str | None = None
    cost_usd: float = 0.0
    checked_request_id: str | None = None  # the last request whose feedback was looked up
    negative_feedback: bool = False

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "updated_at": self.updated_at, "expert": self.expert, "turns": self.turns,
                "switches": self.switches, "escalations": self.escalations, "failures": self.failures,
                "prefix_tokens": self.prefix_tokens, "floor_expert": self.floor_expert,
                "last_request_id": self.last_request_id, "cost_usd": self.cost_usd}

    @classmethod
    def from_row(cls, row: Any) -> SessionState:
        at = row.updated_at
        at = at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at  # SQLite keeps no zone
        return cls(id=row.id, updated_at=at, expert=row.expert, turns=row.turns, switches=row.switches,
                   escalations=row.escalations, failures=row.failures, prefix_tokens=row.prefix_tokens,
                   floor_expert=row.floor_expert, last_request_id=row.last_request_id, cost_usd=row.cost_usd)

    def copy(self) -> SessionState:
        return replace(self)

    def view(self, cfg: SessionsConfig, *, tool_loop: int, prompt_tokens: int) -> SessionView:
        """What the policy and the session rule see for the next request."""
        stall = None
        if self.expert is not None:
            if tool_loop >= cfg.loop_repeats:
                stall = "tool_loop"
            elif self.failures >= cfg.max_failures:
                stall = "errors"
            elif self.negative_feedback:
                stall = "negative_feedback"
        return SessionView(session_id=self.id, expert=self.expert, turns=self.turns, switches=self.switches,
                           escalations=self.escalations, failures=self.failures, tool_loop=tool_loop,
                           negative_feedback=self.negative_feedback, prefix_tokens=min(self.prefix_tokens, prompt_tokens),
                           floor_expert=self.floor_expert, stall=stall)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one finished request of the session tells the state."""

    request_id: str
    ok: bool
    expert: str | None  # the expert that answered (ok) or was tried last
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    event: str | None  # what the session rule did for this request (stay | switch | escalate | first)
    at: datetime


def advance(state: SessionState, outcome: Outcome) -> SessionState:
    """The state after ``outcome`` (a new object; the input is left as it was)."""
    s = state.copy()
    s.updated_at, s.last_request_id = outcome.at, outcome.request_id
    s.cost_usd += outcome.cost_usd
    s.negative_feedback = False  # feedback is looked up again for the new last request
    s.checked_request_id = None
    if outcome.event == ESCALATE and outcome.expert is not None:
        s.escalations += 1
        s.floor_expert = outcome.expert
    if not outcome.ok:
        s.failures += 1
        if s.expert is None:  # the session's first request failed: it is on the expert that failed
            s.expert = outcome.expert
        return s
    s.turns += 1
    s.failures = 0
    if s.expert is not None and outcome.expert != s.expert:
        s.switches += 1
    s.expert = outcome.expert
    # what the expert has read and written: the next turn repeats it as its prefix
    s.prefix_tokens = outcome.prompt_tokens + outcome.completion_tokens
    return s
