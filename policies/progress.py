"""Progress of long fits, reported to whoever listens (the training CLI draws rich progress bars).

Policies keep the sklearn ``fit(train)`` signature, so progress travels through a context
variable instead of an argument: the caller wraps ``fit`` in ``reporting(callback)`` and the
training loops call ``report(stage, done, total)``. Without a listener ``report`` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)

_listener: ContextVar[ProgressCallback | None] = ContextVar("expertmux_fit_progress", default=None)


@contextmanager
def reporting(callback: ProgressCallback | None) -> Iterator[None]:
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


def report(stage: str, done: int, total: int) -> None:
    callback = _listener.get()
    if callback is not None:
        callback(stage, int(done), int(total))
