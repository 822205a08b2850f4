import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from core import llama_thread


def test_work_from_any_thread_runs_on_one_and_nested_calls_do_not_wait_on_themselves():
    def where() -> int:
        return threading.get_ident()

    with ThreadPoolExecutor(3) as callers:
        seen = {f.result() for f in [callers.submit(llama_thread.on_compute_thread, where) for _ in range(12)]}
    seen.add(llama_thread.on_compute_thread(where))
    assert len(seen) == 1 and threading.get_ident() not in seen
    nested = llama_thread.on_compute_thread(lambda: llama_thread.on_compute_thread(where))
    assert nested in seen


def test_pinned_contexts_decode_on_the_compute_thread_and_keep_their_errors(monkeypatch):
    import llama_cpp.llama_cpp as C
    from llama_cpp import _internals

    threads: list[int] = []

    def decode(ctx, batch):
        threads.append(threading.get_ident())
        return 0 if batch == "ok" else 1

    monkeypatch.setattr(C, "llama_decode", decode)
    llama_thread.pin_evaluations()
    llama_thread.pin_evaluations()  # idempotent: one wrapper, not two
    ctx = SimpleNamespace(ctx=object())
    with ThreadPoolExecutor(2) as callers:
        for f in [callers.submit(_internals.LlamaContext.decode, ctx, SimpleNamespace(batch="ok")) for _ in range(4)]:
            f.result()
    assert len(set(threads)) == 1 and threads[0] == llama_thread.on_compute_thread(threading.get_ident)
    with pytest.raises(RuntimeError, match="llama_decode returned 1"):
        _internals.LlamaContext.decode(ctx, SimpleNamespace(batch="bad"))
