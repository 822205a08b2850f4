"""The pacing controller: one λ per scope (a key, or all traffic), updated from its spend.

At each update the spend rate over the last interval (a moving average) is compared with the
*planned* rate: what is left of the target (``target_share`` × budget − spent), spread over what
is left of the window in proportion to the expected traffic (``profile``, flat by default). The
controller moves ln λ by ``gain`` × ln(rate / planned rate), never by more than ``max_step``,
within [``lambda_min``, ``lambda_max``]: spending too fast raises the price of a dollar, so the
policy picks cheaper experts; too slow lowers it. Overspending early lowers the planned rate of
the rest of the window, so the controller corrects the total, not only the rate. A new window
keeps the λ the last one ended with (the level traffic needed), and forgets the rate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from core.config import PacingConfig

HOUR_S = 3600.0


@dataclass
class ScopeState:
    """One paced scope (``key:<id>`` or ``global``)."""

    log_lambda: float
    budget: float = 0.0
    spent: float = 0.0
    window_start: float | None = None  # epoch seconds
    window_end: float | None = None
    last_t: float | None = None
    last_spent: float = 0.0
    rate: float | None = None  # USD/s, moving average
    planned_rate: float | None = None
    history: deque = field(default_factory=lambda: deque(maxlen=2000))  # (t, spent, planned spend, λ)

    @property
    def lambda_(self) -> float:
        return math.exp(self.log_lambda)


class PacingController:
    def __init__(self, cfg: PacingConfig) -> None:
        self.cfg = cfg
        weights = cfg.profile or [1.0] * 24
        total = sum(weights)
        self.hourly = [w / total * 24 for w in weights]  # mean 1

    def initial(self, lambda_: float) -> ScopeState:
        lam = min(max(lambda_, self.cfg.lambda_min), self.cfg.lambda_max)
        return ScopeState(log_lambda=math.log(lam))

    # -- the plan ---------------------------------------------------------------------------------
    def _weight(self, a: float, b: float) -> float:
        """Expected traffic between epoch seconds a and b (hours weighted by the profile)."""
        if b <= a:
            return 0.0
        if self.cfg.profile is None:
            return (b - a) / HOUR_S
        total, t = 0.0, a
        while t < b:
            hour_end = (math.floor(t / HOUR_S) + 1) * HOUR_S
            step_end = min(hour_end, b)
            total += (step_end - t) / HOUR_S * self.hourly[int(t // HOUR_S) % 24]
            t = step_end
        return total

    def planned_share(self, t: float, t0: float, t1: float) -> float:
        """Share of the window's target planned to be spent by ``t``."""
        whole = self._weight(t0, t1)
        return min(1.0, self._weight(t0, min(max(t, t0), t1)) / whole) if whole > 0 else 1.0

    def planned_rate(self, t: float, t0: float, t1: float, remaining_usd: float) -> float:
        """USD per second the rest of the target allows now."""
        if remaining_usd <= 0:
            return 0.0
        left = self._weight(t, t1)
        if left <= 0:
            return remaining_usd / max(t1 - t, 1.0)
        density = self.hourly[int(t // HOUR_S) % 24] / HOUR_S if self.cfg.profile is not None else 1.0 / HOUR_S
        return remaining_usd * density / left

    # -- one update -------------------------------------------------------------------------------
    def update(self, s: ScopeState, *, now: float, spent: float, budget: float, t0: float, t1: float) -> float:
        """Feed the scope's spend in the window [t0, t1) at ``now``; returns the new λ."""
        cfg = self.cfg
        s.budget, s.spent = budget, spent
        if s.window_start != t0:  # a new window: keep λ, forget the rate
            s.window_start, s.window_end = t0, t1
            s.last_t, s.last_spent, s.rate = now, spent, None
            self._record(s, now)
            return s.lambda_
        dt = now - (s.last_t if s.last_t is not None else now)
        if dt <= 0:
            return s.lambda_
        rate = max(spent - s.last_spent, 0.0) / dt
        s.rate = rate if s.rate is None else (1 - cfg.smoothing) * s.rate + cfg.smoothing * rate
        s.last_t, s.last_spent = now, spent
        target = budget * cfg.target_share
        s.planned_rate = self.planned_rate(now, t0, t1, target - spent)
        floor = 1e-3 * target / max(t1 - t0, 1.0)  # a rate this small counts as zero
        if spent >= target:
            step = cfg.max_step
        else:
            step = cfg.gain * math.log((s.rate + floor) / (s.planned_rate + floor))
        step = max(-cfg.max_step, min(cfg.max_step, step))
        s.log_lambda = max(math.log(cfg.lambda_min), min(math.log(cfg.lambda_max), s.log_lambda + step))
        self._record(s, now)
        return s.lambda_

    def _record(self, s: ScopeState, now: float) -> None:
        planned = s.budget * self.cfg.target_share * self.planned_share(now, s.window_start, s.window_end)
        s.history.append((now, s.spent, planned, s.lambda_))

    def near_cap(self, s: ScopeState) -> bool:
        return s.budget > 0 and s.spent >= self.cfg.downgrade_at * s.budget
