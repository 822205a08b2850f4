"""The ``judge`` grader: the configured judge expert scores an answer that has no reference.

Used for prompts of real traffic (the ledger source) and any JSONL row whose grader is ``judge``.
It asks the expert named in the config's ``judge:`` section, with its prompt and rating scale,
exactly as the live judge does (``router.learning.judge``: same template, same score parser),
and raises ``GraderError`` when the reply carries no readable score or the call fails, so the
cell is NaN with the reason, never a made-up 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import JudgeConfig
from core.errors import ExpertmuxError
from router.calibration.errors import GraderError
from router.learning.judge import DEFAULT_PROMPT, MAX_CHARS, parse_score


@dataclass(frozen=True)
class JudgeVerdict:
    score: float
    reply: str
    cost_usd: float


class JudgeGrader:
    def __init__(self, cfg: JudgeConfig, expert: Any) -> None:
        self.cfg = cfg
        self.expert = expert  # experts.registry.Expert
        self.template = cfg.prompt or DEFAULT_PROMPT

    def build_prompt(self, question: str, answer: str) -> str:
        return self.template.format(question=question[:MAX_CHARS], answer=answer[:MAX_CHARS],
                                    scale_min=self.cfg.scale_min, scale_max=self.cfg.scale_max)

    async def grade(self, question: str, answer: str) -> JudgeVerdict:
        """Score in [0, 1] from the judge expert, or GraderError with the reason."""
        from experts import client

        if not answer.strip():
            return JudgeVerdict(0.0, "(empty answer: not sent to the judge)", 0.0)
        payload = {"messages": [{"role": "user", "content": self.build_prompt(question, answer)}],
                   "max_tokens": self.cfg.max_tokens, "temperature": 0.0}
        expert = self.expert
        expert.in_flight += 1  # load-aware routing of a live proxy sees the judge's work too
        try:
            resp = await client.complete(expert, payload)
        except ExpertmuxError as exc:
            raise GraderError(f"judge {expert.name!r} failed: {exc.message}") from None
        finally:
            expert.in_flight -= 1
        reply = "".join((c.get("message") or {}).get("content") or "" for c in resp.get("choices", []))
        usage = resp.get("usage") or {}
        cost = expert.cost_usd(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        score = parse_score(reply, scale_min=self.cfg.scale_min, scale_max=self.cfg.scale_max)
        if score is None:
            raise GraderError(f"judge {expert.name!r} gave no readable score: {reply.strip()[:200]!r}")
        return JudgeVerdict(score, reply, cost)
