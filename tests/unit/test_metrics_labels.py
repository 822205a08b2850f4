"""Metric labels take only the deployment's own values; anything a client chose counts as "other"."""

from __future__ import annotations

from router.request.metrics import OTHER, LabelValues, Metrics


def test_label_values_accept_known_and_fold_the_rest():
    known = ["a", "b"]
    label = LabelValues(["fixed"], lambda: known)
    assert [label(v) for v in ("a", "fixed", None, "zzz")] == ["a", "fixed", "-", OTHER]
    known.append("c")  # a policy registered at run time is picked up on its first miss
    assert label("c") == "c"


def test_observe_request_never_creates_a_series_per_client_string():
    m = Metrics()
    m.bind(models=lambda: ["cheap", "expertmux/auto"], policies=lambda: ["prior"], experts=lambda: ["cheap"])
    row = {"requested_model": None, "policy": None, "expert": None, "status": "rejected", "latency_ms": 1.0, "ttft_ms": None,
           "cost_usd": 0.0, "prompt_tokens": 0, "completion_tokens": 0}
    for i in range(500):
        m.observe_request({**row, "requested_model": f"tenant-{i}", "policy": f"p{i}", "expert": f"e{i}", "status": f"s{i}"},
                          stream=False)
    text = m.render().decode()
    assert "tenant-" not in text
    assert 'expertmux_requests_total{expert="other",model="other",policy="other",status="other"} 500.0' in text
    samples = [s for fam in m.registry.collect() if fam.name == "expertmux_requests" for s in fam.samples]
    assert len({tuple(sorted(s.labels.items())) for s in samples}) <= 2  # _total and _created of one series
