"""Serving Router-R1 as the virtual model ``expertmux/router-r1``.

The router model is one of the deployment's experts (``router_expert``); each of its steps is a
chat completion with the protocol's stop sequences, and each ``<search>`` is a chat completion
of the named expert. Both go through the same expert client as any request, and every one of
them is an attempt row with its own cost, so the request row's cost is the whole trajectory's.
The client gets the final answer (as SSE chunks when ``stream`` is set); the trajectory comes
back in the extra response field ``expertmux.trace`` and is kept in the ledger's ``decision``.

Configured under ``policy.options.router-r1`` (every key optional)::

    policy:
      options:
        router-r1:
          router_expert: smollm2-135m   # default: smollm2-135m if configured, else the first expert
          candidates: [smollm2-135m, gemma3-270m]   # default: every expert
          max_rounds: 3                 # expert calls per request
          max_retries: 1                # corrections after a malformed step, then the fallback
          fallback_expert: null         # default: the cheapest candidate
          step_max_tokens: 128          # per router step
          expert_max_tokens: 256        # per expert answer (a request's max_tokens caps it)
          enabled: true

A trained router is served by pointing ``router_expert`` at an expert that serves the trained
weights: the PEFT adapter merged into the base model and saved as safetensors (a vLLM expert),
or converted to a GGUF LoRA and loaded by a dedicated llama.cpp expert (``llamacpp.extra_args:
[--lora_path, FILE]``). The adapter is not applied to a shared expert on the fly: llama.cpp
needs a GGUF LoRA, and the shared expert also answers ordinary requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError, ExpertError, ExpertmuxError, NoCandidateError
from core.types import Decision
from experts import client
from policies.router_r1.agent import AgentConfig, AgentResult, ExpertReply, Generation, RouterR1Agent
from policies.router_r1.prompt import Candidate
from policies.router_r1.protocol import doomed
from router.request.protocol import ChatCompletionRequest, ChatOutcome, sse
from router.request.trace import AttemptTrace, RequestTrace

if TYPE_CHECKING:
    from router.access.keys import ApiKey
    from router.request.service import RoutingService

log = logging.getLogger("expertmux.router_r1")

NAME = "router-r1"
MODEL_ID = f"expertmux/{NAME}"
_CHUNK_CHARS = 24  # answer text per SSE chunk


class RouterR1Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = True
    router_expert: str | None = None
    candidates: list[str] | None = Field(None, min_length=1)
    max_rounds: int = Field(3, ge=0, le=10)
    max_retries: int = Field(1, ge=0, le=5)
    fallback_expert: str | None = None
    step_max_tokens: int = Field(128, gt=0)
    expert_max_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0, le=2)
    information_chars: int = Field(600, gt=0)
    adapter: str | None = None  # a trained `expertmux train router-r1` artifact, run in-process (router/agents/r1_local.py)
    threads: int = Field(2, gt=0)  # CPU threads of the in-process router
    cut_malformed_steps: bool = True  # stop a router step as soon as it cannot be well formed


class AgentService:
    """Serves ``expertmux/router-r1`` for a ``RoutingService`` (its experts, ledger, accounting)."""

    model_id = MODEL_ID

    def __init__(self, service: RoutingService, options: RouterR1Options) -> None:
        self.service = service
        self.options = options
        names = service.experts.names
        self.router_expert = options.router_expert or ("smollm2-135m" if "smollm2-135m" in names else names[0])
        self.candidates = list(options.candidates or names)
        for field, value in (("router_expert", [self.router_expert]), ("candidates", self.candidates),
                             ("fallback_expert", [options.fallback_expert] if options.fallback_expert else [])):
            unknown = [n for n in value if n not in service.experts]
            if unknown:
                raise ConfigError(f"policy.options.{NAME}.{field} names unknown experts {unknown}; experts: {names}")
        self.local = None
        self.agent_config = AgentConfig(max_rounds=options.max_rounds, max_retries=options.max_retries,
                                        fallback_expert=options.fallback_expert, information_chars=options.information_chars)
        if options.adapter:
            from core.settings import PROJECT_ROOT
            from router.agents.r1_local import LocalRouter

            self.local = LocalRouter(options.adapter, data_dir=service.settings.data_dir, root=PROJECT_ROOT,
                                     threads=options.threads)
            # Serve with the budgets the router was trained with unless the config says otherwise.
            trained = {k: getattr(self.local.config, k) for k in ("max_rounds", "max_retries")
                       if k not in options.model_fields_set}
            self.agent_config = replace(self.agent_config, **trained)

    @classmethod
    def create(cls, service: RoutingService) -> AgentService | None:
        raw = dict(service.policies.config.options.get(NAME) or {})
        try:
            options = RouterR1Options.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"policy.options.{NAME} is invalid: {problems}") from None
        return cls(service, options) if options.enabled else None

    # -- one request ------------------------------------------------------------------------------
    async def serve(self, trace: RequestTrace, req: ChatCompletionRequest, prompt: str, key: ApiKey | None) -> ChatOutcome:

        candidates = self._candidates(req)
        trace.decision = Decision(
            expert=self.router_expert, policy=NAME, policy_version=self.local.version if self.local else "base", scores={},
            propensities={}, ranking=[c.name for c in candidates],
            reason=f"Router-R1: {self.router_expert} routes among {len(candidates)} experts")
        if key is not None and key.limited:
            await self._reserve(trace, key, prompt)
        expert_max = min(req.max_completion_tokens or req.max_tokens or self.options.expert_max_tokens,
                         self.options.expert_max_tokens)
        if self.local is not None:
            rollout = await self.local.rollout([c.name for c in candidates])
            generate = lambda m, s: self._generate_local(trace, rollout, m, s)  # noqa: E731
        else:
            generate = lambda m, s: self._generate(trace, m, s)  # noqa: E731
        config = self.agent_config
        if config.fallback_expert and config.fallback_expert not in {c.name for c in candidates}:
            config = replace(config, fallback_expert=None)  # allowed_experts excludes it: the cheapest allowed
        agent = RouterR1Agent(candidates, generate, lambda n, q: self._call_expert(trace, n, q, expert_max), config)
        question = req.messages[-1].text() if len(req.messages) == 1 else prompt
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return ChatOutcome(request_id=trace.id, expert=self.router_expert, policy=NAME,
                               stream=self._stream(trace, agent, question, include_usage))
        result = await agent.run(question)
        self._settle(trace, result)
        trace.status, trace.http_status = "ok", 200
        return ChatOutcome(request_id=trace.id, expert=result.answered_by or self.router_expert, policy=NAME,
                           body=self._body(trace, result))

    def _candidates(self, req: ChatCompletionRequest) -> list[Candidate]:
        names = self.candidates
        allowed = req.expertmux.allowed_experts if req.expertmux else None
        if allowed:
            names = [n for n in names if n in allowed]
            if not names:
                raise NoCandidateError(f"expertmux.allowed_experts leaves Router-R1 no candidate; its candidates: "
                                       f"{self.candidates}")
        return [Candidate.from_expert(self.service.experts[n].info) for n in names]

    async def _reserve(self, trace: RequestTrace, key: ApiKey, prompt: str) -> None:
        """Worst case: every generation and every expert call at the dearest price, full context."""
        experts = self.service.experts
        o, cfg = self.options, self.agent_config
        window = max(experts[n].info.context_window for n in [self.router_expert, *self.candidates])
        gen_cost = experts[self.router_expert].cost_usd(window, o.step_max_tokens)
        call_cost = max(experts[n].cost_usd(len(prompt) + 1, o.expert_max_tokens) for n in self.candidates)
        n_gen, n_calls = cfg.max_rounds + cfg.max_retries + 1, cfg.max_rounds + 1
        trace.reservation = await asyncio.to_thread(
            self.service.budgets.reserve, key, max_cost_usd=n_gen * gen_cost + n_calls * call_cost,
            max_tokens=n_gen * (window + o.step_max_tokens) + n_calls * (len(prompt) + 1 + o.expert_max_tokens))

    # -- calls, each an attempt row -----------------------------------------------------------------
    async def _call(self, trace: RequestTrace, name: str, payload: dict[str, Any], details: dict[str, Any]
                    ) -> tuple[str, AttemptTrace]:
        svc = self.service
        expert = svc.experts[name]
        if name in svc.experts.unavailable():
            raise ExpertError(f"expert {name!r} is unavailable", expert=name)
        attempt = trace.start_attempt(name, queue=svc.load.queue(name, expert.in_flight))
        expert.in_flight += 1
        try:
            resp = await client.complete(expert, payload)
        except BaseException as exc:
            svc._attempt_failed(attempt, exc)
            attempt.usage_details = details
            raise
        finally:
            expert.in_flight -= 1
        usage = {**(resp.get("usage") or {}), **(resp.pop("usage_details", None) or {})}
        text = "".join((c.get("message") or {}).get("content") or "" for c in resp.get("choices", []))
        svc._attempt_ok(attempt, expert, payload, usage, text)
        attempt.ttft_ms = attempt.latency_ms
        attempt.usage_details = {**(attempt.usage_details or {}), **details}
        return text, attempt

    async def _generate(self, trace: RequestTrace, messages: list[dict[str, str]], stop: tuple[str, ...]) -> Generation:
        """One router step, streamed so that a step that can no longer be well formed (prose where
        a tag must start) is cut after its first words instead of running to ``step_max_tokens``."""
        svc = self.service
        name = self.router_expert
        expert = svc.experts[name]
        if name in svc.experts.unavailable():
            raise ExpertError(f"expert {name!r} is unavailable", expert=name)
        payload = {"messages": messages, "stop": list(stop), "max_tokens": self.options.step_max_tokens,
                   "temperature": self.options.temperature}
        n = sum(1 for a in trace.attempts if (a.usage_details or {}).get("router_r1") == "generate") + 1
        details: dict[str, Any] = {"router_r1": "generate", "step": n}
        attempt = trace.start_attempt(name, queue=svc.load.queue(name, expert.in_flight))
        expert.in_flight += 1
        chunks = client.stream(expert, payload)
        parts: list[str] = []
        usage: dict[str, Any] = {}
        try:
            async for chunk in chunks:
                if attempt.ttft_ms is None:
                    attempt.ttft_ms = (time.perf_counter() - attempt.t0) * 1000
                usage = chunk.get("usage") or usage
                parts.extend((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or ())
                if self.options.cut_malformed_steps and doomed("".join(parts)):
                    details["cut"] = True  # closing the stream stops the server's generation
                    break
        except BaseException as exc:
            svc._attempt_failed(attempt, exc)
            attempt.usage_details = details
            raise
        finally:
            expert.in_flight -= 1
            await chunks.aclose()
        text = "".join(parts)
        svc._attempt_ok(attempt, expert, payload, usage, text)
        attempt.usage_details = {**(attempt.usage_details or {}), **details}
        return Generation(text, attempt.cost_usd, attempt.prompt_tokens, attempt.completion_tokens)

    async def _generate_local(self, trace: RequestTrace, rollout, messages: list[dict[str, str]],
                              stop: tuple[str, ...]) -> Generation:
        """One step of the in-process trained router: an attempt of ``router-r1`` priced like
        ``router_expert`` (the same base model)."""
        n = sum(1 for a in trace.attempts if (a.usage_details or {}).get("router_r1") == "generate") + 1
        attempt = trace.start_attempt(NAME)
        attempt.usage_details = {"router_r1": "generate", "step": n, "adapter": self.local.version}
        try:
            text, prompt_tokens, completion_tokens = await self.local.step(rollout, messages, stop)
        except BaseException as exc:
            attempt.latency_ms = (time.perf_counter() - attempt.t0) * 1000
            attempt.status, attempt.error = ("error", str(exc)[:300]) if isinstance(exc, Exception) else (
                "client_disconnected", type(exc).__name__)
            raise
        attempt.latency_ms = attempt.ttft_ms = (time.perf_counter() - attempt.t0) * 1000
        attempt.prompt_tokens, attempt.completion_tokens = prompt_tokens, completion_tokens
        attempt.cost_usd = self.service.experts[self.router_expert].cost_usd(prompt_tokens, completion_tokens)
        attempt.status = "ok"
        return Generation(text, attempt.cost_usd, prompt_tokens, completion_tokens)

    async def _call_expert(self, trace: RequestTrace, name: str, query: str, max_tokens: int) -> ExpertReply:
        payload = {"messages": [{"role": "user", "content": query}], "max_tokens": max_tokens}
        text, attempt = await self._call(trace, name, payload, {"router_r1": "search", "query": query[:200]})
        return ExpertReply(text, attempt.cost_usd, attempt.prompt_tokens, attempt.completion_tokens)

    # -- shaping the answer -----------------------------------------------------------------------
    def _settle(self, trace: RequestTrace, result: AgentResult) -> None:
        """Record the trajectory on the decision; an agent that could not answer at all fails."""
        d = trace.decision
        trace.decision = replace(d, expert=result.answered_by or self.router_expert, trajectory={"trace": result.as_trace()})
        served = trace.served_by
        if served is not None and self.service.finish_hooks:
            served.answer = result.answer  # what the judge grades: the answer, not the router's last step
        if result.error:
            fallback = next((c for c in reversed(result.calls) if c.round == 0), None)
            exc = fallback.exception if fallback is not None else None
            raise exc if isinstance(exc, ExpertmuxError) else ExpertError(f"Router-R1 could not answer: {result.error}")

    @staticmethod
    def _usage(trace: RequestTrace) -> dict[str, int]:
        p = sum(a.prompt_tokens for a in trace.attempts)
        c = sum(a.completion_tokens for a in trace.attempts)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _body(self, trace: RequestTrace, result: AgentResult) -> dict[str, Any]:
        return {"id": f"chatcmpl-{trace.id}", "object": "chat.completion", "created": int(time.time()), "model": MODEL_ID,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                             "finish_reason": "stop"}],
                "usage": self._usage(trace), "expertmux": {"request_id": trace.id, "trace": result.as_trace()}}

    async def _stream(self, trace: RequestTrace, agent: RouterR1Agent, question: str, include_usage: bool
                      ) -> AsyncIterator[bytes]:
        """Role chunk at once (the client sees the request is being served), then the answer in
        chunks once the router has it, then the trace and usage; errors end the stream with an
        error event, a client that goes away cancels the calls under way."""

        base = {"id": f"chatcmpl-{trace.id}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": MODEL_ID}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        try:
            yield chunk({"role": "assistant", "content": ""})
            result = await agent.run(question)
            self._settle(trace, result)
            for i in range(0, len(result.answer), _CHUNK_CHARS):
                yield chunk({"content": result.answer[i:i + _CHUNK_CHARS]})
            yield chunk({}, "stop", expertmux={"request_id": trace.id, "trace": result.as_trace()})
            if include_usage:
                yield sse({**base, "choices": [], "usage": self._usage(trace)})
            trace.status, trace.http_status = "ok", 200
            yield b"data: [DONE]\n\n"
        except ExpertmuxError as exc:
            trace.fail(exc, "error")
            yield sse({"error": {"message": exc.message, "type": exc.error_type, "code": exc.code, "param": None}})
        except Exception as exc:  # a fault of ours after the first byte: still a clean end of stream
            log.exception("Router-R1 stream failed")
            trace.fail(exc, "error")
            yield sse({"error": {"message": "internal error", "type": "server_error", "code": None, "param": None}})
        except BaseException as exc:  # the client went away: generator closed or task cancelled
            trace.fail(exc, "client_disconnected")
            raise
        finally:
            self.service._finish(trace)
