"""The session rule, applied to a policy's decision: stay, switch, or escalate one tier.

- **Stay unless switching pays.** The policy's pick replaces the session's expert only if its
  utility (the decision's scores: quality − λ·cost − penalties) beats the current expert's by
  more than the switch costs: λ × the switch's price + ``switch_penalty`` quality points. The
  default price is the conversation prefix the current expert has already read (its cached
  prefix: cache hits if the session stays) billed at the new expert's input price, times
  ``cache_discount``.
- **Escalate when stalled.** A stalled session (the same tool call repeated ``loop_repeats``
  times, ``max_failures`` failed requests in a row, negative feedback on its last answer) moves
  to the cheapest candidate one tier above its expert (tiers: experts ordered by price, then by
  size); that tier becomes the session's floor for the rest of the session. A session stalled
  on the top tier does not move down.
- Candidates are the decision's feasible ones (the policy's constraints hold); an expert that
  became unavailable is left.

The rule is deterministic given the policy's pick, so the final propensities follow exactly
from the policy's: p(final = e) = Σ_b p_policy(b) · [rule(b) = e].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from core.config import SessionsConfig
from core.types import Decision, ExpertInfo, SessionView
from router.sessions.state import ESCALATE, FIRST, STAY, SWITCH


def tiers(experts: Sequence[ExpertInfo]) -> dict[str, int]:
    """Tier of each expert: 0 for the cheapest; equal price and size share a tier."""
    key = {e.name: (e.input_usd_per_mtok + e.output_usd_per_mtok, e.params_b or 0.0) for e in experts}
    levels = sorted(set(key.values()))
    return {name: levels.index(k) for name, k in key.items()}


def switch_price_usd(view: SessionView, expert: ExpertInfo, cfg: SessionsConfig) -> float:
    """What moving the session to ``expert`` costs: its prefix no longer a cache hit."""
    if cfg.switch_cost == "none":
        return 0.0
    return view.prefix_tokens * expert.input_usd_per_mtok / 1e6 * cfg.cache_discount


@dataclass(frozen=True, slots=True)
class Ruling:
    expert: str
    event: str  # stay | switch | escalate | first
    why: str


class SessionRule:
    def __init__(self, cfg: SessionsConfig, experts: Sequence[ExpertInfo]) -> None:
        self.cfg = cfg
        self.experts = {e.name: e for e in experts}
        self.tier = tiers(experts)

    def rule(self, pick: str, decision: Decision, view: SessionView, lambda_: float) -> Ruling:
        """Where the session goes when the policy picks ``pick``."""
        scores = decision.scores
        candidates = [n for n in decision.ranking if n in scores] or [pick]
        cur = view.expert
        if cur is None:
            return Ruling(pick, FIRST, "first request of the session")
        if view.stall and self.cfg.escalate and cur in self.tier:
            above = [n for n in candidates if self.tier.get(n, -1) > self.tier[cur]]
            if above:
                step = min(self.tier[n] for n in above)
                target = max((n for n in above if self.tier[n] == step), key=lambda n: scores.get(n, float("-inf")))
                return Ruling(target, ESCALATE, f"session stalled ({view.stall}): {cur} → {target}, one tier up")
        floor = self.tier.get(view.floor_expert, -1) if view.floor_expert else -1
        if view.stall and cur in self.tier:  # stalled at the top: never down a tier
            floor = max(floor, self.tier[cur])
        allowed = [n for n in candidates if self.tier.get(n, -1) >= floor]
        if allowed and pick not in allowed:
            pick = max(allowed, key=lambda n: scores.get(n, float("-inf")))
        if pick == cur:
            return Ruling(cur, STAY, f"policy keeps {cur}")
        if cur not in scores:
            return Ruling(pick, SWITCH, f"{cur} cannot serve this request")
        gain = scores.get(pick, float("-inf")) - scores[cur]
        price = lambda_ * switch_price_usd(view, self.experts[pick], self.cfg) + self.cfg.switch_penalty
        if gain > price:
            return Ruling(pick, SWITCH, f"switch {cur} → {pick}: gain {gain:.4g} > price {price:.4g}")
        return Ruling(cur, STAY, f"stay on {cur}: {pick} gains {gain:.4g} ≤ switch price {price:.4g}")

    def apply(self, decision: Decision, view: SessionView, lambda_: float) -> tuple[Decision, Ruling]:
        """The decision with the session rule applied, and what the rule did for the policy's own pick."""
        ruling = self.rule(decision.expert, decision, view, lambda_)
        adjustments = {**(decision.adjustments or {}), "session": describe(view, ruling)}
        if ruling.event == FIRST:
            return replace(decision, adjustments=adjustments), ruling
        final: dict[str, float] = {}
        for pick, p in decision.propensities.items():
            if p > 0:
                dest = ruling.expert if pick == decision.expert else self.rule(pick, decision, view, lambda_).expert
                final[dest] = final.get(dest, 0.0) + p
        propensities = {n: round(final.get(n, 0.0), 12) for n in decision.scores}
        if ruling.expert not in propensities:  # e.g. the session's expert outside the scored candidates
            propensities[ruling.expert] = round(final.get(ruling.expert, 1.0), 12)
        ranking = [ruling.expert] + [n for n in decision.ranking if n != ruling.expert]
        reason = f"{decision.reason}; session: {ruling.why}"
        return replace(decision, expert=ruling.expert, ranking=ranking, propensities=propensities, reason=reason,
                       adjustments=adjustments), ruling


def describe(view: SessionView, ruling: Ruling) -> dict[str, object]:
    """What a ledger row's decision keeps of the session (``decision.session``)."""
    return {"id": view.session_id, "event": ruling.event, "expert_before": view.expert, "turn": view.turns + 1,
            "stall": view.stall, "prefix_tokens": view.prefix_tokens}
