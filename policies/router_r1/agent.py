"""The Router-R1 loop: the router model thinks, calls experts over several rounds, answers.

The loop is generic over two callables, so one implementation serves the proxy (real experts,
the router model behind a server), the routing-matrix environment (recorded outcomes) and tests
(scripted steps):

- ``generate(messages, stop) -> str | Generation`` produces the router's next step for the
  conversation ``messages`` (``list[{"role", "content"}]``, see ``prompt.py``), stopping at any
  of ``stop`` (``protocol.STOP_SEQUENCES``); returning a ``Generation`` also reports its cost;
- ``call_expert(name, query) -> ExpertReply`` asks one expert.

Either may be a plain function or a coroutine function. ``RouterR1Agent.run`` is async;
``run_sync`` drives it from synchronous code (a training loop) when no event loop is running.

Bounded by construction: at most ``max_rounds`` expert calls and ``max_retries`` corrections,
so at most ``max_rounds + max_retries + 1`` generations. A step that breaks the protocol (broken
tags, an unknown expert, a search beyond the budget, a generation that fails) is answered with a
short correction turn while retries remain; after that the fallback answers: the fallback expert
(configured, else the cheapest candidate) is asked the original question and its reply is the
answer. ``run`` returns an ``AgentResult`` whatever happens; only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from policies.router_r1 import prompt as P
from policies.router_r1.protocol import (
    STOP_SEQUENCES,
    Answer,
    FormatReport,
    Malformed,
    Search,
    Think,
    check_format,
    normalize_step,
    parse_step,
)


@dataclass(frozen=True, slots=True)
class ExpertReply:
    text: str
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Generation:
    """A router step with its accounting (``generate`` may return a plain ``str`` instead)."""

    text: str
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


Messages = list[dict[str, str]]
GenerateFn = Callable[[Messages, tuple[str, ...]], "Awaitable[str | Generation] | str | Generation"]
CallExpertFn = Callable[[str, str], "Awaitable[ExpertReply] | ExpertReply"]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    max_rounds: int = 3  # expert calls the router may make
    max_retries: int = 1  # corrections after malformed steps before the fallback answers
    fallback_expert: str | None = None  # default: the cheapest candidate
    information_chars: int = P.INFORMATION_CHARS

    def __post_init__(self) -> None:
        if self.max_rounds < 0 or self.max_retries < 0:
            raise ValueError("max_rounds and max_retries must be ≥ 0")


@dataclass(slots=True)
class ExpertCall:
    """One expert call: made by the router's search (``round`` ≥ 1) or by the fallback (0)."""

    expert: str
    query: str
    round: int
    ok: bool
    reply: str = ""
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)  # for the caller's error mapping


@dataclass(slots=True)
class Step:
    """One entry of the trajectory, in order.

    ``kind``: ``generation`` (router text, normalised; ``action`` names what it parsed to),
    ``information`` (an expert's reply as fed back), ``correction`` (the service's note after a
    malformed step).
    """

    kind: str
    text: str
    action: str | None = None
    reason: str | None = None


