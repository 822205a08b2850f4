"""The Router-R1 prompt: the protocol, the candidate experts' descriptors, the question.

Router-R1 conditions only on simple descriptors of each candidate (price, size, a description,
example performance), which is what lets a trained router call experts it never saw in training.

The prompt is a chat conversation (``list[{"role", "content"}]``); whoever generates applies
the router model's chat template (the llama.cpp server does it from the GGUF; transformers'
``tokenizer.apply_chat_template`` in training). It is kept short on purpose: the embedded
router, SmolLM2-135M-Instruct, runs with a 2048-token context that must also hold the experts'
answers. After each search the conversation grows by two turns — the router's step (assistant)
and the service's ``<information>`` (user) — see ``continue_messages``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.types import ExpertInfo
from policies.router_r1.protocol import information_block

DESCRIPTION_CHARS = 160  # per candidate: the descriptors share a small context
INFORMATION_CHARS = 600  # an expert's reply as the router sees it

SYSTEM_TEMPLATE = """\
You answer questions by consulting expert models.
Think inside <think>...</think>.
To ask an expert, write <search>EXPERT: question</search> and stop; its reply comes back as <information>...</information>.
Ask at most {max_rounds} times. Cheap experts first when they suffice.
End with <answer>final answer</answer>.
Experts:
{experts}"""

CORRECTION = "Format error: {reason}. Reply with <think>...</think> then <search>EXPERT: question</search> or <answer>...</answer>."
NO_MORE_SEARCHES = "No searches left. Write <answer>...</answer> now."
UNKNOWN_EXPERT = "There is no expert {name!r}. Experts: {names}."


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the router is told about one expert it may call."""

    name: str
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    params_b: float | None = None
    description: str = ""
    example_performance: str | None = None  # e.g. "accuracy 0.62 on mmlu, 0.31 on gsm8k"

    @classmethod
    def from_expert(cls, info: ExpertInfo, example_performance: str | None = None) -> Candidate:
        return cls(name=info.name, usd_per_mtok_in=info.input_usd_per_mtok, usd_per_mtok_out=info.output_usd_per_mtok,
                   params_b=info.params_b, description=info.description, example_performance=example_performance)

    @property
    def price(self) -> float:
        """Price per million tokens, input and output together (for ordering by cost)."""
        return self.usd_per_mtok_in + self.usd_per_mtok_out

    def descriptor(self) -> str:
        """One line: ``- name (0.135B params, $0.05/$0.1 per Mtok in/out): description. Example: …``"""
        facts = []
        if self.params_b:
            facts.append(f"{self.params_b:g}B params")
        facts.append(f"${self.usd_per_mtok_in:g}/${self.usd_per_mtok_out:g} per Mtok in/out")
        line = f"- {self.name} ({', '.join(facts)})"
        desc = _shorten(self.description, DESCRIPTION_CHARS)
        if desc:
            line += f": {desc}"
        if self.example_performance:
            line += f" Example performance: {_shorten(self.example_performance, 80)}"
        return line


def _shorten(text: str, limit: int) -> str:
    text = " ".join((text or "").split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


def system_prompt(candidates: Iterable[Candidate], *, max_rounds: int) -> str:
    return SYSTEM_TEMPLATE.format(max_rounds=max_rounds, experts="\n".join(c.descriptor() for c in candidates))


def build_messages(question: str, candidates: Sequence[Candidate], *, max_rounds: int) -> list[dict[str, str]]:
    """The opening conversation: the protocol and descriptors (system), the question (user)."""
    return [{"role": "system", "content": system_prompt(candidates, max_rounds=max_rounds)},
            {"role": "user", "content": question.strip()}]


def information_turn(reply: str, *, max_chars: int = INFORMATION_CHARS) -> str:
    """An expert's reply as the router reads it: shortened, tags neutralised, wrapped."""
    return information_block(_shorten(reply, max_chars) if len(reply) > max_chars else reply)


def continue_messages(messages: Sequence[dict[str, str]], step: str, user_turn: str) -> list[dict[str, str]]:
    """A new conversation: ``messages``, the router's ``step`` (assistant), then ``user_turn``
    (an ``<information>`` block, or a correction after a malformed step)."""
    return [*messages, {"role": "assistant", "content": step}, {"role": "user", "content": user_turn}]


def correction(reason: str) -> str:
    return CORRECTION.format(reason=reason.rstrip("."))


def unknown_expert(name: str, candidates: Sequence[Candidate]) -> str:
    return UNKNOWN_EXPERT.format(name=name, names=", ".join(c.name for c in candidates))


def transcript(messages: Sequence[dict[str, str]]) -> str:
    """The conversation as plain text (logs, debugging); not a chat template."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
