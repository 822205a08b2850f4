"""Serving cascade policies: route, read the answer, escalate only when it pays.

A request routed by a policy with a step method (``policies.cascade``: ``expertmux/cascade``,
``expertmux/cascade_route``, ``expertmux/cascade_threshold``, or ``expertmux/auto`` while one is
active) runs here instead of the one-call path. The policy's decision is the first expert; after
each answer the policy is asked ``next_step(request, answers in hand)``: the next expert, or stop
and answer with one of the answers in hand. The policy never calls anything; this module calls,
pays and records:

* every step is an attempt row of the same request, with the step's estimates in its
  ``usage_details.cascade`` (the expert's ex-ante estimate before it ran, its post-hoc estimate
  after, whether its answer was returned); the request row's cost is the sum of all steps, and the
  decision JSON keeps the whole trajectory (``cascade``);
* caps: ``max_steps`` calls and ``max_usd`` per request (``policy.options.cascades``), the
  request's own ``expertmux.max_cost_usd`` as a cap on the sum, and the key's budgets: a limited
  key reserves each step's worst case before the step runs (the reservation grows, the request
  is counted once);
* a step whose expert fails falls back: the policy is asked again with that expert unavailable
  (the next best step, or an answer already in hand); with no answer at all the error is the
  request's, as on the one-call path;
* streaming: every step is a non-streaming upstream call and nothing is sent before the policy
  stops, so no byte of a discarded answer reaches the client; the answer is then sent as SSE
  chunks. The time to first byte this adds is in the trajectory (``first_byte_ms``, ``escalation_ms``).

Configured under ``policy.options.cascades`` (every key optional)::

    policy:
      options:
        cascade: {artifact: var/policies/cascade/v1}
        cascades: {max_steps: 3, max_usd: 0.01, logprobs: true, judge: false}
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import (
    BudgetExceededError,
    ConfigError,
    ExpertError,
    ExpertmuxError,
    InvalidRequestError,
    NoCandidateError,
    RateLimitError,
)
from core.types import Decision, RouteRequest, RoutingOptions
from experts import client
from policies.posthoc import AnswerView, parse_logprobs
from router.request.protocol import ChatCompletionRequest, ChatOutcome, sse
from router.request.trace import AttemptTrace, RequestTrace

if TYPE_CHECKING:
    from router.access.keys import ApiKey
    from router.request.service import RoutingService

log = logging.getLogger("expertmux.cascade")

OPTIONS_KEY = "cascades"
_CHUNK_CHARS = 24  # answer text per SSE chunk


class CascadeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_steps: int | None = Field(None, ge=1, le=16)  # default: the policy's own depth
    max_usd: float | None = Field(None, gt=0)  # per request, every step included
    logprobs: bool = True  # ask each step for token logprobs when the policy's estimator reads them
    judge: bool = False  # ask the configured LLM judge about each answer when the estimator reads verdicts


class CascadeService:
    """Runs the steps of cascade policies for a ``RoutingService`` (its experts, budgets, ledger)."""

    def __init__(self, service: RoutingService) -> None:
        self.service = service
        self.judge = None  # router.learning.judge.Judge, set by the runtime when one is configured
        raw = dict(service.policies.config.options.get(OPTIONS_KEY) or {})
        try:
            self.options = CascadeOptions.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"policy.options.{OPTIONS_KEY} is invalid: {problems}") from None

    def serves(self, decision: Decision) -> bool:
        """Whether the request's policy is a cascade (it has a step method)."""
        policies = self.service.policies
        return decision.policy in policies.names() and hasattr(policies.get(decision.policy), "next_step")

    # -- one request --------------------------------------------------------------------------------
    async def serve(self, trace: RequestTrace, req: ChatCompletionRequest, prompt: str, key: ApiKey | None) -> ChatOutcome:
        svc, first = self.service, trace.decision
        policy = svc.policies.get(first.policy)
        options = req.expertmux.to_options() if req.expertmux else RoutingOptions()
        max_out = req.max_completion_tokens or req.max_tokens or svc.settings.default_max_tokens
        question = req.routed_text()  # what the policy and its answer estimator read (the judge reads the whole prompt)
        route_req = RouteRequest(prompt=question, prompt_tokens=len(prompt) // 4 + 1, max_completion_tokens=max_out,
                                 options=options)
        lam = options.lambda_ if options.lambda_ is not None else svc.policies.default_lambda
        caps = [c for c in (self.options.max_usd, options.max_cost_usd) if c is not None]
        budget = min(caps) if caps else None
        max_steps = self.options.max_steps or getattr(policy, "depth_", None) or len(policy.expert_names)
        payload = req.upstream_payload()
        if key is not None and key.limited and not any(t is not None for t in (req.max_completion_tokens, req.max_tokens)):
            payload["max_tokens"] = max_out  # a limited key's bound needs a cap on each step's answer
        estimator = getattr(getattr(policy, "quality_", None), "estimator", None)
        want_logprobs = self.options.logprobs and getattr(estimator, "needs", "") == "logprobs"
        want_judge = self.options.judge and self.judge is not None and getattr(estimator, "needs", "") == "judge"
        run = _Run(steps=[], attempts=[], answers=[], responses={}, failed=set())
        expert, estimates = first.expert, {}
        while expert is not None:
            try:
                await self._reserve(trace, key, expert, payload, max_out)
            except (BudgetExceededError, RateLimitError):
                if not run.answers:  # the first step: the request's refusal, as on the one-call path
                    raise
                run.stopped = "the key's budget or rate limit refused the next step"
                break
            await self._step(trace, run, expert, estimates.get(expert), payload, (question, prompt), want_logprobs, want_judge)
            if len(run.failed) >= svc.settings.max_attempts:  # fallbacks as bounded as on the one-call path
                run.stopped = f"{len(run.failed)} experts failed"
                break
            spent = sum(a.cost_usd for a in trace.attempts)
            unavailable = frozenset(svc.experts.unavailable()) | frozenset(run.failed) | {v.expert for v in run.answers}
            try:
                step = await asyncio.to_thread(
                    policy.next_step, route_req, list(run.answers), lambda_=lam, unavailable=unavailable,
                    max_steps=max(0, max_steps - len(run.answers)),
                    budget_usd=None if budget is None else max(0.0, budget - spent))
            except NoCandidateError:
                if run.last_error is not None:  # nothing answered and nothing left to try: the expert's error
                    raise run.last_error from None
                raise
            for s in run.steps:  # each answer's post-hoc estimate as first read
                if s["status"] == "ok" and "posthoc" not in s and s["expert"] in step.estimates:
                    s["posthoc"] = step.estimates[s["expert"]]
            expert, estimates, run.final = step.expert, step.estimates, step.answer_with
        if not run.answers:
            raise run.last_error or ExpertError("no expert of the cascade could answer")
        if run.final is None or run.final not in run.responses:  # stopped by a cap: the best answer in hand
            run.final = max((s for s in run.steps if s["status"] == "ok"), key=lambda s: s.get("posthoc") or 0.0)["expert"]
        return self._finish(trace, req, policy, run)

    # -- calls, each an attempt row of the request ------------------------------------------------
    async def _step(self, trace: RequestTrace, run: _Run, expert: str, ex_ante: float | None, payload: dict[str, Any],
                    texts: tuple[str, str], want_logprobs: bool, want_judge: bool) -> None:
        """Call one step's expert and note what came back (an answer, or a failure to fall back from)."""
        n_attempts = len(trace.attempts)
        try:
            resp, attempt = await self._call(trace, expert, payload, want_logprobs)
        except ExpertError as exc:
            run.failed.add(expert)
            run.last_error = exc
            run.steps.append({"expert": expert, "status": "error", "ex_ante": ex_ante})
            run.attempts.append(trace.attempts[n_attempts] if len(trace.attempts) > n_attempts else None)
            return
        run.attempts.append(attempt)
        question, prompt = texts
        view = self._view(question, expert, resp)
        if want_judge:
            view = await self._judged(trace, prompt, view)
        run.answers.append(view)
        run.responses[expert] = (resp, attempt)
        run.steps.append({"expert": expert, "status": "ok", "ex_ante": ex_ante, "cost_usd": attempt.cost_usd,
                          "latency_ms": round(attempt.latency_ms or 0.0, 1)})

    async def _call(self, trace: RequestTrace, name: str, payload: dict[str, Any], logprobs: bool
                    ) -> tuple[dict[str, Any], AttemptTrace]:
        svc = self.service
        expert = svc.experts[name]
        if name in svc.experts.unavailable():
            raise ExpertError(f"expert {name!r} is unavailable", expert=name)
        body = dict(payload)
        if logprobs and not payload.get("logprobs"):
            body.update(logprobs=True, top_logprobs=5)
        attempt = trace.start_attempt(name, queue=svc.load.queue(name, expert.in_flight))
        expert.in_flight += 1
        try:
            try:
                resp = await client.complete(expert, body)
            except InvalidRequestError:
                if body is payload or "logprobs" in payload:
                    raise
                resp = await client.complete(expert, payload)  # an expert that refuses logprobs: ask without
        except BaseException as exc:
            svc._attempt_failed(attempt, exc)
            raise
        finally:
            expert.in_flight -= 1
        usage = {**(resp.get("usage") or {}), **(resp.pop("usage_details", None) or {})}
        text = "".join((c.get("message") or {}).get("content") or "" for c in resp.get("choices", []))
        svc._attempt_ok(attempt, expert, payload, usage, text)
        attempt.ttft_ms = attempt.latency_ms
        attempt.answer = text
        return resp, attempt

    async def _reserve(self, trace: RequestTrace, key: ApiKey | None, expert: str, payload: dict[str, Any],
                       max_out: int) -> None:
        """A limited key reserves each step's worst case before it runs; the request holds one
        reservation that grows, settled once with the request's row."""
        if key is None or not key.limited:
            return
        budgets = self.service.budgets
        if trace.reservation is None:
            trace.reservation = await asyncio.to_thread(budgets.reserve_request, key, experts=[self.service.experts[expert]],
                                                        payload=payload, max_completion_tokens=max_out)
            return
        usd, tokens = budgets.estimator.bound([self.service.experts[expert]], payload, max_out)
        await asyncio.to_thread(budgets.extend, key, trace.reservation, max_cost_usd=usd, max_tokens=tokens)

    async def _judged(self, trace: RequestTrace, prompt: str, view: AnswerView) -> AnswerView:
        """The judge's verdict on one answer, as an attempt of the request (the judge is paid too)."""
        from router.learning.judge import parse_score

        judge = self.judge
        payload = {"messages": [{"role": "user", "content": judge.build_prompt(prompt, view.answer or "")}],
                   "max_tokens": judge.cfg.max_tokens, "temperature": 0.0}
        try:
            resp, attempt = await self._call(trace, judge.cfg.expert, payload, False)
        except ExpertError:
            return view
        attempt.usage_details = {**(attempt.usage_details or {}), "cascade": {"judge_of": view.expert}}
        reply = "".join((c.get("message") or {}).get("content") or "" for c in resp.get("choices", []))
        score = parse_score(reply, scale_min=judge.cfg.scale_min, scale_max=judge.cfg.scale_max)
        return AnswerView(view.prompt, view.answer, view.expert, view.logprobs, score)

    @staticmethod
    def _view(prompt: str, expert: str, resp: dict[str, Any]) -> AnswerView:
        choice = (resp.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""
        content = (choice.get("logprobs") or {}).get("content") or []
        tokens = [[t.get("token", ""), t.get("logprob"), [[a.get("token", ""), a.get("logprob")] for a in t.get("top_logprobs") or []]]
                  for t in content if isinstance(t.get("logprob"), int | float)]
        return AnswerView(prompt, text, expert, parse_logprobs(tokens) if tokens else None)

    # -- the answer ----------------------------------------------------------------------------------
    def _finish(self, trace: RequestTrace, req: ChatCompletionRequest, policy, run: _Run) -> ChatOutcome:
        final = run.final or run.answers[-1].expert
        resp, attempt = run.responses[final]
        trace.final_attempt = attempt  # the returned answer, whatever ran after it
        for n, (s, a) in enumerate(zip(run.steps, run.attempts), start=1):
            s["returned"] = s["expert"] == final and s["status"] == "ok"
            if a is not None:  # the step's estimates on its attempt row
                a.usage_details = {**(a.usage_details or {}), "cascade": {"step": n, **{k: v for k, v in s.items() if k != "expert"}}}
        d = trace.decision
        ok = [s for s in run.steps if s["status"] == "ok"]
        trajectory = {"steps": run.steps, "answered_by": final, "calls": len(run.steps), "escalated": len(ok) > 1,
                      **({"stopped": run.stopped} if run.stopped else {}),
                      "cost_usd": sum(a.cost_usd for a in trace.attempts),
                      "escalation_ms": round(sum(s.get("latency_ms", 0.0) for s in run.steps[1:]), 1)}
        # whatever the layers above recorded stays; the ledger's decision gets the trajectory
        trace.decision = replace(d, expert=final, trajectory={"cascade": trajectory})
        if self.service.finish_hooks:
            attempt.answer = next(v.answer for v in run.answers if v.expert == final)
        body = self._body(trace, req, resp, trajectory)
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return ChatOutcome(request_id=trace.id, expert=final, policy=d.policy, policy_version=d.policy_version,
                               stream=self._stream(trace, body, trajectory, include_usage))
        trace.status, trace.http_status = "ok", 200
        return ChatOutcome(request_id=trace.id, expert=final, policy=d.policy, policy_version=d.policy_version, body=body)

    @staticmethod
    def _usage(trace: RequestTrace) -> dict[str, int]:
        p = sum(a.prompt_tokens for a in trace.attempts)
        c = sum(a.completion_tokens for a in trace.attempts)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _body(self, trace: RequestTrace, req: ChatCompletionRequest, resp: dict[str, Any], trajectory: dict) -> dict[str, Any]:
        body = dict(resp)
        if not req.logprobs:  # asked for the estimator, not by the client
            body["choices"] = [{k: v for k, v in c.items() if k != "logprobs"} for c in body.get("choices") or []]
        body["usage"] = self._usage(trace)  # every step is billed
        body["expertmux"] = {"request_id": trace.id, "cascade": trajectory}
        return body

    async def _stream(self, trace: RequestTrace, body: dict[str, Any], trajectory: dict, include_usage: bool):
        """The chosen answer as SSE chunks: nothing was sent while the steps ran."""
        base = {"id": body.get("id") or f"chatcmpl-{trace.id}", "object": "chat.completion.chunk",
                "created": body.get("created") or int(time.time()), "model": body.get("model")}
        choice = (body.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        try:
            trajectory["first_byte_ms"] = round((time.perf_counter() - trace.t0) * 1000, 1)
            yield chunk({"role": "assistant", "content": ""})
            for i in range(0, len(text), _CHUNK_CHARS):
                yield chunk({"content": text[i:i + _CHUNK_CHARS]})
            yield chunk({}, choice.get("finish_reason") or "stop", expertmux=body["expertmux"])
            if include_usage:
                yield sse({**base, "choices": [], "usage": body["usage"]})
            trace.status, trace.http_status = "ok", 200
            yield b"data: [DONE]\n\n"
        except ExpertmuxError as exc:
            trace.fail(exc, "error")
            yield sse({"error": {"message": exc.message, "type": exc.error_type, "code": exc.code, "param": None}})
        except BaseException as exc:  # the client went away
            trace.fail(exc, "client_disconnected")
            raise
        finally:
            self.service._finish(trace)


@dataclass
class _Run:
    steps: list[dict[str, Any]]
    attempts: list[AttemptTrace | None]  # one per step
    answers: list[AnswerView]
    responses: dict[str, tuple[dict[str, Any], AttemptTrace]]
    failed: set[str]
    final: str | None = None
    last_error: ExpertError | None = None
    stopped: str | None = None  # why the cascade stopped before the policy said so