@dataclass(slots=True)
class AgentResult:
    answer: str
    trajectory: str  # router steps and <information> blocks, as check_format reads them
    calls: list[ExpertCall]
    well_formed: bool  # the trajectory passes check_format and the router answered by itself
    fallback_used: bool
    n_rounds: int  # expert calls made by the router's searches
    router_cost_usd: float
    expert_cost_usd: float
    steps: list[Step] = field(default_factory=list)
    messages: Messages = field(default_factory=list)  # the final conversation (incl. the last step)
    format: FormatReport | None = None
    fallback_reason: str | None = None
    error: str | None = None  # set when even the fallback could not answer (answer is then "")
    n_generations: int = 0

    @property
    def total_cost(self) -> float:
        return self.router_cost_usd + self.expert_cost_usd

    @property
    def answered_by(self) -> str | None:
        """The expert whose reply the answer is, when the answer is one (fallback), else None."""
        return self.calls[-1].expert if self.fallback_used and self.calls and self.calls[-1].ok else None

    def as_trace(self) -> dict[str, Any]:
        """JSON-ready summary (response field ``expertmux.trace`` and the ledger)."""
        return {
            "answer": self.answer, "well_formed": self.well_formed, "fallback_used": self.fallback_used,
            "fallback_reason": self.fallback_reason, "n_rounds": self.n_rounds, "n_generations": self.n_generations,
            "router_cost_usd": self.router_cost_usd, "expert_cost_usd": self.expert_cost_usd,
            "total_cost_usd": self.total_cost, "format_reasons": list(self.format.reasons) if self.format else [],
            "calls": [{"expert": c.expert, "query": c.query, "round": c.round, "ok": c.ok, "cost_usd": c.cost_usd,
                       "error": c.error} for c in self.calls],
            "steps": [{"kind": s.kind, "text": s.text, **({"action": s.action} if s.action else {}),
                       **({"reason": s.reason} if s.reason else {})} for s in self.steps],
            **({"error": self.error} if self.error else {}),
        }


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _short_error(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


class RouterR1Agent:
    """Runs the protocol for one question at a time; holds no per-question state."""

    def __init__(self, candidates: Sequence[P.Candidate], generate: GenerateFn, call_expert: CallExpertFn,
                 config: AgentConfig | None = None) -> None:
        if not candidates:
            raise ValueError("Router-R1 needs at least one candidate expert")
        self.candidates = list(candidates)
        self.names = [c.name for c in self.candidates]
        self.generate = generate
        self.call_expert = call_expert
        self.config = config or AgentConfig()
        fallback = self.config.fallback_expert
        self.fallback_expert = fallback or min(self.candidates, key=lambda c: (c.price, c.name)).name

    def run_sync(self, question: str) -> AgentResult:
        """``run`` from synchronous code (no event loop may be running in this thread)."""
        return asyncio.run(self.run(question))

    async def run(self, question: str) -> AgentResult:
        cfg = self.config
        messages = P.build_messages(question, self.candidates, max_rounds=cfg.max_rounds)
        steps: list[Step] = []
        calls: list[ExpertCall] = []
        trajectory: list[str] = []
        router_cost = 0.0
        retries = generations = 0
        answer: str | None = None
        fallback_reason: str | None = None

        for _ in range(cfg.max_rounds + cfg.max_retries + 1):
            generations += 1
            try:
                out = await _maybe_await(self.generate(messages, STOP_SEQUENCES))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the router model failing is one more malformed step
                text, action = "", Malformed(f"router generation failed: {_short_error(exc)}")
            else:
                text = out.text if isinstance(out, Generation) else str(out or "")
                router_cost += out.cost_usd if isinstance(out, Generation) else 0.0
                text = normalize_step(text)
                action = parse_step(text, self.names)
            if text:
                trajectory.append(text)
            rounds = sum(1 for c in calls if c.round)

            if isinstance(action, Answer):
                steps.append(Step("generation", text, "answer"))
                messages = [*messages, {"role": "assistant", "content": text}]
                answer = action.text
                break
            if isinstance(action, Search) and action.expert in self.names and rounds < cfg.max_rounds:
                steps.append(Step("generation", text, "search"))
                call = await self._call(action.expert, action.query, round_no=rounds + 1)
                calls.append(call)
                info = P.information_turn(call.reply if call.ok else f"error: {call.error}",
                                          max_chars=cfg.information_chars)
                trajectory.append(info)
                steps.append(Step("information", info))
                messages = P.continue_messages(messages, text, info)
                continue

            # Anything else breaks the protocol: correct it while retries remain.
            if isinstance(action, Search):
                reason = (P.unknown_expert(action.expert, self.candidates) if action.expert not in self.names
                          else P.NO_MORE_SEARCHES)
                note = reason
            elif isinstance(action, Think):
                reason, note = "no action after <think>", P.correction("no <search> or <answer> after <think>")
            else:
                reason, note = action.reason, P.correction(action.reason)
            steps.append(Step("generation", text, type(action).__name__.lower(), reason))
            retries += 1
            if retries > cfg.max_retries:
                fallback_reason = reason
                break
            steps.append(Step("correction", note))
            messages = P.continue_messages(messages, text, note)
        else:  # unreachable by the bound above; kept so the loop can never end without a reason
            fallback_reason = fallback_reason or "no answer within the round budget"

        trajectory_text = "\n".join(trajectory)
        report = check_format(trajectory_text, experts=self.names, max_searches=cfg.max_rounds)
        error = None
        if answer is None:
            fallback_reason = fallback_reason or "no answer"
            call = await self._call(self.fallback_expert, question, round_no=0)
            calls.append(call)
            answer = call.reply if call.ok else ""
            error = None if call.ok else f"fallback expert {self.fallback_expert!r} failed: {call.error}"
        return AgentResult(
            answer=answer, trajectory=trajectory_text, calls=calls,
            well_formed=report.well_formed and fallback_reason is None, fallback_used=fallback_reason is not None,
            n_rounds=sum(1 for c in calls if c.round), router_cost_usd=router_cost,
            expert_cost_usd=sum(c.cost_usd for c in calls), steps=steps, messages=messages, format=report,
            fallback_reason=fallback_reason, error=error, n_generations=generations)

    async def _call(self, expert: str, query: str, *, round_no: int) -> ExpertCall:
        try:
            reply = await _maybe_await(self.call_expert(expert, query))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported to the router as information; the loop goes on
            return ExpertCall(expert, query, round_no, ok=False, error=_short_error(exc), exception=exc)
        return ExpertCall(expert, query, round_no, ok=True, reply=reply.text, cost_usd=reply.cost_usd,
                          prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
