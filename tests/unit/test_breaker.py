"""Circuit breaker transitions, driven by a fake clock."""

from __future__ import annotations

from experts.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_failures_and_recovers_through_half_open():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=10, clock=clock)
    b.record_failure()
    b.record_failure()
    b.record_success()  # a success resets the count
    b.record_failure()
    b.record_failure()
    assert b.state == CLOSED and b.available()
    b.record_failure()
    assert b.state == OPEN and not b.available() and b.times_opened == 1
    clock.t = 9.9
    assert b.state == OPEN
    clock.t = 10.0
    assert b.state == HALF_OPEN and b.available()
    b.record_failure()  # the probe failed: open again, timer restarted
    assert b.state == OPEN and b.times_opened == 2
    clock.t = 20.0
    assert b.state == HALF_OPEN
    b.record_success()
    assert b.state == CLOSED
