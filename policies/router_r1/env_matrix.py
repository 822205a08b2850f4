"""The routing-matrix environment: Router-R1 episodes scored by recorded outcomes, no live expert.

The abstraction (stated in the README, section Router-R1):

- a **query** is one row of a routing matrix; the router sees its ``prompt`` (cut to
  ``max_question_chars``) and the descriptors of the candidate experts, never the row's scores;
- **calling expert m** (``<search>m: …</search>``) costs that row's ``cost_usd::m`` (1 per call
  on a quality-only set) and returns a neutral ``<information>`` text: the matrices record
  outcomes, not answers, so the router learns only *that* m answered and how to adopt it
  (``INFORMATION``); nothing in it depends on the score. Every call is charged, repeated ones too;
- **the answer adopts an expert**: the final ``<answer>`` names one of the experts the router
  called (the longest name it contains, any case) → that expert's recorded ``score::m`` is the
  outcome; an answer naming none of them adopts the last expert called; an answer without any
  call is the router's own and scores 0 (it has no recorded outcome). When the agent falls back
  (malformed trajectory), the fallback expert's reply is the answer and its score counts for the
  quality report, while the reward is the format penalty;
- the cost normaliser of the reward is the row's most expensive single call among the candidates
  the router was offered (all of them, or the episode's sampled pool in training).

Candidates' descriptors: ``descriptors.yaml`` text (else models.json facts), prices and size from
``models.json``, example performance from the TRAIN split per task (``example_performance``), so
an expert the router never called in training still comes with the same kind of description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import PolicyError
from policies.data import TRAIN, RoutingData
from policies.descriptors import model_descriptor
from policies.router_r1.agent import AgentResult, ExpertReply
from policies.router_r1.prompt import Candidate
from policies.router_r1.reward import Reward, router_reward

INFORMATION = "{name} replied. Answer with its name to adopt its reply, or ask another expert."


def example_performance(train: RoutingData, model: str, *, n_tasks: int = 3) -> str:
    """``"mean 0.53; gsm8k 0.81, mmlu 0.64, math 0.32"``: the model's mean train score, then its
    score on the ``n_tasks`` most frequent train tasks (the same tasks for every model)."""
    j = train.models.index(model)
    col = train.scores[:, j]
    ok = np.isfinite(col)
    if not ok.any():
        return ""
    parts = [f"mean {np.nanmean(col):.2f}"]
    tasks, counts = np.unique(train.task[ok].astype(str), return_counts=True)
    top = [t for _, t in sorted(zip(-counts, tasks))][:n_tasks]
    per = [f"{t} {np.nanmean(col[ok & (train.task == t)]):.2f}" for t in top if t]
    return parts[0] + ("; " + ", ".join(per) if per else "")


def candidates_from(data: RoutingData, models: Sequence[str] | None = None, *, description_chars: int = 160,
                    n_tasks: int = 3) -> list[Candidate]:
    """The router's view of ``models`` (default: all of the matrix's), from the train rows."""
    names = list(models) if models else list(data.models)
    train = data.subset(data.rows_of(TRAIN)) if len(data.rows_of(TRAIN)) else data
    infos = {e.name: e for e in data.experts()}
    out = []
    for name in names:
        if name not in infos:
            raise PolicyError(f"routing matrix {data.name!r} has no model {name!r}; it has {data.models}")
        info = infos[name]
        text = " ".join(model_descriptor(info).split())
        if len(text) > description_chars:
            text = text[:description_chars].rsplit(" ", 1)[0] + "…"
        out.append(Candidate(name=name, usd_per_mtok_in=info.input_usd_per_mtok, usd_per_mtok_out=info.output_usd_per_mtok,
                             params_b=info.params_b, description=text,
                             example_performance=example_performance(train, name, n_tasks=n_tasks) or None))
    return out


@dataclass(frozen=True)
class Outcome:
    """How one finished episode scores in the matrix."""

    quality: float  # recorded score of the adopted expert (0 for the router's own answer)
    adopted: str | None
    cost_usd: float  # all expert calls, fallback included
    reward: Reward
    n_calls: int  # calls made by the router's searches
    well_formed: bool


class MatrixEnv:
    """Episodes over the rows of one split of a routing matrix, restricted to ``models``."""

    def __init__(self, data: RoutingData, *, split: str = TRAIN, models: Sequence[str] | None = None,
                 max_question_chars: int = 400, description_chars: int = 160) -> None:
        self.models = list(models) if models else list(data.models)
        self.candidates = candidates_from(data, self.models, description_chars=description_chars)
        sub = data.select_models(self.models)
        rows = sub.rows_of(split)
        rows = rows[sub.known[rows].any(axis=1)]
        if not len(rows):
            raise PolicyError(f"routing matrix {data.name!r}: no row of split {split!r} with a known outcome for {self.models}")
        self.data = sub.subset(rows)
        self.costs = self.data.cost_matrix()
        self.split = split
        self.max_question_chars = max_question_chars
        self.fingerprint = data.fingerprint()

    def __len__(self) -> int:
        return len(self.data)

    def question(self, i: int) -> str:
        text = " ".join(self.data.prompts[i].split())
        return text if len(text) <= self.max_question_chars else text[: self.max_question_chars - 1] + "…"

    def call_expert(self, i: int):
        """``call_expert(name, query)`` for row ``i``: the recorded cost, a neutral reply."""
        costs, names = self.costs[i], self.models

        def call(name: str, query: str) -> ExpertReply:
            if name not in names:
                raise PolicyError(f"no expert {name!r}")
            return ExpertReply(text=INFORMATION.format(name=name), cost_usd=float(costs[names.index(name)]))

        return call

    def max_cost(self, i: int, pool: Sequence[str] | None = None) -> float:
        """The row's most expensive known single call among ``pool`` (default: every candidate)."""
        known = np.isfinite(self.data.scores[i])
        if pool is not None:
            known &= np.isin(self.models, list(pool))
        return float(np.nanmax(np.where(known, self.costs[i], np.nan))) if known.any() else 0.0

    def score(self, i: int, name: str | None) -> float:
        if name is None:
            return 0.0
        value = self.data.scores[i, self.models.index(name)]
        return float(value) if np.isfinite(value) else 0.0

    def adopted(self, result: AgentResult) -> str | None:
        """The expert whose answer the final answer is (see the module docstring)."""
        if result.fallback_used:
            return result.calls[-1].expert if result.calls and result.calls[-1].ok else None
        called = [c.expert for c in result.calls if c.ok and c.round]
        if not called:
            return None
        low = (result.answer or "").lower()
        for name in sorted(set(called), key=len, reverse=True):
            if name.lower() in low:
                return name
        return called[-1]

    def outcome(self, i: int, result: AgentResult, *, alpha: float, pool: Sequence[str] | None = None) -> Outcome:
        """How the episode scores; ``pool``: the candidates the router was offered (the cost
        normaliser is the dearest of them)."""
        adopted = self.adopted(result)
        quality = self.score(i, adopted)
        cost = sum(c.cost_usd for c in result.calls)
        reward = router_reward(well_formed=result.well_formed, outcome=quality, cost_usd=cost,
                               max_cost_usd=self.max_cost(i, pool), alpha=alpha)
        return Outcome(quality=quality, adopted=adopted, cost_usd=cost, reward=reward, n_calls=result.n_rounds,
                       well_formed=result.well_formed)
