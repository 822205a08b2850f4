"""The proxy's upstream connections at high concurrency (issue 21: the collapse at 100 clients).

httpcore scans every connection of a pool (a poll() syscall per idle one) whenever a request
asks for a connection or gives one back, and requests in a pool of several connections queued
behind one another (a tail of seconds at 100 clients). Each call gets a client of its own
connection from a free list: no client ever holds two connections, and concurrent calls never
share one.
"""

from __future__ import annotations

import asyncio

from experts import openai_http
from experts.registry import ExpertRegistry
from tests.conftest import make_settings, remote_expert
from tests.support import fake_openai
from tests.support.servers import serve_in_thread


def _pool_sizes(clients: openai_http._Clients) -> list[int]:
    return [len(c._transport._pool.connections) for c in clients.clients]


def test_200_concurrent_calls_each_get_a_connection_of_their_own_and_all_succeed(tmp_path):
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
            clients = openai_http._clients[asyncio.get_running_loop()]
            sizes, idle = _pool_sizes(clients), sorted(clients.idle)
            assert len({id(c._transport._pool._ssl_context) for c in clients.clients}) == 1  # one CA bundle load
            again = await openai_http.complete(expert, payload)  # an idle client is reused, none added
            reused = len(clients.clients) == len(sizes)
            await openai_http.aclose()
            return results, sizes, idle, again, reused

        results, sizes, idle, again, reused = asyncio.run(main())
    assert [r["choices"][0]["message"]["content"] for r in results[:100]] == ["pooled answer"] * 100
    assert results[100:] == ["pooled answer"] * 100
    assert len(behaviour.calls) == 201
    assert len(sizes) >= 150  # the calls overlapped (0.3 s each), so most ran on a connection of their own
    assert max(sizes) == 1  # never two connections in one client: nothing to scan, nothing to queue behind
    assert idle == list(range(len(sizes)))  # every client given back, streams included
    assert again["choices"][0]["message"]["content"] == "pooled answer" and reused
