"""Prometheus metrics of one service instance (own registry: tests can run several apps).

Every label value comes from the deployment, never from a client: experts and policies of the
config, the models ``/v1/models`` lists, a fixed set of outcomes. Anything else is counted as
``other``. A label set a client can grow makes ``/metrics`` grow without bound (each new value is
a new time series in every scraper) and shows one tenant's strings to whoever reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
OTHER = "other"
NONE = "-"  # the request never got that far (e.g. rejected before routing)
STATUSES = frozenset({"ok", "error", "rejected", "client_disconnected"})


class LabelValues:
    """The values one label may take: fixed ones plus the deployment's, re-read on a miss (policies
    and experts can change at run time; a miss costs one call of ``known``)."""

    def __init__(self, fixed: Iterable[str] = (), known: Callable[[], Iterable[str]] | None = None) -> None:
        self._fixed = frozenset(fixed) | {NONE}
        self._known = known
        self._allowed = self._fixed

    def __call__(self, value: str | None) -> str:
        if value is None:
            return NONE
        if value in self._allowed:
            return value
        if self._known is not None:
            self._allowed = self._fixed | frozenset(self._known())
            if value in self._allowed:
                return value
        return OTHER


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
        self.loop_lag = Histogram("expertmux_event_loop_lag_seconds",
                                  "How late a timer on the event loop fired: time every request waits before it is read",
                                  buckets=_LAG_BUCKETS, registry=r)
        # Until ``bind`` names the deployment's values, only the fixed ones pass.
        self.model_label = LabelValues()
        self.policy_label = LabelValues(["direct"])
        self.expert_label = LabelValues()
        self.status_label = LabelValues(STATUSES)

    def bind(self, *, models: Callable[[], Iterable[str]], policies: Callable[[], Iterable[str]],
             experts: Callable[[], Iterable[str]], fixed_policies: Iterable[str] = ()) -> None:
        """Name where the allowed label values come from (the service, once it is built)."""
        self.model_label = LabelValues((), models)
        self.policy_label = LabelValues(["direct", *fixed_policies], policies)
        self.expert_label = LabelValues((), experts)

    def observe_request(self, row: dict[str, Any], *, stream: bool) -> None:
        """Count one finished request (its ledger row) under bounded labels."""
        expert = self.expert_label(row["expert"])
        self.requests.labels(self.model_label(row["requested_model"]), self.policy_label(row["policy"]), expert,
                             self.status_label(row["status"])).inc()
        if row["status"] != "ok":
            return
        self.latency.labels(expert).observe(row["latency_ms"] / 1000)
        if stream and row["ttft_ms"] is not None:
            self.ttft.labels(expert).observe(row["ttft_ms"] / 1000)
        self.cost.labels(expert).inc(row["cost_usd"])
        self.tokens.labels(expert, "prompt").inc(row["prompt_tokens"])
        self.tokens.labels(expert, "completion").inc(row["completion_tokens"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
