"""The proxy's upstream connections at high concurrency (issue 21: the collapse at 100 clients).

httpcore scans every connection of a pool (a poll() syscall per idle one) whenever a request
asks for a connection or gives one back, so one pool of N connections cost O(N) per request; a
py-spy profile at 100 clients put a third of the event loop there. Calls are spread over small
pools instead: no pool may hold more than ``SHARD_CONNECTIONS``.
"""

from __future__ import annotations

import asyncio

from experts import openai_http
from experts.registry import ExpertRegistry
from tests.conftest import make_settings, remote_expert
from tests.support import fake_openai
from tests.support.servers import serve_in_thread


def _pool_sizes(shards: openai_http._Shards) -> list[int]:
    return [len(c._transport._pool.connections) for c in shards.clients]


def test_200_concurrent_calls_use_small_pools_and_all_succeed(tmp_path):
    behaviour = fake_openai.Behaviour(answer="pooled answer", delay_s=0.3)  # calls overlap
    with serve_in_thread(fake_openai.make_app(behaviour)) as url:
        settings = make_settings(tmp_path, [remote_expert("up", url)])
        expert = ExpertRegistry(settings.app_config.experts, data_dir=settings.data_dir)["up"]
        payload = {"model": "up", "messages": [{"role": "user", "content": "hi"}]}

        async def main() -> tuple[list[dict], list[int], list[int]]:
            async def one_stream() -> str:
                return "".join([(c["choices"][0]["delta"].get("content") or "")
                                async for c in openai_http.stream(expert, payload) if c.get("choices")])

            calls = [openai_http.complete(expert, payload) for _ in range(100)] + [one_stream() for _ in range(100)]
            results = await asyncio.gather(*calls)
            shards = openai_http._shards[asyncio.get_running_loop()]
            sizes, busy = _pool_sizes(shards), list(shards.busy)
            assert len({id(c._transport._pool._ssl_context) for c in shards.clients}) == 1  # one CA bundle load
            await openai_http.aclose()
            return results, sizes, busy

        results, sizes, busy = asyncio.run(main())
    assert [r["choices"][0]["message"]["content"] for r in results[:100]] == ["pooled answer"] * 100
    assert results[100:] == ["pooled answer"] * 100
    assert len(behaviour.calls) == 200
    assert len(sizes) >= 200 // openai_http.SHARD_CONNECTIONS  # the calls were spread
    assert max(sizes) <= openai_http.SHARD_CONNECTIONS
    assert busy == [0] * len(busy)  # every slot given back, streams included
