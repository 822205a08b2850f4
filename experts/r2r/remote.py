"""R2R over two OpenAI-compatible servers (vLLM, llama.cpp): the GPU deployment.

The same loop as the local engine, over ``POST /v1/completions`` with ``logprobs``: the SLM
server is asked for a chunk of greedy tokens with their top-k log-probabilities, the router
reads them in order, and at the first token it rejects the rest of the chunk is dropped and the
LLM server writes that one position (``max_tokens=1``). Every request carries the whole prompt
and transcript as text; the servers' prefix caches (vLLM automatic prefix caching, llama.cpp's
``cache_prompt``) keep the KV of the common prefix, so a model only prefills what it has not
seen. What this costs against the in-process engine is written up in the README section.

Limits: no hidden states (the router must be trained with ``--features logits``); an SLM
end-of-sequence ends the answer (the API returns no log-probabilities for it).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import httpx
import numpy as np

from core.errors import ConfigError, ExpertError
from experts.r2r.engine import LLM, SLM, GenerationStats, Step
from experts.r2r.features import TOP_K, Proposal
from experts.r2r.prompts import render
from experts.r2r.routers import Router


class RemotePair:
    def __init__(self, *, slm_url: str, slm_model: str, llm_url: str, llm_model: str, slm_format: str, llm_format: str,
                 api_key: str | None = None, chunk: int = 8, top_k: int = TOP_K, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.slm_url, self.llm_url = slm_url.rstrip("/"), llm_url.rstrip("/")
        self.slm_model, self.llm_model = slm_model, llm_model
        self.slm_format, self.llm_format = slm_format, llm_format
        self.chunk, self.top_k = max(1, chunk), top_k
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers, transport=transport)

    def _complete(self, url: str, model: str, prompt: str, max_tokens: int, logprobs: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        if logprobs:
            body["logprobs"] = logprobs
        try:
            r = self.http.post(f"{url}/completions", json=body)
        except httpx.HTTPError as exc:
            raise ExpertError(f"R2R model server {url} unreachable: {exc}") from exc
        if r.status_code != 200:
            raise ExpertError(f"R2R model server {url} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def generate(self, messages: list[dict[str, Any]], *, router: Router, max_tokens: int,
                 stats: GenerationStats | None = None) -> Generator[Step, None, GenerationStats]:
        if router.needs_hidden:
            raise ConfigError("this router reads SLM hidden states, which remote servers do not return; "
                              "train one with `expertmux train r2r --features logits`")
        stats = stats if stats is not None else GenerationStats()
        stats.router = router.describe()
        calls = stats.extra
        calls.update(slm_calls=0, llm_calls=0, slm_discarded_tokens=0)
        t0 = time.perf_counter()
        router.reset()
        slm_prompt, llm_prompt = render(self.slm_format, messages), render(self.llm_format, messages)
        text = ""
        pos = first_read = 0
        try:
            while pos < max_tokens:
                resp = self._complete(self.slm_url, self.slm_model, slm_prompt + text, min(self.chunk, max_tokens - pos),
                                      self.top_k)
                calls["slm_calls"] += 1
                choice = resp["choices"][0]
                if not stats.slm.prompt_tokens:
                    stats.slm.prompt_tokens = int((resp.get("usage") or {}).get("prompt_tokens") or 0)
                lp = choice.get("logprobs") or {}
                tokens, tops = lp.get("tokens") or [], lp.get("top_logprobs") or []
                handed = False
                for j, piece in enumerate(tokens):
                    top = sorted((tops[j] or {}).values(), reverse=True)[: self.top_k] if j < len(tops) else []
                    prop = Proposal(token=None, piece=piece.encode(), is_eog=False, position=pos,
                                    top_logprobs=np.asarray(top or [0.0], dtype=np.float32))
                    if router.hand_over(prop):
                        calls["slm_discarded_tokens"] += len(tokens) - j
                        handed = True
                        break
                    text += piece
                    pos += 1
                    stats.slm_tokens += 1
                    yield Step(SLM, -1, prop.piece, prop)
                if handed:
                    llm = self._complete(self.llm_url, self.llm_model, llm_prompt + text, 1, None)
                    calls["llm_calls"] += 1
                    read = int((llm.get("usage") or {}).get("prompt_tokens") or 0)
                    first_read = first_read or read
                    stats.llm.prompt_tokens = first_read
                    piece = llm["choices"][0].get("text") or ""
                    if not piece:
                        stats.finish_reason = "stop"
                        break
                    text += piece
                    pos += 1
                    stats.llm_tokens += 1
                    # with a prefix cache the LLM reads each transcript token once: the growth of
                    # its prompt since its first call (``usage`` subtracts its own tokens again)
                    stats.llm.generated_evaluated = read - first_read + stats.llm_tokens
                    yield Step(LLM, -1, piece.encode(), prop)
                elif choice.get("finish_reason") == "stop" or not tokens:
                    stats.finish_reason = "stop"
                    break
        finally:
            stats.seconds = time.perf_counter() - t0
        return stats
