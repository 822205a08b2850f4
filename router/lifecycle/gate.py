"""Promotion gates: does a candidate version serve better than the active one?

A gate is a callable ``gate(candidate, incumbent) -> GateResult`` (``router.lifecycle.registry``
calls it). Two are provided:

- ``manifest_gate``: compares the figures both manifests recorded on a common evaluation split
  (``expertmux train`` scores every artifact on the matrix's ``test`` rows). Cheap; used by
  default, e.g. from the admin page.
- ``BenchmarkGate``: evaluates both artifacts now on a configured routing matrix split with the
  evaluation harness (``policies.evaluation.harness.evaluate_fitted``): ``aiq`` over the λ sweep,
  and quality, cost and utility (quality − λ·cost) at the λ the service uses. Optionally adds an
  off-policy estimate on a held-out ledger slice (``ledger``: a callable returning extra rows).

The rule (both gates): the candidate passes if its ``aiq`` beats the incumbent's by more than
``min_gain`` and its utility at the served λ is not lower by more than ``tolerance``. With no
incumbent (nothing active and no configured artifact to compare with) the candidate passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import PolicyError


@dataclass
class GateResult:
    passed: bool
    reason: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # metric, candidate, incumbent, delta, higher_is_better
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(metric: str, cand: float | None, inc: float | None, higher_is_better: bool = True) -> dict[str, Any]:
    delta = None if cand is None or inc is None else round(cand - inc, 6)
    return {"metric": metric, "candidate": cand, "incumbent": inc, "delta": delta, "higher_is_better": higher_is_better}


def decide(rows: list[dict[str, Any]], *, min_gain: float = 0.0, tolerance: float = 0.0, label: str = "") -> GateResult:
    """Apply the rule to comparison rows holding ``aiq`` and (optionally) ``utility@λ``."""
    by = {r["metric"]: r for r in rows}
    aiq = by.get("aiq")
    if aiq is None or aiq["delta"] is None:
        return GateResult(False, f"no comparable aiq{label}: cannot tell whether the candidate is better", rows)
    if aiq["delta"] <= min_gain:
        return GateResult(False, f"aiq{label} {aiq['candidate']:.4f} does not beat the active version's "
                                 f"{aiq['incumbent']:.4f} (needs > +{min_gain:g})", rows)
    util = by.get("utility@λ")
    if util is not None and util["delta"] is not None and util["delta"] < -tolerance:
        return GateResult(False, f"aiq{label} is higher (+{aiq['delta']:.4f}) but utility at the served λ drops by "
                                 f"{-util['delta']:.4f} (tolerance {tolerance:g})", rows)
    return GateResult(True, f"aiq{label} {aiq['candidate']:.4f} beats {aiq['incumbent']:.4f} (+{aiq['delta']:.4f})", rows)


def manifest_gate(candidate, incumbent, *, min_gain: float = 0.0) -> GateResult:
    """Compare the evaluation figures recorded in both versions' metrics on a split they share."""
    if incumbent is None:
        return GateResult(True, "no active version: the candidate is the first to serve")
    common = [s for s, v in candidate.metrics.items()
              if isinstance(v, dict) and "aiq" in v and isinstance(incumbent.metrics.get(s), dict) and "aiq" in incumbent.metrics[s]]
    if not common:
        return GateResult(False, "the two versions recorded no evaluation on a common split; run the benchmark gate "
                                 "(`expertmux policies promote ... --data DIR`)")
    split = "test" if "test" in common else sorted(common)[0]
    c, i = candidate.metrics[split], incumbent.metrics[split]
    rows = [_row(k, c.get(k), i.get(k)) for k in ("aiq", "quality_at_best_cost", "gap_closed")]
    rows.append(_row("cost_to_best_quality", c.get("cost_to_best_quality"), i.get("cost_to_best_quality"), False))
    result = decide(rows, min_gain=min_gain, label=f" (recorded, split {split})")
    result.details = {"gate": "manifest", "split": split}
    return result


