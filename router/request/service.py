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
from typing import Any

from core.errors import (
    AuthenticationError,
    BudgetExceededError,
    ExpertError,
    ExpertmuxError,
    ModelNotFoundError,
    NoCandidateError,
    PromptTooLongError,
    ShuttingDownError,
)
from core.settings import Settings
from core.types import Decision, RouteRequest, RoutingOptions
from experts import client
from experts.registry import Expert, ExpertRegistry
from policies.base import Policy
from router.access.budgets import BudgetGuard
from router.access.keys import ApiKey, KeyStore
from router.ledger.writer import LedgerWriter
from router.lifecycle.policy_set import PolicySet
from router.request import streaming
from router.request.load import LatencyTracker, adjust_for_load
from router.request.metrics import Metrics
from router.request.prefetch import FeaturePrefetch
from router.request.prefill import SharedPrefill
from router.request.protocol import ChatCompletionRequest, ChatOutcome, parse_chat_request
from router.request.trace import AttemptTrace, RequestTrace

log = logging.getLogger("expertmux.service")

ROUTER_PREFIX = "expertmux/"
_STANDARD_USAGE = {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"}
AUTO_MODEL = "expertmux/auto"


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
        self.features = FeaturePrefetch()  # learned policies' prompt features, off the event loop
        self.prefill = SharedPrefill(experts)  # … or from a local expert's own prefill, kept for its answer
        self.draining = False  # set when a graceful shutdown begins
        # Called with each finished RequestTrace on the event loop (e.g. the judge); must be cheap.
        self.finish_hooks: list[Callable[[RequestTrace], None]] = []
        self.open_ids: set[str] = set()  # requests being served (their ledger row is not submitted yet)
        self.over_time = None  # sessions, budget pacing, shadow (router/request/over_time.py), set by the runtime
        from router.request.agent import AgentService  # generation strategies served next to the policies

        self.agent = AgentService.create(self)  # expertmux/router-r1, or None when disabled
        from router.request.cascade import CascadeService  # policies that read the answer and may escalate

        self.cascade = CascadeService(self)
        agent_names = [] if self.agent is None else [self.agent.model_id.removeprefix(ROUTER_PREFIX)]
        # Metric labels only take the deployment's own names; a client's model string counts as "other".
        metrics.bind(models=self.model_ids, policies=self.policies.names, fixed_policies=agent_names,
                     experts=lambda: [*self.experts.names, *agent_names])

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
            ctx = trace.route = await self.over_time.prepare(req, key) if self.over_time is not None else None
            trace.session_id = ctx.session_key if ctx is not None else None
            routed = self._policy_for(req.model)
            waited = time.perf_counter()
            shared = None
            question = req.routed_text()  # what policies read: the question, as they were fitted on
            if routed is not None and self.settings.features_off_loop:
                shared = await self.prefill.offer(routed[1], question, lambda: req.upstream_payload()["messages"], trace=trace)
                await self.features.warm(routed[1], question)
            waited = time.perf_counter() - waited
            trace.decision = self._route(req, question, routed, ctx, prompt_tokens=len(prompt) // 4 + 1)
            if trace.decision.timing is not None:
                trace.decision.timing["features_ms"] = round(waited * 1e3, 3)
                if shared is not None and shared["shared"]:  # the features were the expert's own prefill
                    trace.decision.timing["shared_prefill_ms"] = shared["ms"]
            if self.cascade.serves(trace.decision):  # a cascade policy: its steps run in router/request/cascade.py
                outcome = await self.cascade.serve(trace, req, prompt, key)
                streaming = outcome.stream is not None
                return outcome
            payload = req.upstream_payload()
            if key is not None and key.limited:
                try:
                    await self._reserve(trace, key, req, payload)
                except BudgetExceededError:  # budget pacing: the cheapest fitting expert before a refusal
                    if self.over_time is None or not self.over_time.downgrade(trace):
                        raise
                    await self._reserve(trace, key, req, payload)
            if req.stream:
                stream = await self._open_stream(trace, payload, include_usage=bool((req.stream_options or {}).get("include_usage")))
                streaming = True
                return self._outcome(trace, stream=stream)
            body_out = await self._complete(trace, payload)
            trace.status, trace.http_status = "ok", 200
            return self._outcome(trace, body=body_out)
        except ExpertmuxError as exc:
            trace.fail(exc, "rejected" if exc.status < 500 and not isinstance(exc, ExpertError) else "error")
            trace.error = exc.operator_message  # the ledger row keeps what the client is not told
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
            trace.release_hold()  # a kept prefill no routed call used (a rejection, an error, a refusal)
            if not streaming:
                self._finish(trace)

    # -- keys and budgets -----------------------------------------------------------------------
    async def _authenticate(self, api_key: str | None) -> ApiKey | None:
        key = await self.keys.lookup(api_key) if api_key else None
        if key is None and self.settings.auth_required:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'" if not api_key
                                      else "invalid or revoked API key")
        return key

    async def _reserve(self, trace: RequestTrace, key: ApiKey, req: ChatCompletionRequest, payload: dict[str, Any]) -> None:
        """Reserve the request's worst case: every candidate expert, its prompt as that expert's
        template and tokenizer count it (or a conservative bound, ``router.access.estimate``), the
        full completion. A limited key's request without ``max_tokens`` is capped at
        ``default_max_tokens`` so that the bound holds."""
        limits = [t for t in (req.max_completion_tokens, req.max_tokens) if t is not None]
        if limits:
            max_out = max(limits)
        else:
            max_out = payload["max_tokens"] = self.settings.default_max_tokens
        trace.reservation = await asyncio.to_thread(self.budgets.reserve_request, key, experts=self._candidates(trace),
                                                    payload=payload, max_completion_tokens=max_out)

    # -- routing --------------------------------------------------------------------------------
    def _policy_for(self, model: str) -> tuple[str, Policy] | None:
        """The policy (its name, itself) that routes a request for ``model``; None for an expert
        named directly. An unknown model or policy is the client's error."""
        if model in self.experts:
            return None
        if not model.startswith(ROUTER_PREFIX):
            raise ModelNotFoundError(
                f"model {model!r} does not exist; use {AUTO_MODEL!r}, 'expertmux/<policy>' or an expert: "
                f"{', '.join(self.experts.names)}", param="model")
        name = self.policies.active_name if model == AUTO_MODEL else model.removeprefix(ROUTER_PREFIX)
        return name, self.policies.get(name)

    def _route(self, req: ChatCompletionRequest, question: str, routed: tuple[str, Policy] | None, ctx=None, *,
               prompt_tokens: int) -> Decision:
        if routed is None:  # a concrete expert: routing bypassed
            model = req.model
            return Decision(expert=model, policy="direct", policy_version="-", scores={}, propensities={model: 1.0},
                            ranking=[model], reason="expert named in the request")
        name, policy = routed
        options = req.expertmux.to_options() if req.expertmux else RoutingOptions()
        if options.allowed_experts:
            unknown = [e for e in options.allowed_experts if e not in self.experts]
            if unknown:
                raise NoCandidateError(f"expertmux.allowed_experts names unknown experts: {unknown}; "
                                       f"known: {self.experts.names}")
        expected = None  # only measured when the request weighs or limits latency
        if options.latency_weight or options.max_latency_s:
            expected = {e.name: self.load.expected_s(e.name, e.in_flight, e.slots) for e in self.experts}
        route_req = RouteRequest(prompt=question, prompt_tokens=prompt_tokens,
                                 max_completion_tokens=req.max_completion_tokens or req.max_tokens or self.settings.default_max_tokens,
                                 options=options, expected_latency_s=expected, session=ctx.view if ctx is not None else None)
        t0 = time.perf_counter()
        lambda_ = self.policies.default_lambda if ctx is None else ctx.lambda_for(options, self.policies.default_lambda)
        unavailable = self.experts.unavailable()
        decision = policy.decide(route_req, lambda_=lambda_, unavailable=unavailable)
        cfg = self.policies.config
        if cfg.latency_weight > 0 or cfg.latency_slo_s is not None:
            expected = {n: self.load.expected_s(n, self.experts[n].in_flight, self.experts[n].slots) for n in decision.scores}
            decision = adjust_for_load(decision, expected, weight=cfg.latency_weight, slo_s=cfg.latency_slo_s)
        if ctx is not None:  # the session rule and budget pacing, above the policy
            decision = ctx.adjust(decision, route_req, unavailable)
        if self.policies.explorer is not None:  # last: the logged propensities are those of the final draw
            decision = self.policies.explorer.apply(decision)
        took = time.perf_counter() - t0
        self.metrics.decision.labels(name).observe(took)
        decision.timing = {"decide_ms": round(took * 1e3, 3)}
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
        expert, attempt, first, chunks = await self._first_chunk(trace, payload)
        return streaming.relay(self, trace, expert, attempt, payload, first, chunks, include_usage)

    async def _first_chunk(self, trace: RequestTrace, payload: dict[str, Any], *, skip: set[str] = frozenset()
                           ) -> tuple[Expert, AttemptTrace, dict[str, Any], AsyncIterator[dict[str, Any]]]:
        """The first candidate (not in ``skip``) whose stream yields a first chunk, with that chunk."""
        last: ExpertError | None = None
        for expert in self._candidates(trace):
            if expert.name in skip or (skip and not expert.breaker.available()):
                continue
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
            return expert, attempt, first, chunks
        raise last or ExpertError("no expert could be called")

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
            attempt.status, attempt.error = "error", exc.operator_message
            if isinstance(exc, ExpertError):  # the expert's fault, not the request's
                self.experts[attempt.expert].breaker.record_failure()
                log.warning("expert %s failed: %s", attempt.expert, exc.operator_message)
        else:
            attempt.status, attempt.error = "client_disconnected", type(exc).__name__
        self.metrics.expert_calls.labels(attempt.expert, attempt.status).inc()

    def _outcome(self, trace: RequestTrace, **kw: Any) -> ChatOutcome:
        d = trace.decision
        return ChatOutcome(request_id=trace.id, expert=trace.served_by.expert, policy=d.policy,
                           policy_version=d.policy_version, **kw)

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
        self.metrics.observe_request(record.request, stream=trace.stream)
