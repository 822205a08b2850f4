"""The unit of calibration: one graded prompt (``PromptItem``) and an outcome already known for it.

Kept apart from the sources so every module (sources, the ledger reader, the store, the matrix)
can share it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from core.types import routed_text, transcript


@dataclass(frozen=True)
class Recorded:
    """An outcome already in the ledger: the serving expert's answer, scored by feedback."""

    score: float
    source: str  # feedback source: user | auto | judge
    prompt_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float | None = None


@dataclass(frozen=True)
class PromptItem:
    """One graded prompt: what every expert is asked, and how its answer is scored."""

    qid: str
    skill: str
    prompt: str
    grader: str
    reference: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    dataset: str = "default"
    max_tokens: int | None = None  # default: the run's max_tokens
    messages: list[dict[str, str]] | None = None  # a conversation (ledger); default: one user message
    recorded: dict[str, Recorded] = field(default_factory=dict)  # expert → outcome already known

    def chat_messages(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages] if self.messages else [{"role": "user", "content": self.prompt}]

    def turns(self) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in self.chat_messages()]

    def routing_text(self) -> str:
        """The text a policy sees for this prompt when the proxy serves it (``core.types.routed_text``),
        so training matches serving."""
        return routed_text(self.turns())

    def transcript(self) -> str:
        """The whole conversation as ``role: text`` lines (what a judge reads, as on the proxy)."""
        return transcript(self.turns())

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["recorded"] = {k: asdict(v) for k, v in self.recorded.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> PromptItem:
        recorded = {k: Recorded(**v) for k, v in (row.get("recorded") or {}).items()}
        return cls(**{**row, "recorded": recorded})
