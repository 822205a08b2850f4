"""The live environment: Router-R1 episodes against the real local experts, on a task with gold answers.

Task: short integer arithmetic (``What is 17 + 25?``), generated from a seed, so gold answers
are exact and the set is reproducible without any download. Calling an expert sends the
router's sub-question to it through the project's expert client (the llama.cpp servers of the
config, started or reused like ``expertmux experts up``); the reply is what the router reads in
``<information>`` and the cost is the expert's price times the tokens the server reports.

Outcome: the final answer is scored by exact match of its first integer against the gold
answer. An answer that names an expert the router called adopts that expert's reply (its first
integer is scored instead), as in the matrix environment; the fallback's reply is the answer
when the agent falls back. Slow (a few seconds per call on two cores) but real.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import PolicyError
from policies.router_r1.agent import AgentResult, ExpertReply
from policies.router_r1.prompt import Candidate
from policies.router_r1.reward import Reward, router_reward

_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    question: str
    gold: str


def arithmetic_task(n: int, *, seed: int = 0, max_operand: int = 50) -> list[Problem]:
    """``n`` problems ``a op b`` with op in + − ×, operands in [2, max_operand]."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
        op = rng.choice("+-*")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        out.append(Problem(f"What is {a} {'×' if op == '*' else op} {b}?", str(value)))
    return out


def first_int(text: str) -> str:
    m = _INT.search((text or "").replace(",", ""))
    return m.group(0) if m else ""


def score_answer(answer: str, gold: str) -> float:
    """Exact match of integers (``reward.exact_match`` would drop the minus sign as punctuation)."""
    got = first_int(answer)
    return 1.0 if got and int(got) == int(gold) else 0.0


@dataclass(frozen=True)
class LiveOutcome:
    quality: float
    adopted: str | None
    cost_usd: float
    reward: Reward
    n_calls: int
    well_formed: bool


class LiveEnv:
    """Episodes over ``problems``; ``experts`` maps a candidate name to an ``experts.registry.Expert``."""

    task_name = "arithmetic"

    def __init__(self, experts: dict[str, Any], problems: Sequence[Problem], *, max_tokens: int = 24) -> None:
        if not experts:
            raise PolicyError("the live environment needs at least one expert")
        self.experts = dict(experts)
        self.problems = list(problems)
        self.max_tokens = max_tokens
        self.registry = None  # set by from_settings: the registry whose servers close() stops
        self.candidates = [Candidate.from_expert(e.info) for e in self.experts.values()]
        self.models = [c.name for c in self.candidates]
        h = hashlib.sha256("\x1e".join(f"{p.question}={p.gold}" for p in self.problems).encode())
        self.fingerprint = h.hexdigest()[:16]
        # price of the dearest expert answering one question with max_tokens: the reward's C_max
        self._c_max = max(e.info.cost_usd(64, max_tokens) for e in self.experts.values())

    @classmethod
    def from_settings(cls, settings, *, models: Sequence[str] | None = None, n: int = 200, seed: int = 0) -> LiveEnv:
        """The configured local experts (started or reused), ``n`` arithmetic problems."""
        from experts.registry import ExpertRegistry

        cfg = settings.app_config
        registry = ExpertRegistry(cfg.experts, data_dir=settings.data_dir,
                                  secrets={e.name: settings.secret(e.api_key_env) for e in cfg.experts})
        names = list(models) if models else [e.name for e in registry]
        missing = [m for m in names if m not in registry]
        if missing:
            raise PolicyError(f"no configured expert {missing}; experts: {registry.names}")
        registry.start_local([m for m in names if registry[m].backend.is_local])
        env = cls({m: registry[m] for m in names}, arithmetic_task(n, seed=seed))
        env.registry = registry
        return env

    def close(self) -> None:
        """Stop the local experts this environment started (servers it reused keep running)."""
        if self.registry is not None:
            self.registry.stop_local(only_owned=True)

    def __len__(self) -> int:
        return len(self.problems)

    def question(self, i: int) -> str:
        return self.problems[i].question

    def call_expert(self, i: int):
        async def call(name: str, query: str) -> ExpertReply:
            from experts import client

            expert = self.experts.get(name)
            if expert is None:
                raise PolicyError(f"no expert {name!r}")
            try:
                resp = await client.complete(expert, {"messages": [{"role": "user", "content": query}],
                                                      "max_tokens": self.max_tokens, "temperature": 0.0})
            finally:
                await client.aclose()  # one event loop per episode: do not keep its connections
            text = ((resp.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
            usage = resp.get("usage") or {}
            pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            return ExpertReply(text=text, cost_usd=expert.cost_usd(pt, ct), prompt_tokens=pt, completion_tokens=ct)

        return call

    def max_cost(self, i: int) -> float:
        return self._c_max

    def adopted(self, result: AgentResult) -> tuple[str | None, str]:
        """(expert adopted or None, the text that is scored)."""
        if result.fallback_used:
            last = result.calls[-1] if result.calls else None
            return (last.expert if last and last.ok else None), result.answer
        called = sorted({c.expert for c in result.calls if c.ok and c.round}, key=len, reverse=True)
        low = (result.answer or "").lower()
        bare = low
        for name in called:  # names hold digits ("smollm2-135m"): an answer is its own only if a number remains
            bare = bare.replace(name.lower(), " ")
        if not first_int(bare):
            for name in called:
                if name.lower() in low:
                    reply = next(c.reply for c in reversed(result.calls) if c.ok and c.expert == name)
                    return name, reply
        return None, result.answer

    def outcome(self, i: int, result: AgentResult, *, alpha: float, pool: Sequence[str] | None = None) -> LiveOutcome:
        """How the episode scores (the normaliser is fixed here, whatever ``pool`` was offered)."""
        adopted, text = self.adopted(result)
        quality = score_answer(text, self.problems[i].gold)
        cost = sum(c.cost_usd for c in result.calls)
        reward = router_reward(well_formed=result.well_formed, outcome=quality, cost_usd=cost,
                               max_cost_usd=self.max_cost(i), alpha=alpha)
        return LiveOutcome(quality, adopted, cost, reward, result.n_rounds, result.well_formed)
