"""The routing service: select → call → record, for one chat request.

Routes stay thin: they hand the raw body to ``RoutingService.chat`` and shape what it returns.
Every request — answered, failed, rejected or abandoned by the client — yields exactly one
ledger row, handed to the batched writer after the response (never on the response path).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from experts import client
from experts.registry import Expert, ExpertRegistry
from router.budgets import BudgetGuard
from router.errors import (
    AuthenticationError,
    ExpertError,
    ExpertmuxError,
    ModelNotFoundError,
    NoCandidateError,
    PromptTooLongError,
    ShuttingDownError,
)
from router.keys import ApiKey, KeyStore
from router.ledger.writer import LedgerWriter
from router.load import LatencyTracker, adjust_for_load
from router.metrics import Metrics
from router.policy_set import PolicySet
from router.protocol import ChatCompletionRequest, parse_chat_request
from router.settings import Settings
from router.trace import AttemptTrace, RequestTrace
from router.types import Decision, RouteRequest, RoutingOptions

log = logging.getLogger("expertmux.service")

ROUTER_PREFIX = "expertmux/"
_STANDARD_USAGE = {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"}
AUTO_MODEL = "expertmux/auto"


@dataclass(slots=True)
class ChatOutcome:
    """What a route needs to answer: a JSON body or an SSE byte stream, plus headers."""

    request_id: str
    expert: str
    policy: str
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"x-expertmux-request-id": self.request_id, "x-expertmux-expert": self.expert,
                "x-expertmux-policy": self.policy}


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage_chunk(like: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The final usage-only chunk (``stream_options.include_usage``) for upstreams that send none."""
    return {"id": like.get("id"), "object": "chat.completion.chunk", "created": like.get("created"),
            "model": like.get("model"), "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class RoutingService:
    def __init__(self, *, settings: Settings, experts: ExpertRegistry, policies: PolicySet,
                 ledger: LedgerWriter, metrics: Metrics, keys: KeyStore, budgets: BudgetGuard) -> None:
        self.settings = settings
        self.experts = experts
        self.policies = policies
        self.ledger = ledger
        self.metrics = metrics
        self.keys = keys
        self.budgets = budgets
        self.load = LatencyTracker()
        self.draining = False  # set when a graceful shutdown begins
        # Called with each finished RequestTrace on the event loop (e.g. the judge); must be cheap.
        self.finish_hooks: list[Callable[[RequestTrace], None]] = []
        self.open_ids: set[str] = set()  # requests being served (their ledger row is not submitted yet)
        from router.agent_service import AgentService  # generation strategies served next to the policies

        self.agent = AgentService.create(self)  # expertmux/router-r1, or None when disabled

    # -- public ---------------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        """What ``/v1/models`` lists: the router's virtual models, then the experts."""
        agents = [self.agent.model_id] if self.agent is not None else []
        return [AUTO_MODEL] + [ROUTER_PREFIX + p for p in self.policies.names()] + agents + self.experts.names

    async def chat(self, read_body: Callable[[], Awaitable[bytes]], *, api_key: str | None = None) -> ChatOutcome:
        """Serve one chat request; ``read_body`` returns the raw JSON body (or raises on a size limit)."""
        trace = RequestTrace(id=uuid.uuid4().hex)
        self.open_ids.add(trace.id)
        streaming = False
        try:
            key = await self._authenticate(api_key)
            if key is not None:
                trace.api_key_id, trace.tenant = key.id, key.tenant
            req = parse_chat_request(await read_body())
            trace.requested_model, trace.stream = req.model, req.stream
            prompt = req.prompt_text()
            trace.set_prompt(prompt, (key.prompt_storage if key else None) or self.settings.prompt_storage)
            if len(prompt) > self.settings.max_prompt_chars:
                raise PromptTooLongError(
                    f"prompt has {len(prompt)} characters; this deployment accepts at most {self.settings.max_prompt_chars}",
                    param="messages")
            if self.agent is not None and req.model == self.agent.model_id:  # a multi-round generation strategy
                outcome = await self.agent.serve(trace, req, prompt, key)
                streaming = outcome.stream is not None  # the stream records the request when it ends
                return outcome
            trace.decision = self._route(req, prompt)
            payload = req.upstream_payload()
            if key is not None and key.limited:
                await self._reserve(trace, key, req, payload, prompt)
            if req.stream:
                stream = await self._open_stream(trace, payload, include_usage=bool((req.stream_options or {}).get("include_usage")))
                streaming = True
                return self._outcome(trace, stream=stream)
            body_out = await self._complete(trace, payload)
            trace.status, trace.http_status = "ok", 200
            return self._outcome(trace, body=body_out)
        except ExpertmuxError as exc:
            trace.fail(exc, "rejected" if exc.status < 500 and not isinstance(exc, ExpertError) else "error")
            exc.request_id = trace.id  # the error response names the ledger row too
            raise
        except (asyncio.CancelledError, GeneratorExit) as exc:
            if self.draining:  # cancelled by a shutdown that ran out of grace time, not by the client
                trace.fail(ShuttingDownError("the server shut down before the answer was ready; retry the request"), "error")
            else:
                trace.fail(exc, "client_disconnected")
            raise
        except Exception as exc:
            trace.fail(exc, "error")
            raise
        finally:
            if not streaming:
                self._finish(trace)

    # -- keys and budgets -----------------------------------------------------------------------
    async def _authenticate(self, api_key: str | None) -> ApiKey | None:
        key = await self.keys.lookup(api_key) if api_key else None
        if key is None and self.settings.auth_required:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'" if not api_key
                                      else "invalid or revoked API key")
        return key

    async def _reserve(self, trace: RequestTrace, key: ApiKey, req: ChatCompletionRequest, payload: dict[str, Any],
                       prompt: str) -> None:
        """Reserve the request's worst-case cost: every candidate expert, the full completion.

        Characters bound the prompt's tokens from above, and a limited key's completion is capped
        (``default_max_tokens`` when the request sets none), so the reservation is a true maximum.
        """
        max_out = req.max_completion_tokens or req.max_tokens
        if max_out is None:
            max_out = payload["max_tokens"] = self.settings.default_max_tokens
        max_cost = max(e.cost_usd(len(prompt), max_out) for e in self._candidates(trace))
        trace.reservation = await asyncio.to_thread(self.budgets.reserve, key, max_cost_usd=max_cost,
                                                    max_tokens=len(prompt) + max_out)

    # -- routing --------------------------------------------------------------------------------
    def _route(self, req: ChatCompletionRequest, prompt: str) -> Decision:
        model = req.model
        if model in self.experts:  # a concrete expert: routing bypassed
            return Decision(expert=model, policy="direct", policy_version="-", scores={}, propensities={model: 1.0},
                            ranking=[model], reason="expert named in the request")
        if not model.startswith(ROUTER_PREFIX):
            raise ModelNotFoundError(
                f"model {model!r} does not exist; use {AUTO_MODEL!r}, 'expertmux/<policy>' or an expert: "
                f"{', '.join(self.experts.names)}", param="model")
        name = self.policies.active_name if model == AUTO_MODEL else model.removeprefix(ROUTER_PREFIX)
        policy = self.policies.get(name)
        options = req.expertmux.to_options() if req.expertmux else RoutingOptions()
        if options.allowed_experts:
            unknown = [e for e in options.allowed_experts if e not in self.experts]
            if unknown:
                raise NoCandidateError(f"expertmux.allowed_experts names unknown experts: {unknown}; "
                                       f"known: {self.experts.names}")
        expected = None  # only measured when the request weighs or limits latency
        if options.latency_weight or options.max_latency_s:
            expected = {e.name: self.load.expected_s(e.name, e.in_flight, e.slots) for e in self.experts}
        route_req = RouteRequest(prompt=prompt, prompt_tokens=len(prompt) // 4 + 1,
                                 max_completion_tokens=req.max_completion_tokens or req.max_tokens or self.settings.default_max_tokens,
                                 options=options, expected_latency_s=expected)
        t0 = time.perf_counter()
        decision = policy.decide(route_req, lambda_=self.policies.default_lambda, unavailable=self.experts.unavailable())
        cfg = self.policies.config
        if cfg.latency_weight > 0 or cfg.latency_slo_s is not None:
            expected = {n: self.load.expected_s(n, self.experts[n].in_flight, self.experts[n].slots) for n in decision.scores}
            decision = adjust_for_load(decision, expected, weight=cfg.latency_weight, slo_s=cfg.latency_slo_s)
        if self.policies.explorer is not None:  # last: the logged propensities are those of the final draw
            decision = self.policies.explorer.apply(decision)
        self.metrics.decision.labels(name).observe(time.perf_counter() - t0)
        return decision

    def _candidates(self, trace: RequestTrace) -> list[Expert]:
        ranking = trace.decision.ranking[: self.settings.max_attempts]
        return [self.experts[n] for n in ranking]

    # -- calling experts ------------------------------------------------------------------------
    async def _complete(self, trace: RequestTrace, payload: dict[str, Any]) -> dict[str, Any]:
        """Non-streaming call with fallback to the next candidate on expert failure."""
        last: ExpertError | None = None
        for expert in self._candidates(trace):
            attempt = trace.start_attempt(expert.name, queue=self.load.queue(expert.name, expert.in_flight))
            expert.in_flight += 1
            try:
                resp = await client.complete(expert, payload)
            except ExpertError as exc:
                self._attempt_failed(attempt, exc)
                last = exc
                continue
            except BaseException as exc:
                self._attempt_failed(attempt, exc)
                raise
            finally:
                expert.in_flight -= 1
            usage = {**(resp.get("usage") or {}), **(resp.pop("usage_details", None) or {})}
            text = "".join((c.get("message") or {}).get("content") or "" for c in resp.get("choices", []))
            self._attempt_ok(attempt, expert, payload, usage, text)
            attempt.ttft_ms = attempt.latency_ms
            return resp
        raise last or ExpertError("no expert could be called")

    async def _open_stream(self, trace: RequestTrace, payload: dict[str, Any], *, include_usage: bool) -> AsyncIterator[bytes]:
        """Open a stream; fall back to the next candidate until the first chunk has arrived."""
        last: ExpertError | None = None
        for expert in self._candidates(trace):
            attempt = trace.start_attempt(expert.name, queue=self.load.queue(expert.name, expert.in_flight))
            expert.in_flight += 1
            chunks = client.stream(expert, payload)
            try:
                first = await anext(chunks)
            except (ExpertError, StopAsyncIteration) as exc:
                expert.in_flight -= 1
                exc = exc if isinstance(exc, ExpertError) else ExpertError(f"expert {expert.name!r} sent an empty stream",
                                                                            expert=expert.name)
                self._attempt_failed(attempt, exc)
                last = exc
                continue
            except BaseException as exc:
                expert.in_flight -= 1
                self._attempt_failed(attempt, exc)
                raise
            attempt.ttft_ms = (time.perf_counter() - attempt.t0) * 1000
            return self._relay(trace, expert, attempt, payload, first, chunks, include_usage)
        raise last or ExpertError("no expert could be called")

    async def _relay(self, trace: RequestTrace, expert: Expert, attempt: AttemptTrace, payload: dict[str, Any],
                     first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]], include_usage: bool) -> AsyncIterator[bytes]:
        usage: dict[str, Any] = {}
        details: dict[str, Any] = {}
        text: list[str] = []
        saw_usage = False
        try:
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                if chunk.get("usage"):
                    usage, saw_usage = {**chunk["usage"], **details}, True
                if "usage_details" in chunk:  # expertmux backends' extras; not part of the OpenAI schema
                    details = chunk.pop("usage_details") or {}
                    usage = {**usage, **details}
                for choice in chunk.get("choices") or ():
                    text.append((choice.get("delta") or {}).get("content") or "")
                if chunk.get("choices") or include_usage:
                    if not include_usage:
                        chunk.pop("usage", None)
                    yield _sse(chunk)
                chunk = await anext(chunks, None)
            self._attempt_ok(attempt, expert, payload, usage, "".join(text))
            if include_usage and not saw_usage:  # e.g. llama.cpp's server: usage as counted by us
                yield _sse(_usage_chunk(first, attempt.prompt_tokens, attempt.completion_tokens))
            trace.status, trace.http_status = "ok", 200
            yield b"data: [DONE]\n\n"
        except ExpertmuxError as exc:  # failure after the first byte: end the stream with an error event
            self._attempt_failed(attempt, exc)
            trace.fail(exc, "error")
            yield _sse({"error": {"message": exc.message, "type": exc.error_type, "code": exc.code, "param": None}})
        except BaseException as exc:  # client went away (cancellation / generator close)
            self._attempt_failed(attempt, exc)
            trace.fail(exc, "client_disconnected")
            raise
        finally:
            expert.in_flight -= 1
            await chunks.aclose()
            self._finish(trace)

    # -- accounting -----------------------------------------------------------------------------
    def _attempt_ok(self, attempt: AttemptTrace, expert: Expert, payload: dict[str, Any], usage: dict[str, Any], text: str) -> None:
        attempt.latency_ms = (time.perf_counter() - attempt.t0) * 1000
        attempt.prompt_tokens = int(usage.get("prompt_tokens") or 0) or client.count_tokens(expert, messages=payload["messages"])
        attempt.completion_tokens = int(usage.get("completion_tokens") or 0) or (client.count_tokens(expert, text=text) if text else 0)
        attempt.cost_usd = expert.cost_usd(attempt.prompt_tokens, attempt.completion_tokens)
        extra = {k: v for k, v in usage.items() if k not in _STANDARD_USAGE and v is not None}
        if extra:
            attempt.usage_details = extra
            # A backend that prices its own mix of models (e.g. R2R) reports the cost it incurred.
            if isinstance(extra.get("cost_usd"), int | float):
                attempt.cost_usd = float(extra["cost_usd"])
        attempt.status = "ok"
        if self.finish_hooks:
            attempt.answer = text
        expert.breaker.record_success()
        self.load.observe(expert.name, attempt.latency_ms / 1000, attempt.queue_at_start, expert.slots)
        self.metrics.expert_calls.labels(expert.name, "ok").inc()

    def _attempt_failed(self, attempt: AttemptTrace, exc: BaseException) -> None:
        attempt.latency_ms = (time.perf_counter() - attempt.t0) * 1000
        if isinstance(exc, ExpertmuxError):
            attempt.status, attempt.error = "error", exc.message
            if isinstance(exc, ExpertError):  # the expert's fault, not the request's
                self.experts[attempt.expert].breaker.record_failure()
        else:
            attempt.status, attempt.error = "client_disconnected", type(exc).__name__
        self.metrics.expert_calls.labels(attempt.expert, attempt.status).inc()

    def _outcome(self, trace: RequestTrace, **kw: Any) -> ChatOutcome:
        d = trace.decision
        return ChatOutcome(request_id=trace.id, expert=trace.served_by.expert, policy=d.policy, **kw)

    def _finish(self, trace: RequestTrace) -> None:
        """Hand the request's rows to the ledger writer, exactly once."""
        if trace.recorded:
            return
        trace.recorded = True
        self.open_ids.discard(trace.id)
        if trace.status == "pending":
            trace.status = "error"
        record = trace.to_record()
        self.ledger.submit(record)
        for hook in self.finish_hooks:
            try:
                hook(trace)
            except Exception:  # a hook must never cost a request its answer or its row
                log.exception("finish hook %r failed", hook)
        row = record.request
        expert = row["expert"] or "-"
        self.metrics.requests.labels(row["requested_model"] or "-", row["policy"] or "-", expert, row["status"]).inc()
        if row["status"] == "ok":
            self.metrics.latency.labels(expert).observe(row["latency_ms"] / 1000)
            if trace.stream and row["ttft_ms"] is not None:
                self.metrics.ttft.labels(expert).observe(row["ttft_ms"] / 1000)
            self.metrics.cost.labels(expert).inc(row["cost_usd"])
            self.metrics.tokens.labels(expert, "prompt").inc(row["prompt_tokens"])
            self.metrics.tokens.labels(expert, "completion").inc(row["completion_tokens"])
