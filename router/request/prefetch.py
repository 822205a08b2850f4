"""A learned policy's prompt features, computed off the event loop and batched across requests.

Encoding a prompt (MiniLM, or a small LM's prefill for the probes) is a forward pass: run inside
``decide`` on the event loop, it stalls every other request and stream for its duration. Before a
policy that reads the prompt decides, the service awaits ``FeaturePrefetch.warm``: the prompt
joins the batch waiting for that policy, one worker thread computes each batch
(``Policy.warm``, which fills the encoders' caches), and ``decide`` then reads the caches on the
loop in well under a millisecond. Batches form by themselves: while the worker encodes one,
every prompt that arrives waits for the next, so an idle server adds only the thread hop and a
busy one encodes many prompts per forward pass. If warming fails, ``decide`` computes the
features itself as before and reports its own error.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from policies.base import Policy

log = logging.getLogger("expertmux.features")


class FeaturePrefetch:
    """One worker thread (the encoders run single-threaded; a second would only contend)."""

    def __init__(self, *, max_batch: int = 64) -> None:
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="expertmux-features")
        self._waiting: dict[int, tuple[Policy, list[tuple[str, asyncio.Future]]]] = {}
        self._worker: asyncio.Task | None = None
        self.batches = 0  # batches computed, and the prompts in them (tests, metrics)
        self.prompts = 0

    async def warm(self, policy: Policy, prompt: str) -> None:
        """Return once ``policy``'s features of ``prompt`` are cached (or warming failed)."""
        if not policy.reads_prompt:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._waiting.setdefault(id(policy), (policy, []))[1].append((prompt, done))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        await asyncio.shield(done)  # a cancelled request leaves the batch to finish for the others

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            key = next(iter(self._waiting))
            policy, items = self._waiting[key]
            batch, rest = items[: self.max_batch], items[self.max_batch :]
            if rest:
                self._waiting[key] = (policy, rest)
            else:
                del self._waiting[key]
            try:
                await loop.run_in_executor(self._executor, policy.warm, list(dict.fromkeys(p for p, _ in batch)))
                self.batches += 1
                self.prompts += len(batch)
            except Exception:  # decide computes the features itself and reports its own error
                log.warning("warming %s's features for %d prompts failed", policy.name, len(batch), exc_info=True)
            finally:  # never leave a request waiting, even when this task is cancelled
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
