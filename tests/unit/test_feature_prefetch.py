"""Prompt features off the event loop: batched across requests, in a worker thread, and the
encoders' caches safe to share between that thread and the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from policies.embeddings import Encoder, HashingBackend
from router.request.prefetch import FeaturePrefetch


class SlowFeatures:
    """Stands in for a learned policy: each batch is one 'forward pass' of 50 ms."""

    name = "slow"
    reads_prompt = True

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail = fail

    def warm(self, prompts):
        self.threads.add(threading.current_thread().name)
        time.sleep(0.05)
        if self.fail:
            raise RuntimeError("encoder exploded")
        self.batches.append(list(prompts))


def test_prompts_arriving_together_share_a_batch_computed_off_the_loop():
    policy, prefetch = SlowFeatures(), FeaturePrefetch()

    async def main():
        ticks = 0

        async def ticker():  # counts how often the loop gets to run while features are computed
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(prefetch.warm(policy, f"prompt {i}") for i in range(20)))
        tick.cancel()
        return ticks

    ticks = asyncio.run(main())
    prefetch.close()
    assert sorted(p for b in policy.batches for p in b) == sorted(f"prompt {i}" for i in range(20))
    assert len(policy.batches) <= 3  # 20 prompts, not 20 forward passes
    assert policy.threads and threading.main_thread().name not in policy.threads
    assert ticks >= 10  # ≥ 100 ms of forward passes did not stop the loop


def test_a_failing_warm_lets_the_request_go_on_and_a_plain_policy_costs_nothing():
    class Plain:
        reads_prompt = False

        def warm(self, prompts):  # pragma: no cover - must not be called
            raise AssertionError("a policy that reads no prompt is never warmed")

    policy, prefetch = SlowFeatures(fail=True), FeaturePrefetch()

    async def main():
        await asyncio.wait_for(asyncio.gather(prefetch.warm(policy, "a"), prefetch.warm(policy, "b")), 5)
        await prefetch.warm(Plain(), "c")

    asyncio.run(main())
    prefetch.close()
    assert prefetch.batches == 0 and policy.threads


def test_batches_are_capped():
    policy, prefetch = SlowFeatures(), FeaturePrefetch(max_batch=4)

    async def main():
        await asyncio.gather(*(prefetch.warm(policy, str(i)) for i in range(10)))

    asyncio.run(main())
    prefetch.close()
    assert max(len(b) for b in policy.batches) <= 4 and sum(len(b) for b in policy.batches) == 10


def test_the_encoder_cache_is_shared_safely_between_threads():
    enc = Encoder(HashingBackend())
    enc.max_memory = 50  # constant trimming while other threads insert and read
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                texts = [f"text {int(x)}" for x in rng.integers(0, 500, size=8)]
                out = enc.encode(texts)
                assert out.shape == (8, enc.dim)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:1]
    assert len(enc._memory) <= 50 + 8


@pytest.mark.parametrize("reads", [True, False])
def test_mapped_and_learned_policies_say_whether_they_read_the_prompt(reads):
    from core.types import ExpertInfo
    from policies.base import MappedPolicy
    from policies.data import RoutingData
    from policies.registry import create_policy

    rng = np.random.default_rng(0)
    prompts = [f"question {i} about {'maths' if i % 2 else 'poems'}" for i in range(40)]
    data = RoutingData(prompts=prompts, models=["a", "b"], scores=rng.random((40, 2)), costs=np.full((40, 2), 1e-6))
    policy = create_policy("knn" if reads else "best_single", **({"encoder": "hashing"} if reads else {}))
    policy.fit(data)
    experts = [ExpertInfo(name="x"), ExpertInfo(name="y")]
    mapped = MappedPolicy(policy, experts, {"a": "x", "b": "y"})
    assert policy.reads_prompt is reads and mapped.reads_prompt is reads
    mapped.warm(["question 1 about maths"])  # runs the policy's own prediction path, or nothing
