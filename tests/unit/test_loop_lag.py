"""The event-loop lag watcher: a loop blocked for a while shows up in the lag histogram."""

from __future__ import annotations

import asyncio
import gc
import time
from types import SimpleNamespace

from router.request.metrics import Metrics
from router.runtime import Runtime


def _lag_samples(metrics: Metrics) -> dict[str, float]:
    out = {}
    for family in metrics.registry.collect():
        if family.name == "expertmux_event_loop_lag_seconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    out[s.labels["le"]] = s.value
                elif s.name.endswith("_count"):
                    out["count"] = s.value
    return out


async def _watch_while(block_s: float) -> dict[str, float]:
    metrics = Metrics()
    runtime = SimpleNamespace(service=SimpleNamespace(metrics=metrics))
    task = asyncio.create_task(Runtime._watch_loop_lag(runtime, interval_s=0.01))
    await asyncio.sleep(0.1)
    time.sleep(block_s)  # a callback that holds the loop
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return _lag_samples(metrics)


def test_a_blocked_loop_is_recorded_as_lag():
    gc.disable()  # no collection pause of this process on top of the block
    try:
        samples = asyncio.run(_watch_while(0.6))
    finally:
        gc.enable()
    assert samples["count"] >= 3
    assert samples["+Inf"] - samples["0.5"] >= 1  # the wake-up after the block was late by more than 0.5 s
    assert samples["0.1"] >= samples["count"] / 2  # the other ticks were on time: the watcher reports lag, not load


def test_the_proxy_benchmark_summarises_lag_over_its_runs():
    import math

    from benchmarks.proxy_overhead import lag_summary

    # two runs' histogram deltas (cumulative counts per upper bound): 200 ticks, 4 later than 0.5 s
    a = {0.05: 90.0, 0.1: 95.0, 0.5: 98.0, 1.0: 100.0, math.inf: 100.0}
    b = {0.05: 80.0, 0.1: 90.0, 0.5: 98.0, 1.0: 99.0, math.inf: 100.0}
    s = lag_summary([a, b])
    assert s["ticks"] == 200 and s["over_100ms"] == 0.075 and s["over_500ms"] == 0.02
    assert s["p99_le_s"] == 1.0
    assert lag_summary([]) is None
