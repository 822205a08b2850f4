"""Ledger records of cascade requests as ``router.request.cascade`` writes them: one request row
(cost = every call, expert = the returned answer's, the trajectory in the decision) and one
attempt row per step with ``usage_details.cascade``; a judge's call is an attempt too, marked
``judge_of``. For seeding the dashboard's tests through the real ledger writer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from router.ledger.records import LedgerRecord


@dataclass(frozen=True)
class Step:
    expert: str
    cost_usd: float
    latency_ms: float
    returned: bool = False
    status: str = "ok"  # a failed step ("error") is discarded and falls back


def cascade_record(rid: str, at: datetime, policy: str, steps: list[Step], *, judge_usd: float | None = None,
                   status: str = "ok", session_id: str | None = None) -> LedgerRecord:
    """A cascade request; with ``judge_usd`` a judge call of that cost follows each answered step."""
    attempts: list[dict[str, Any]] = []
    t = at
    for n, s in enumerate(steps, start=1):
        cascade = {"step": n, "status": s.status, "ex_ante": 0.5, "returned": s.returned}
        if s.status == "ok":
            cascade.update(cost_usd=s.cost_usd, latency_ms=s.latency_ms, posthoc=0.4)
        attempts.append(_attempt(rid, len(attempts) + 1, s.expert, t, s.latency_ms, s.cost_usd, s.status, {"cascade": cascade}))
        t += timedelta(milliseconds=s.latency_ms)
        if judge_usd is not None and s.status == "ok":
            attempts.append(_attempt(rid, len(attempts) + 1, "judge", t, 50.0, judge_usd, "ok",
                                     {"cascade": {"judge_of": s.expert}}))
            t += timedelta(milliseconds=50)
    answered = next((s.expert for s in steps if s.returned), None)
    ok = [s for s in steps if s.status == "ok"]
    trajectory = {"steps": [a["usage_details"]["cascade"] for a in attempts if "step" in a["usage_details"]["cascade"]],
                  "answered_by": answered, "calls": len(steps), "escalated": len(ok) > 1,
                  "cost_usd": sum(a["cost_usd"] for a in attempts),
                  "escalation_ms": round(sum(s.latency_ms for s in steps[1:]), 1)}
    total_ms = (t - at).total_seconds() * 1000
    request = {"id": rid, "created_at": at, "finished_at": t, "api_key_id": None, "tenant": None,
               "requested_model": f"expertmux/{policy}", "policy": policy, "policy_version": None, "expert": answered,
               "decision": {"policy": policy, "expert": answered, "reason": "cascade", "cascade": trajectory},
               "prompt_hash": None, "prompt_text": "q", "prompt_tokens": 10 * len(attempts),
               "completion_tokens": 5 * len(attempts), "cost_usd": sum(a["cost_usd"] for a in attempts), "ttft_ms": total_ms,
               "latency_ms": total_ms, "stream": False, "status": status, "http_status": 200, "error": None,
               "n_attempts": len(attempts), "usage_details": None, "session_id": session_id}
    return LedgerRecord(request=request, attempts=attempts)


def plain_record(rid: str, at: datetime, policy: str, expert: str, *, cost_usd: float = 1e-4, latency_ms: float = 300.0,
                 session_id: str | None = None, status: str = "ok") -> LedgerRecord:
    """A one-call request (no cascade), optionally in a session."""
    end = at + timedelta(milliseconds=latency_ms)
    request = {"id": rid, "created_at": at, "finished_at": end, "api_key_id": None, "tenant": None,
               "requested_model": "expertmux/auto", "policy": policy, "policy_version": None, "expert": expert,
               "decision": {"policy": policy, "expert": expert, "reason": "seeded"}, "prompt_hash": None,
               "prompt_text": "q", "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": cost_usd, "ttft_ms": latency_ms,
               "latency_ms": latency_ms, "stream": False, "status": status, "http_status": 200, "error": None,
               "n_attempts": 1, "usage_details": None, "session_id": session_id}
    return LedgerRecord(request=request, attempts=[_attempt(rid, 1, expert, at, latency_ms, cost_usd, status, None)])


def _attempt(rid: str, no: int, expert: str, at: datetime, latency_ms: float, cost_usd: float, status: str,
             usage_details: dict[str, Any] | None) -> dict[str, Any]:
    return {"request_id": rid, "attempt_no": no, "expert": expert, "started_at": at, "ttft_ms": latency_ms,
            "latency_ms": latency_ms, "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": cost_usd,
            "status": status, "error": None if status == "ok" else "upstream 500", "usage_details": usage_details}