def evaluate_artifact(path: str | Path, data, *, split: str, lambda_: float) -> dict[str, Any]:
    """Harness figures of one artifact on ``data``'s ``split``, plus quality/cost/utility at ``lambda_``."""
    from policies.artifacts import load_artifact

    return evaluate_policy(load_artifact(path).policy, data, split=split, lambda_=lambda_, label=f"artifact {path}")


def evaluate_policy(policy, data, *, split: str, lambda_: float, label: str = "the policy") -> dict[str, Any]:
    """Harness figures of a fitted policy on ``data``'s ``split`` (its experts must be the set's
    models), plus quality, cost and utility at the served ``lambda_``."""
    import numpy as np

    from policies.data import TRAIN
    from policies.evaluation.harness import evaluate_fitted

    missing = [m for m in policy.expert_names if m not in data.models]
    if missing:
        raise PolicyError(f"{label} routes among {policy.expert_names}; the benchmark set {data.name!r} has no "
                          f"outcomes for {missing}")
    sel = data.select_models(policy.expert_names)
    train_rows, ev_rows = sel.rows_of(TRAIN), sel.rows_of(split)
    if not len(ev_rows):
        raise PolicyError(f"the benchmark set {data.name!r} has no {split!r} rows")
    train = sel.subset(train_rows) if len(train_rows) else sel
    ev = sel.subset(ev_rows)
    figures = evaluate_fitted(policy, train, ev)
    ev = ev.subset(ev.known.any(axis=1))
    pick = policy.decide_many(ev.prompts, [lambda_], candidates=ev.known)[0]
    rows = np.arange(len(ev))
    q, c = float(np.nan_to_num(ev.scores[rows, pick]).mean()), float(ev.cost_matrix()[rows, pick].mean())
    figures.update({"quality@λ": round(q, 6), "cost@λ": float(f"{c:.6g}"), "utility@λ": round(q - lambda_ * c, 6)})
    return figures


class BenchmarkGate:
    """Evaluate candidate and incumbent on a benchmark split now and compare (see the module doc).

    ``fallback_incumbent``: the artifact the service serves when no version is active (the
    configured one), so the first promotion is gated too. ``ledger``: optional callable
    ``(candidate, incumbent) -> list of rows`` (an off-policy estimate on logged traffic) whose
    rows are shown and, when they hold a metric ``ledger_value`` with a delta, must not be negative.
    """

    def __init__(self, data: str | Path, *, split: str = "test", lambda_: float = 0.0, min_gain: float = 0.0,
                 tolerance: float = 0.0, fallback_incumbent: str | Path | Any | None = None,
                 ledger: Callable[[Any, Any], list[dict[str, Any]]] | None = None) -> None:
        self.data_path, self.split, self.lambda_ = Path(data), split, lambda_
        self.min_gain, self.tolerance = min_gain, tolerance
        self.fallback_incumbent = fallback_incumbent  # an artifact path, or a fitted policy (e.g. the served prior)
        self.ledger = ledger

    def __call__(self, candidate, incumbent) -> GateResult:
        from policies.data import RoutingData

        inc_path = incumbent.artifact_path if incumbent is not None else self.fallback_incumbent
        if inc_path is None:
            return GateResult(True, "no active version and no configured artifact: the candidate is the first to serve")
        data = RoutingData.load(self.data_path)
        c = evaluate_artifact(candidate.artifact_path, data, split=self.split, lambda_=self.lambda_)
        if isinstance(inc_path, str | Path):
            i = evaluate_artifact(inc_path, data, split=self.split, lambda_=self.lambda_)
        else:  # a fitted policy that needs no artifact (the built-in one the service serves)
            i = evaluate_policy(inc_path, data, split=self.split, lambda_=self.lambda_, label=f"policy {inc_path.name!r}")
            inc_path = f"policy:{inc_path.name}"
        rows = [_row(k, c.get(k), i.get(k)) for k in ("aiq", "quality_at_best_cost", "gap_closed", "quality@λ", "utility@λ")]
        rows.append(_row("cost@λ", c.get("cost@λ"), i.get("cost@λ"), False))
        extra = self.ledger(candidate, incumbent) if self.ledger is not None else []
        result = decide(rows, min_gain=self.min_gain, tolerance=self.tolerance,
                        label=f" on {data.name}/{self.split}")
        for r in extra:
            rows.append(r)
            if result.passed and r.get("metric") == "ledger_value" and r.get("delta") is not None and r["delta"] < 0:
                result = GateResult(False, f"benchmark passed, but the off-policy estimate on the ledger is lower "
                                           f"({r['delta']:+.4f})", rows)
        result.rows = rows
        result.details = {"gate": "benchmark", "data": str(self.data_path), "split": self.split, "lambda": self.lambda_,
                          "incumbent_artifact": str(inc_path), "n_queries": c.get("n_queries")}
        return result


