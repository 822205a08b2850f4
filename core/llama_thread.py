"""Every llama.cpp evaluation of a process on one thread.

llama.cpp's CPU backend parallelises a graph with OpenMP, and libgomp keeps a pool of worker
threads for each thread that starts a parallel region. Once two live threads have evaluated a
model, their pools compete for the cores: on 2 cores a SmolLM2 decode step goes from 9 to 16 ms,
and stays there until one of the threads exits. ``llama_cpp.server`` calls the model from
whichever of its worker threads is free, so a local expert pays this on most requests.
``pin_evaluations()`` routes llama-cpp-python's ``decode`` and ``encode`` through one dedicated
thread instead; the caller waits for the result, so the behaviour is otherwise unchanged.

Between processes the same pools meet again: libgomp's idle threads spin up to ``GOMP_SPINCOUNT``
(300,000 by default) before they sleep, and llama.cpp waits at a barrier after every graph node.
Where two llama.cpp processes share the cores (two local experts on 2 cores), each one's spinning
threads hold the cores the other needs: two concurrent 48-token answers took 4 to 97 s instead
of 1 to 1.4 s. ``spin_briefly`` gives the process a short spin (``SPIN_ENV``) before llama.cpp's
libraries load (libgomp reads it once, then); it costs one process alone nothing measurable.
Every process that runs llama.cpp calls it first: the expert servers, the proxy, the probe's
extraction.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
SPIN_ENV = {"GOMP_SPINCOUNT": "1000"}
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_thread_id: int | None = None


def _remember_thread() -> None:
    global _thread_id
    _thread_id = threading.get_ident()


def on_compute_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, run on the process's llama.cpp thread."""
    global _executor
    if threading.get_ident() == _thread_id:
        return fn(*args)
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="llama-compute", initializer=_remember_thread)
    return _executor.submit(fn, *args).result()


def pin_evaluations() -> None:
    """Make every llama-cpp-python context of this process evaluate on the one thread (idempotent)."""
    from llama_cpp import _internals

    cls = _internals.LlamaContext
    with _lock:
        if getattr(cls, "_pinned_to_one_thread", False):
            return
        for name in ("decode", "encode"):
            def pinned(self: Any, batch: Any, _original: Callable[..., Any] = getattr(cls, name)) -> Any:
                return on_compute_thread(_original, self, batch)

            setattr(cls, name, pinned)
        cls._pinned_to_one_thread = True


def spin_briefly() -> None:
    """``SPIN_ENV`` for this process where it sets no value of its own; call before importing
    ``llama_cpp`` (later calls change nothing)."""
    for key, value in SPIN_ENV.items():
        os.environ.setdefault(key, value)
