"""The Router-R1 reward: format, outcome and cost, as in the paper.

For a trajectory y of question x::

    R_format  = −1 if y breaks the protocol (``check_format``), else 0
    R_outcome = the task score of the final answer ∈ [0, 1] (exact match in the paper; any task
                score here, computed by the environment and passed in)
    R_cost    = 1 − min(1, C / C_max)   C = cost of all expert calls the trajectory made (USD),
                                        C_max = the normaliser (> 0) the environment chooses
    r = R_format + (1 − α)·R_outcome + α·R_cost      if the format is right
    r = −1                                          if it is not (outcome and cost count for nothing)

The second line is the paper's hierarchy: a malformed trajectory earns −1 whatever its answer
and cost, so the router learns the protocol before it learns to trade quality for cost. A
well-formed trajectory earns r ∈ [0, 1]. α ∈ [0, 1] is the training option weighing cost against
quality (α = 0: quality only). The paper's cost is model size × output tokens; we use what the
ledger measures, the price of the calls in USD, which is that product times a per-model price.

A sensible C_max is the cost of the most expensive candidate answering the question once (so a
single call to the cheapest expert earns R_cost near 1, several calls to the dearest near 0);
with C_max ≤ 0 nothing costs anything and R_cost = 1.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from dataclasses import dataclass

from policies.router_r1.protocol import FormatReport

FORMAT_PENALTY = -1.0


@dataclass(frozen=True, slots=True)
class Reward:
    total: float
    format: float
    outcome: float
    cost: float
    alpha: float

    def as_dict(self) -> dict[str, float]:
        return {"total": self.total, "format": self.format, "outcome": self.outcome, "cost": self.cost, "alpha": self.alpha}


def format_reward(report: FormatReport | bool) -> float:
    well_formed = report if isinstance(report, bool) else report.well_formed
    return 0.0 if well_formed else FORMAT_PENALTY


def cost_reward(cost_usd: float, max_cost_usd: float) -> float:
    """1 − min(1, C / C_max), in [0, 1]; 1 when C_max ≤ 0 (nothing to trade)."""
    if not max_cost_usd > 0:
        return 1.0
    return 1.0 - min(1.0, max(0.0, cost_usd) / max_cost_usd)


def router_reward(*, well_formed: FormatReport | bool, outcome: float, cost_usd: float, max_cost_usd: float,
                  alpha: float) -> Reward:
    """The reward of one trajectory (see the module docstring for the formula)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha!r}")
    if not math.isfinite(outcome):
        raise ValueError(f"outcome must be a finite score, not {outcome!r}")
    r_format = format_reward(well_formed)
    r_outcome = min(1.0, max(0.0, float(outcome)))
    r_cost = cost_reward(cost_usd, max_cost_usd)
    if r_format < 0:
        return Reward(total=FORMAT_PENALTY, format=r_format, outcome=0.0, cost=0.0, alpha=alpha)
    total = r_format + (1.0 - alpha) * r_outcome + alpha * r_cost
    return Reward(total=total, format=r_format, outcome=r_outcome, cost=r_cost, alpha=alpha)


# -- exact match, as QA benchmarks normalise answers ---------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style normalisation)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str | list[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    pred = normalize_answer(prediction)
    return 1.0 if any(pred == normalize_answer(g) for g in golds) else 0.0
