"""A policy's features from a local expert's own prefill (llama.cpp experts with ``share_prefill``).

A probe with ``runtime="llamacpp"`` reads hidden states of a GGUF model's prefill. When a local
expert serves that model with ``share_prefill``, the router asks the expert for them
(``POST /v1/prefill``) before deciding: the expert evaluates the conversation into its KV cache
and returns the states, so the routing forward pass is the expert's own prefill. If the policy
then picks that expert, its completion of the same messages starts decoding at once instead of
prefilling again; if it picks another, the proxy did no forward pass of its own.

When no such expert is running, it is busy (a request in flight, whatever its configured
``max_concurrency``: llama_cpp.server evaluates one request at a time, so the prefill would wait
behind that answer, and the kept prompt would be evicted before its turn), or it fails, nothing is
handed over and the policy computes its features itself, in the feature thread
(``router.request.prefetch``), the same way.

A kept prompt holds its slot until the request's first call starts (``RequestTrace.hold``):
another request's prefill in between would evict it from the expert's KV cache, so meanwhile
that request computes its own features. The hold is not load: load-aware routing does not see it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from experts.registry import Expert, ExpertRegistry
from policies.base import Policy
from router.request.trace import RequestTrace

log = logging.getLogger("expertmux.prefill")
PREFILL_TIMEOUT_S = 30.0


def _reason(exc: httpx.HTTPStatusError) -> str:
    try:
        return str(exc.response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return exc.response.text[:200]


class SharedPrefill:
    def __init__(self, experts: ExpertRegistry, *, client: httpx.AsyncClient | None = None) -> None:
        self.experts = experts
        self._client = client
        self.handed_over = 0  # prompts whose features came from an expert (tests, metrics)
        self.kept: dict[str, int] = {}  # per expert: prefilled prompts waiting for their request's first call

    def expert_for(self, policy: Policy) -> tuple[Expert, tuple[int, ...]] | None:
        """The running, idle expert that shares its prefill of the model ``policy`` reads, if any."""
        wanted = policy.served_prefill()
        if wanted is None:
            return None
        model, blocks = wanted
        unavailable = self.experts.unavailable()
        for expert in self.experts:
            if (getattr(expert.backend, "shares_prefill", False) and expert.config.model == model
                    and expert.name not in unavailable and expert.in_flight + self.kept.get(expert.name, 0) == 0):
                return expert, blocks
        return None

    async def offer(self, policy: Policy, prompt: str, messages: Callable[[], list[dict[str, Any]]], *,
                    trace: RequestTrace | None = None) -> dict[str, Any] | None:
        """Hand ``policy`` the expert's states of this conversation; returns what happened (for the
        decision's record) or None when no expert shares them. With ``trace``, the expert keeps
        the prompt for that request until its first call starts."""
        found = self.expert_for(policy)
        if found is None:
            return None
        expert, blocks = found
        t0 = time.perf_counter()
        expert.in_flight += 1  # a second request meanwhile finds the expert busy and computes its own features
        try:
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=PREFILL_TIMEOUT_S)
            r = await self._client.post(f"{expert.backend.api_base}/prefill", json={"messages": messages(), "blocks": list(blocks)},
                                        headers={"Authorization": f"Bearer {expert.backend.api_key}"})
            r.raise_for_status()
            body = r.json()
            policy.accept_prefill(prompt, np.asarray(body["features"], dtype=np.float32))
            if trace is not None:
                self.kept[expert.name] = self.kept.get(expert.name, 0) + 1
                trace.hold(lambda: self._release(expert.name))
        except Exception as exc:  # the policy computes its features itself
            refused = isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 400
            # a 400 is this prompt's (longer than the expert's context, or its template cannot format
            # it), expected now and then; anything else is the expert's fault and worth a warning
            log.log(logging.INFO if refused else logging.WARNING, "expert %s did not hand over its prefill states: %s",
                    expert.name, _reason(exc) if refused else exc)
            return {"expert": expert.name, "shared": False}
        finally:
            expert.in_flight -= 1
        self.handed_over += 1
        return {"expert": expert.name, "shared": True, "tokens": int(body.get("tokens", 0)),
                "ms": round((time.perf_counter() - t0) * 1e3, 3)}

    def _release(self, name: str) -> None:
        self.kept[name] -= 1
        if not self.kept[name]:
            del self.kept[name]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
