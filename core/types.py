"""Plain data types shared by the service, the policies and the experts.

Kept free of heavy imports so policies and experts can depend on them cheaply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ExpertInfo:
    """What a policy may know about an expert (from config, plus live health)."""

    name: str
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    params_b: float | None = None
    context_window: int = 4096
    description: str = ""
    tags: tuple[str, ...] = ()
    prior_quality: float | None = None
    release_date: str | None = None  # ISO date (YYYY-MM-DD), for recency-weighted routing

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok) / 1e6


@dataclass(slots=True)
class RoutingOptions:
    """Per-request routing options, sent by clients in the extra body field ``expertmux``."""

    lambda_: float | None = None  # willingness to pay; None = the policy's default
    max_cost_usd: float | None = None
    allowed_experts: list[str] | None = None
    max_params_b: float | None = None
    # User-weighted constraints (Tryage): penalties subtracted from the predicted quality.
    size_weight: float | None = None  # quality points per 10× parameters
    latency_weight: float | None = None  # quality points per second of expected latency
    recency_weight: float | None = None  # quality points per year since the expert's release
    # Hard limits next to max_cost_usd / max_params_b.
    max_latency_s: float | None = None
    min_release_date: str | None = None  # ISO date: only experts released on or after it


@dataclass(frozen=True, slots=True)
class SessionView:
    """What the request path knows of the conversation or agent loop a request belongs to
    (``router.sessions``): read by a policy as input, stored by the layer above it, never by the policy."""

    session_id: str
    expert: str | None = None  # the expert that served the session's last answer
    turns: int = 0  # requests of the session answered so far
    switches: int = 0  # times the session's expert changed
    escalations: int = 0  # times a stall moved the session up one tier
    failures: int = 0  # consecutive failed requests
    tool_loop: int = 0  # the same tool call, repeated this many times in a row at the end of the conversation
    negative_feedback: bool = False  # the session's last rated answer was rated at or below the threshold
    prefix_tokens: int = 0  # tokens of the conversation the session's expert has already read (cache hits if it stays)
    floor_expert: str | None = None  # after an escalation: no cheaper tier than this expert's for the rest of the session
    stall: str | None = None  # why the session counts as stalled now (tool_loop | errors | negative_feedback), or None


@dataclass(slots=True)
class RouteRequest:
    """One request as the policy sees it: the prompt text and its size, never labels."""

    prompt: str
    prompt_tokens: int
    max_completion_tokens: int
    options: RoutingOptions = field(default_factory=RoutingOptions)
    # Expected latency per expert (s), from the service's live measurements when it has them;
    # latency weights and limits apply only to experts listed here.
    expected_latency_s: dict[str, float] | None = None
    session: SessionView | None = None  # the conversation so far, when sessions are on (input only)


@dataclass(slots=True)
class Decision:
    """A routing decision with everything needed to audit and evaluate it later.

    ``scores`` are the per-candidate utilities the policy compared; ``propensities`` the
    probability with which each candidate would have been chosen (for off-policy evaluation);
    ``ranking`` the candidates in preference order (the fallback chain).
    """

    expert: str
    policy: str
    policy_version: str
    scores: dict[str, float]
    propensities: dict[str, float]
    ranking: list[str]
    reason: str = ""
    expected_latency_s: dict[str, float] | None = None  # set by load-aware routing
    adjustments: dict[str, Any] | None = None  # what the layers above the policy did (session rule, budget pacing)
    # how long routing took (ms): ``features`` (waiting for the prompt's features, off the loop) and ``decide``
    timing: dict[str, float] | None = None
    # a multi-call policy's steps, under its own record key ({"cascade": ...} or Router-R1's {"trace": ...})
    trajectory: dict[str, Any] | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "policy": self.policy,
            "policy_version": self.policy_version,
            "scores": self.scores,
            "propensities": self.propensities,
            "propensity": self.propensities.get(self.expert),  # of the chosen expert (off-policy estimators)
            "ranking": self.ranking,
            "reason": self.reason,
            **({"expected_latency_s": self.expected_latency_s} if self.expected_latency_s else {}),
            **(self.adjustments or {}),
            **({"timing": self.timing} if self.timing else {}),
            **(self.trajectory or {}),
        }


def routed_text(turns: list[tuple[str, str]]) -> str:
    """What routing policies read of a conversation: the last user message's text.

    Policies are fitted on questions (routing matrices, calibrated prompts), not on transcripts:
    role tags and a client's system prompt in front of the question move its features (measured
    in benchmarks/SIGNALS.md §18). A conversation with no user text reads as its transcript."""
    for role, text in reversed(turns):
        if role == "user" and text.strip():
            return text
    return transcript(turns)


def transcript(turns: list[tuple[str, str]]) -> str:
    """``role: text`` lines: how the ledger stores a conversation's prompt."""
    return "\n".join(f"{role}: {text}" for role, text in turns)


_ROLE_LINE = re.compile(r"^(system|developer|user|assistant|tool|function): ", re.MULTILINE)


def transcript_turns(text: str) -> list[tuple[str, str]]:
    """``transcript`` read back (a line not starting with a role continues the previous message);
    text with no role prefix at all is one user message."""
    starts = list(_ROLE_LINE.finditer(text))
    if not starts or starts[0].start() != 0:
        return [("user", text)]
    return [(m.group(1), text[m.end(): (nxt.start() - 1 if nxt is not None else len(text))])  # without the joining newline
            for m, nxt in zip(starts, [*starts[1:], None], strict=True)]
