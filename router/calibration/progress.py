"""Progress of a calibration run as plain snapshots, for whoever shows it.

The runner calls ``progress(CalibrationProgress)`` after every finished cell (on the event loop, so
a callback must be cheap): the CLI draws rich bars from it, the background job of the proxy logs
it and the dashboard shows it. A snapshot is immutable and JSON-ready (``as_dict``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ExpertProgress:
    total: int  # cells of this expert in this run (already graded ones excluded)
    done: int  # finished this run: graded, or NaN with a reason
    failed: int  # of ``done``: the expert failed or the grader could not judge
    spent_usd: float
    output_tokens: int
    cells_per_s: float
    tokens_per_s: float  # output tokens per second of wall time
    state: str  # waiting | running | done | down | budget
    last_error: str | None = None

    @property
    def eta_s(self) -> float | None:
        left = self.total - self.done
        if left <= 0:
            return 0.0
        return left / self.cells_per_s if self.cells_per_s > 0 else None


@dataclass(frozen=True)
class CalibrationProgress:
    total: int  # cells to compute in this run
    done: int
    failed: int
    already: int  # cells graded by earlier runs (skipped)
    spent_usd: float
    elapsed_s: float
    experts: dict[str, ExpertProgress] = field(default_factory=dict)
    state: str = "running"  # running | done | interrupted | budget

    @property
    def eta_s(self) -> float | None:
        """Experts run side by side: the run ends with its slowest expert."""
        etas = [p.eta_s for p in self.experts.values() if p.state in ("waiting", "running")]
        if not etas:
            return 0.0
        return None if any(e is None for e in etas) else max(etas)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["eta_s"] = self.eta_s
        for name, p in self.experts.items():
            out["experts"][name]["eta_s"] = p.eta_s
        return out


ProgressCallback = Callable[[CalibrationProgress], None]


class Tracker:
    """Mutable counters behind the snapshots (owned by one runner, touched on its event loop)."""

    def __init__(self, totals: dict[str, int], already: int, callback: ProgressCallback | None) -> None:
        self.t0 = time.monotonic()
        self.callback = callback
        self.already = already
        self.totals = dict(totals)
        self.done = dict.fromkeys(totals, 0)
        self.failed = dict.fromkeys(totals, 0)
        self.spent = dict.fromkeys(totals, 0.0)
        self.tokens = dict.fromkeys(totals, 0)
        self.started: dict[str, float] = {}
        self.state = {n: "waiting" if t else "done" for n, t in totals.items()}
        self.last_error: dict[str, str | None] = dict.fromkeys(totals)
        self.extra_spent = 0.0  # judge calls

    def start(self, expert: str) -> None:
        self.started.setdefault(expert, time.monotonic())
        if self.state[expert] == "waiting":
            self.state[expert] = "running"

    def finish_cell(self, expert: str, *, failed: bool, cost_usd: float, output_tokens: int, error: str | None = None) -> None:
        self.done[expert] += 1
        self.failed[expert] += int(failed)
        self.spent[expert] += cost_usd
        self.tokens[expert] += output_tokens
        if error:
            self.last_error[expert] = error
        if self.done[expert] >= self.totals[expert] and self.state[expert] == "running":
            self.state[expert] = "done"
        self.emit()

    def set_state(self, expert: str, state: str) -> None:
        self.state[expert] = state
        self.emit()

    def snapshot(self, state: str = "running") -> CalibrationProgress:
        now = time.monotonic()
        experts = {}
        for n in self.totals:
            wall = max(now - self.started.get(n, now), 1e-9)
            experts[n] = ExpertProgress(
                total=self.totals[n], done=self.done[n], failed=self.failed[n], spent_usd=self.spent[n],
                output_tokens=self.tokens[n], cells_per_s=self.done[n] / wall if n in self.started else 0.0,
                tokens_per_s=self.tokens[n] / wall if n in self.started else 0.0, state=self.state[n],
                last_error=self.last_error[n])
        return CalibrationProgress(total=sum(self.totals.values()), done=sum(self.done.values()),
                                   failed=sum(self.failed.values()), already=self.already,
                                   spent_usd=sum(self.spent.values()) + self.extra_spent, elapsed_s=now - self.t0,
                                   experts=experts, state=state)

    def emit(self, state: str = "running") -> None:
        if self.callback is not None:
            self.callback(self.snapshot(state))