def bind_artifact(path: str | Path, experts, expert_map: dict[str, str] | None = None):
    """An artifact's policy serving ``experts`` (ExpertInfo): through ``expert_map`` (model → expert)
    when it was trained on other models, as it is when it was trained on these experts."""
    from policies.artifacts import load_artifact

    policy = load_artifact(path).policy
    live = {e.name for e in experts}
    if set(policy.expert_names) <= live:
        return policy.for_experts(experts, {m: m for m in policy.expert_names})
    if not expert_map:
        raise PolicyError(f"artifact {path} scores {policy.expert_names}, not this deployment's experts {sorted(live)}; "
                          "an expert_map is needed to estimate it on the ledger")
    return policy.for_experts(experts, {m: e for m, e in expert_map.items() if m in policy.expert_names})


class LedgerGate:
    """Off-policy estimates of both versions on a held-out slice of the ledger (requests with
    feedback created in [since, until)), via ``policies.logged_eval.evaluate_logged``.

    As a gate: the candidate passes if its estimated mean feedback score (``method``: dr, ips or
    snips) beats the incumbent's by more than ``min_gain``. ``rows`` gives the comparison rows
    alone, for ``BenchmarkGate(ledger=...)``.
    """

    def __init__(self, db, *, experts, expert_map: dict[str, str] | None = None, since=None, until=None,
                 lambda_: float = 0.0, method: str = "dr", min_gain: float = 0.0,
                 fallback_incumbent: str | Path | None = None) -> None:
        self.db, self.experts, self.expert_map = db, list(experts), expert_map
        self.since, self.until, self.lambda_, self.method, self.min_gain = since, until, lambda_, method, min_gain
        self.fallback_incumbent = fallback_incumbent

    def _estimate(self, path, logged) -> dict[str, Any]:
        from policies.logged_eval import evaluate_logged

        return evaluate_logged(bind_artifact(path, self.experts, self.expert_map), logged, lam=self.lambda_)

    def rows(self, candidate, incumbent) -> list[dict[str, Any]]:
        from router.learning.bandit import load_logged

        inc_path = incumbent.artifact_path if incumbent is not None else self.fallback_incumbent
        if inc_path is None:
            return []
        logged = load_logged(self.db, since=self.since, until=self.until)
        c, i = self._estimate(candidate.artifact_path, logged), self._estimate(inc_path, logged)
        qc, qi = c["quality"][self.method], i["quality"][self.method]
        out = _row("ledger_value", qc["value"], qi["value"])
        out.update({"estimator": self.method, "candidate_ci": [qc["lo"], qc["hi"]], "incumbent_ci": [qi["lo"], qi["hi"]],
                    "rows": c["rows"]})
        cost = _row("ledger_cost", c["cost"][self.method]["value"], i["cost"][self.method]["value"], False)
        return [out, cost]

    def __call__(self, candidate, incumbent) -> GateResult:
        rows = self.rows(candidate, incumbent)
        if not rows:
            return GateResult(True, "no active version and no configured artifact: the candidate is the first to serve")
        value = rows[0]
        details = {"gate": "ledger", "estimator": self.method, "since": str(self.since), "until": str(self.until),
                   "rows": value["rows"]}
        if value["delta"] <= self.min_gain:
            return GateResult(False, f"{self.method} estimate on the ledger {value['candidate']:.4f} does not beat the active "
                                     f"version's {value['incumbent']:.4f} ({value['rows']} requests)", rows, details)
        return GateResult(True, f"{self.method} estimate on the ledger {value['candidate']:.4f} beats "
                                f"{value['incumbent']:.4f} ({value['rows']} requests)", rows, details)
