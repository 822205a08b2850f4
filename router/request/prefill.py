"""A policy's features from a local expert's own prefill (llama.cpp experts with ``share_prefill``).

A probe with ``runtime="llamacpp"`` reads hidden states of a GGUF model's prefill. When a local
expert serves that model with ``share_prefill``, the router asks the expert for them
(``POST /v1/prefill``) before deciding: the expert evaluates the conversation into its KV cache
and returns the states, so the routing forward pass is the expert's own prefill. If the policy
then picks that expert, its completion of the same messages starts decoding at once instead of
prefilling again; if it picks another, the proxy did no forward pass of its own.

When no such expert is running, it is busy (every slot answering: the prefill would wait behind
those answers, and the kept prompt would be evicted before its turn), or it fails, nothing is
handed over and the policy computes its features itself, in the feature thread
(``router.request.prefetch``), the same way.
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

log = logging.getLogger("expertmux.prefill")
PREFILL_TIMEOUT_S = 30.0


class SharedPrefill:
    def __init__(self, experts: ExpertRegistry, *, client: httpx.AsyncClient | None = None) -> None:
        self.experts = experts
        self._client = client
        self.handed_over = 0  # prompts whose features came from an expert (tests, metrics)

    def expert_for(self, policy: Policy) -> tuple[Expert, tuple[int, ...]] | None:
        """The running, idle expert that shares its prefill of the model ``policy`` reads, if any."""
        wanted = policy.served_prefill()
        if wanted is None:
            return None
        model, blocks = wanted
        unavailable = self.experts.unavailable()
        for expert in self.experts:
            if (getattr(expert.backend, "shares_prefill", False) and expert.config.model == model
                    and expert.name not in unavailable and expert.in_flight < expert.slots):
                return expert, blocks
        return None

    async def offer(self, policy: Policy, prompt: str, messages: Callable[[], list[dict[str, Any]]]) -> dict[str, Any] | None:
        """Hand ``policy`` the expert's states of this conversation; returns what happened (for the
        decision's record) or None when no expert shares them."""
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
        except Exception as exc:  # the policy computes its features itself
            log.warning("expert %s did not hand over its prefill states: %s", expert.name, exc)
            return {"expert": expert.name, "shared": False}
        finally:
            expert.in_flight -= 1
        self.handed_over += 1
        return {"expert": expert.name, "shared": True, "tokens": int(body.get("tokens", 0)),
                "ms": round((time.perf_counter() - t0) * 1e3, 3)}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
