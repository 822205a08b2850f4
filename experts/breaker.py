"""Per-expert circuit breaker: stop sending traffic to an expert that keeps failing.

closed ──N consecutive failures──► open ──reset timeout──► half_open ──success──► closed
                                     ▲                        │
                                     └────────failure─────────┘

While open the expert is not a routing candidate. After the reset timeout the next request is
the probe (the fallback chain still protects that client if the probe fails).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, reset_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self.times_opened = 0

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
                self._state = HALF_OPEN
            return self._state

    def available(self) -> bool:
        return self.state != OPEN

    def record_success(self) -> None:
        with self._lock:
            self._state, self._failures = CLOSED, 0

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                if self._state != OPEN:
                    self.times_opened += 1
                self._state, self._opened_at = OPEN, self._clock()
