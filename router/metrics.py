"""Prometheus metrics of one service instance (own registry: tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("expertmux_requests", "Chat requests by outcome", ["model", "policy", "expert", "status"], registry=r)
        self.latency = Histogram("expertmux_request_latency_seconds", "End-to-end request latency", ["expert"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("expertmux_time_to_first_token_seconds", "Time to first streamed token", ["expert"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.decision = Histogram("expertmux_routing_decision_seconds", "Time the policy took to decide", ["policy"],
                                  buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1), registry=r)
        self.expert_calls = Counter("expertmux_expert_calls", "Calls to each expert by outcome", ["expert", "status"], registry=r)
        self.cost = Counter("expertmux_cost_usd", "Cost in USD per expert", ["expert"], registry=r)
        self.tokens = Counter("expertmux_tokens", "Tokens per expert", ["expert", "kind"], registry=r)
        self.in_flight = Gauge("expertmux_expert_in_flight", "Requests in flight per expert", ["expert"], registry=r)
        self.breaker_state = Gauge("expertmux_expert_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["expert"],
                                   registry=r)
        self.expert_up = Gauge("expertmux_expert_up", "1 if the expert answers its health check", ["expert"], registry=r)
        self.ledger_pending = Gauge("expertmux_ledger_pending_rows", "Ledger rows waiting to be written", registry=r)
        self.ledger_written = Gauge("expertmux_ledger_rows_written", "Ledger rows written since start", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
