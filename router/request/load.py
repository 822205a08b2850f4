"""Load-aware routing: expected latency per expert, and the decision adjusted for it.

Expected latency = (typical service time) × (1 + requests ahead / parallel slots), where
- the service time is an exponentially weighted average of observed latencies, each divided by
  the queue the request met (so queueing is not counted twice);
- requests ahead are this proxy's in-flight calls to the expert, or the server's own running and
  waiting counts where it exposes them (vLLM ``/metrics``), whichever is larger;
- slots is how many requests the server works on at once (``max_concurrency``).

The policy decides on quality and cost; this layer then subtracts ``weight × expected latency``
from every candidate's utility and steers around experts over the latency SLO. Policies stay
pure (they never see live load), and one knob applies to all of them.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from core.types import Decision

_ALPHA = 0.2


class LatencyTracker:
    """Per-expert service-time estimate and live queue, updated by the service."""

    def __init__(self, default_service_s: float = 1.0) -> None:
        self.default_service_s = default_service_s
        self._service_s: dict[str, float] = {}
        self._server_queue: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, expert: str, latency_s: float, queue_at_start: float, slots: int) -> None:
        service = latency_s / (1.0 + queue_at_start / slots)
        with self._lock:
            old = self._service_s.get(expert)
            self._service_s[expert] = service if old is None else (1 - _ALPHA) * old + _ALPHA * service

    def set_server_queue(self, expert: str, running: float, waiting: float) -> None:
        self._server_queue[expert] = running + waiting

    def service_s(self, expert: str) -> float:
        known = self._service_s.get(expert)
        if known is not None:
            return known
        # Unseen expert: assume it is like the others until measured.
        return sum(self._service_s.values()) / len(self._service_s) if self._service_s else self.default_service_s

    def queue(self, expert: str, in_flight: int) -> float:
        return max(float(in_flight), self._server_queue.get(expert, 0.0))

    def expected_s(self, expert: str, in_flight: int, slots: int) -> float:
        return self.service_s(expert) * (1.0 + self.queue(expert, in_flight) / slots)


def adjust_for_load(decision: Decision, expected_s: dict[str, float], *, weight: float, slo_s: float | None) -> Decision:
    """Subtract ``weight × expected latency`` from each candidate's utility and re-rank.

    Stochastic decisions (exploration, e.g. ``random``) keep their draw: their logged propensities
    must stay true. Candidates over the SLO drop to the end of the ranking while any candidate
    meets it (they remain fallbacks).
    """
    if not decision.scores or (weight <= 0 and slo_s is None):
        return decision
    if max(decision.propensities.values(), default=1.0) < 1.0:
        return decision
    scores = {e: u - weight * expected_s.get(e, 0.0) for e, u in decision.scores.items()}
    within = {e for e in scores if slo_s is None or expected_s.get(e, 0.0) <= slo_s}
    ranking = sorted(scores, key=lambda e: (e not in within if within else False, -scores[e]))
    chosen = ranking[0]
    reason = decision.reason + f"; load-aware (weight {weight:g}/s" + (f", SLO {slo_s:g}s)" if slo_s else ")")
    return replace(decision, expert=chosen, scores={e: round(v, 9) for e, v in scores.items()},
                   propensities={e: 1.0 if e == chosen else 0.0 for e in scores}, ranking=ranking, reason=reason,
                   expected_latency_s={e: round(v, 4) for e, v in expected_s.items() if e in scores})
