"""What the shadow log says about a candidate: a summary, and evidence for the promotion gate."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, case, func, select

from core.config import ShadowConfig
from router.ledger.models import ShadowDecisionRow


def summary(engine: Engine, *, policy: str | None = None, version: str | None = None,
            since: datetime | None = None) -> list[dict[str, Any]]:
    """Per candidate version: decisions, agreement with the served choice, calls, blind judgements."""
    s = ShadowDecisionRow
    judged = s.status == "judged"
    win = case((s.score > s.served_score, 1.0), (s.score == s.served_score, 0.5), else_=0.0)
    q = (select(s.policy, s.policy_version, func.count().label("decisions"),
                func.sum(case((s.agrees, 1), else_=0)).label("agree"),
                func.sum(case((s.status.in_(("called", "judged")), 1), else_=0)).label("called"),
                func.sum(case((judged, 1), else_=0)).label("judged"),
                func.sum(case((judged, win), else_=0.0)).label("wins"),
                func.avg(case((judged, s.score))).label("score"), func.avg(case((judged, s.served_score))).label("served_score"),
                func.sum(s.cost_usd).label("cost"),
                func.sum(case((s.status.in_(("called", "judged")), s.served_cost_usd), else_=0.0)).label("served_cost"),
                func.sum(case((s.status == "skipped_budget", 1), else_=0)).label("skipped_budget"),
                func.sum(case((s.status == "error", 1), else_=0)).label("errors"),
                func.min(s.created_at).label("first"), func.max(s.created_at).label("last"))
         .group_by(s.policy, s.policy_version).order_by(s.policy, s.policy_version))
    if policy is not None:
        q = q.where(s.policy == policy)
    if version is not None:
        q = q.where(s.policy_version == version)
    if since is not None:
        q = q.where(s.created_at >= since)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for r in rows:
        out.append({"policy": r.policy, "version": r.policy_version, "decisions": r.decisions,
                    "agreement": r.agree / r.decisions if r.decisions else None, "called": r.called, "judged": r.judged,
                    "win_share": r.wins / r.judged if r.judged else None,
                    "mean_score": r.score, "served_mean_score": r.served_score,
                    "cost_usd": r.cost or 0.0, "served_cost_usd": r.served_cost or 0.0,
                    "skipped_budget": r.skipped_budget, "errors": r.errors,
                    "first": r.first.isoformat() if r.first else None, "last": r.last.isoformat() if r.last else None})
    return out


def _row(metric: str, cand: float | None, inc: float | None, higher_is_better: bool = True) -> dict[str, Any]:
    delta = None if cand is None or inc is None else round(cand - inc, 6)
    return {"metric": metric, "candidate": cand, "incumbent": inc, "delta": delta, "higher_is_better": higher_is_better}


def evidence_rows(stats: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Comparison rows in the gate's format (candidate vs the served policy, on the same requests)."""
    if not stats:
        return [_row("shadow_decisions", 0, None)]
    rows = [_row("shadow_decisions", stats["decisions"], None), _row("shadow_agreement", stats["agreement"], None),
            _row("shadow_judged", stats["judged"], None)]
    if stats["judged"]:
        rows.append(_row("shadow_win_share", round(stats["win_share"], 6), round(1 - stats["win_share"], 6)))
        rows.append(_row("shadow_judge_score", stats["mean_score"], stats["served_mean_score"]))
    if stats["called"]:
        rows.append(_row("shadow_cost", stats["cost_usd"], stats["served_cost_usd"], False))
    return rows


class ShadowEvidenceGate:
    """A promotion gate that runs ``inner`` and adds the shadow record of the candidate version;
    with ``gate_min_judged`` > 0 and at least that many blind judgements, a candidate whose win
    share is below ``gate_min_win_share`` is refused even if ``inner`` passed it."""

    def __init__(self, db: Engine | str, cfg: ShadowConfig, inner: Callable[[Any, Any], Any]) -> None:
        self.db, self.cfg, self.inner = db, cfg, inner

    def __call__(self, candidate, incumbent):
        result = self.inner(candidate, incumbent)
        engine, own = (self.db, False) if isinstance(self.db, Engine) else (_engine(self.db), True)
        try:
            stats = summary(engine, policy=candidate.policy, version=candidate.version)
        finally:
            if own:
                engine.dispose()
        stats = stats[0] if stats else None
        result.rows = [*result.rows, *evidence_rows(stats)]
        result.details = {**result.details, "shadow": stats}
        need = self.cfg.gate_min_judged
        if result.passed and need and stats and stats["judged"] >= need and stats["win_share"] < self.cfg.gate_min_win_share:
            result.passed = False
            result.reason = (f"{result.reason}; but in the shadow on live traffic the candidate won {stats['win_share']:.0%} of "
                             f"{stats['judged']} blind judgements (needs {self.cfg.gate_min_win_share:.0%})")
        return result


def _engine(url: str) -> Engine:
    from router.ledger.db import make_engine

    return make_engine(url)
