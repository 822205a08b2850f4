"""Where a λ lands on a served policy's cost–quality curve, before an operator applies it.

The evaluation set is a routing matrix split (``tuning`` in the YAML config): every prompt with
the measured outcome of every matrix model, and ``expert_map`` saying which model each of this
deployment's experts stands for. For a policy *as it serves* (bound to the live experts), the
curve sweeps λ over a grid and, at each λ, routes every evaluation prompt with the serving rule
(argmax predicted quality − λ·cost, the cost estimate ``decide`` uses: prompt tokens plus the
default completion budget at the experts' prices). A point is then

- quality: the mean measured outcome of the chosen experts' models on those prompts,
- cost: the mean expected cost of the chosen experts at this deployment's prices (prompt
  characters and a 256-token answer), so ×1,000 is the expected cost per 1,000 requests.

Predictions are made once per served policy object (a reload or promotion makes a new one) and
cached; a λ then costs one vectorised argmax, fast enough to follow a slider live. Exploration
(``policy.exploration``) is not part of the curve: it is the policy's own choice that is shown.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import TuningConfig
from core.errors import InvalidRequestError, PolicyError
from core.types import ExpertInfo

N_LAMBDAS = 120  # log-spaced λ values, plus λ = 0 (the slider's stops)
DECADES = (-3.0, 3.0)


@dataclass
class _EvalSet:
    prompts: list[str]
    outcome: np.ndarray  # (n, k) measured quality of each live expert's model, NaN where unknown
    known: np.ndarray  # (n, k) candidates
    expected_cost: np.ndarray  # (n, k) USD at the deployment's prices
    decision_cost: np.ndarray  # (n, k) USD as the service's decision estimates it
    source: str


@dataclass
class _Prepared:
    policy: Any
    quality: np.ndarray  # predicted, (n, k)
    lambdas: np.ndarray
    curve: list[dict[str, Any]]


class TuningService:
    """Cost–quality curves of the served policies on the configured evaluation set."""

    def __init__(self, cfg: TuningConfig | None, experts: list[ExpertInfo], *, default_max_tokens: int = 256,
                 root: Path | None = None) -> None:
        self.cfg = cfg
        self.experts = experts
        self.default_max_tokens = default_max_tokens
        self.root = root
        self._eval: _EvalSet | None = None
        self._prepared: dict[str, _Prepared] = {}
        self._loaded_stamp: float | None = None
        self._lock = threading.Lock()

    def _path(self) -> Path:
        path = Path(self.cfg.data)
        return self.root / path if not path.is_absolute() and self.root is not None else path

    def unavailable(self) -> str | None:
        """Why no curve can be drawn (None: it can), without loading anything."""
        if self.cfg is None:
            return "no evaluation set configured: add `tuning: {data: <routing matrix folder>, expert_map: ...}` to the config"
        if self._eval is None and not self._path().exists():
            return f"the evaluation set {self._path()} does not exist"
        return None

    # -- the evaluation set ------------------------------------------------------------------------
    def _stamp(self) -> float | None:
        if self.cfg is None:
            return None
        try:
            return (self._path() / "matrix.parquet").stat().st_mtime
        except OSError:
            return None

    def _load(self) -> _EvalSet:
        # A calibration matrix grows while the service runs (autolearn): reload when it changes.
        if self._eval is not None and self._stamp() == self._loaded_stamp:
            return self._eval
        self._eval, self._prepared, self._loaded_stamp = None, {}, self._stamp()
        reason = self.unavailable()
        if reason is not None:
            raise PolicyError(reason)
        from policies.costs import CostModel
        from policies.data import RoutingData

        path = self._path()
        data = RoutingData.load(path)
        rows = data.rows_of(self.cfg.split)
        if not len(rows):
            raise PolicyError(f"evaluation set {path}: no rows in split {self.cfg.split!r}")
        if len(rows) > self.cfg.max_rows:
            rows = np.sort(np.random.default_rng(0).choice(rows, self.cfg.max_rows, replace=False))
        data = data.subset(rows)
        model_of = {e: m for m, e in self.cfg.expert_map.items()}
        n, names = len(data), [e.name for e in self.experts]
        outcome = np.full((n, len(names)), np.nan)
        for j, name in enumerate(names):
            model = model_of.get(name, name)
            if model in data.models:
                outcome[:, j] = data.scores[:, data.models.index(model)]
        known = ~np.isnan(outcome)
        keep = known.any(axis=1)
        if not keep.any():
            raise PolicyError(f"evaluation set {path}: no expert maps to a model of it ({', '.join(data.models)}); "
                              "set tuning.expert_map")
        prompts = [p for p, k in zip(data.prompts, keep) if k]
        p_in = np.array([e.input_usd_per_mtok for e in self.experts]) / 1e6
        p_out = np.array([e.output_usd_per_mtok for e in self.experts]) / 1e6
        tokens = np.array([len(p) // 4 + 1 for p in prompts], dtype=float)
        self._eval = _EvalSet(prompts=prompts, outcome=outcome[keep], known=known[keep],
                              expected_cost=CostModel.from_prices(self.experts).predict(prompts),
                              decision_cost=np.outer(tokens, p_in) + self.default_max_tokens * p_out[None, :],
                              source=f"{path.name}/{self.cfg.split} ({len(prompts)} prompts)")
        return self._eval

    # -- per policy --------------------------------------------------------------------------------
    def _columns(self, policy) -> np.ndarray:
        """Index of each of the policy's experts among the deployment's experts."""
        names = [e.name for e in self.experts]
        return np.array([names.index(n) for n in policy.expert_names])

    def _prepare(self, name: str, policy) -> _Prepared:
        with self._lock:
            ev = self._load()  # first: a changed evaluation set drops every prepared curve
            ready = self._prepared.get(name)
            if ready is not None and ready.policy is policy:
                return ready
            cols = self._columns(policy)
            quality = np.asarray(policy.predict_quality(ev.prompts), dtype=float)
            lambdas = self._grid(ev, cols)
            prepared = _Prepared(policy=policy, quality=quality, lambdas=lambdas, curve=[])
            prepared.curve = self._points(ev, prepared, cols, lambdas)
            self._prepared[name] = prepared
            return prepared

    def _grid(self, ev: _EvalSet, cols: np.ndarray) -> np.ndarray:
        """λ = 0, then log-spaced around (outcome range / typical decision-cost spread)."""
        cost = np.where(ev.known[:, cols], ev.decision_cost[:, cols], np.nan)
        with np.errstate(invalid="ignore"):
            spread = np.nanmax(cost, axis=1) - np.nanmin(cost, axis=1)
        spread = spread[np.isfinite(spread) & (spread > 0)]
        scale = float(np.median(spread)) if len(spread) else 1.0
        finite = ev.outcome[np.isfinite(ev.outcome)]
        score_range = float(finite.max() - finite.min()) if len(finite) and finite.max() > finite.min() else 1.0
        return np.r_[0.0, score_range / scale * np.logspace(*DECADES, N_LAMBDAS)]

    def _points(self, ev: _EvalSet, prep: _Prepared, cols: np.ndarray, lambdas: np.ndarray) -> list[dict[str, Any]]:
        known = ev.known[:, cols]
        choices = prep.policy.choose_many(prep.quality, ev.decision_cost[:, cols], lambdas, known)
        rows = np.arange(len(ev.prompts))[None, :]
        quality = ev.outcome[:, cols][rows, choices].mean(axis=1)
        cost = ev.expected_cost[:, cols][rows, choices].mean(axis=1)
        names = prep.policy.expert_names
        out = []
        for i, lam in enumerate(lambdas):
            counts = np.bincount(choices[i], minlength=len(names)) / choices.shape[1]
            out.append({"lambda": float(lam), "quality": round(float(quality[i]), 6), "cost_usd": float(cost[i]),
                        "cost_per_1k_usd": float(cost[i] * 1000),
                        "share": {n: round(float(c), 4) for n, c in zip(names, counts) if c > 0}})
        return out

    # -- what the dashboard asks -------------------------------------------------------------------
    def curve(self, name: str, policy, *, lambda_: float | None = None) -> dict[str, Any]:
        """The policy's curve on the λ grid, each expert alone for reference, and (optionally)
        the point of one λ."""
        prep = self._prepare(name, policy)
        ev = self._load()
        cols = self._columns(policy)
        singles = []
        for j, expert in zip(cols, policy.expert_names):
            ok = ev.known[:, j]
            if ok.any():
                singles.append({"expert": expert, "quality": round(float(ev.outcome[ok, j].mean()), 6),
                                "cost_usd": float(ev.expected_cost[ok, j].mean()), "n": int(ok.sum())})
        out = {"policy": name, "version": getattr(policy, "version", None), "evaluation_set": ev.source,
               "uses_lambda": policy.fixed_lambda is None, "lambdas": [float(x) for x in prep.lambdas],
               "curve": prep.curve, "experts": singles}
        if lambda_ is not None:
            out["point"] = self.point(name, policy, lambda_)
        return out

    def point(self, name: str, policy, lambda_: float) -> dict[str, Any]:
        if not (lambda_ >= 0 and np.isfinite(lambda_)):
            raise InvalidRequestError(f"λ must be a finite number ≥ 0, not {lambda_!r}", param="lambda")
        prep = self._prepare(name, policy)
        return self._points(self._load(), prep, self._columns(policy), np.array([float(lambda_)]))[0]


def record_tuning(engine, *, before: dict[str, Any], after: dict[str, Any], version: str | None, actor: str | None) -> None:
    """A ``tune`` event in the registry's history: who switched the active policy / λ, from what."""
    from datetime import UTC, datetime

    from sqlalchemy.orm import Session

    from router.ledger.models import PolicyEventRow

    reason = f"active policy {before['active']} → {after['active']}, λ {before['lambda']:g} → {after['lambda']:g}"
    with Session(engine) as s, s.begin():
        s.add(PolicyEventRow(created_at=datetime.now(UTC), policy=after["active"], action="tune", version=version,
                             previous_version=None, actor=actor, reason=reason, forced=False,
                             gate={"before": before, "after": after}))


def promotion_gate(settings, policy: str, *, lambda_: float):
    """The gate a promotion from the dashboard goes through, as ``expertmux policies promote``
    picks it: the configured benchmark (``policy.gate``) at the served λ, gating the first
    promotion against the configured artifact; else the registry's default (the manifests' figures).
    When the config's shadow runs this policy, its record on live traffic joins as evidence."""
    gate = _benchmark_gate(settings, policy, lambda_=lambda_)
    shadow = settings.app_config.shadow
    if shadow is not None and shadow.policy == policy:
        from router.lifecycle.gate import manifest_gate
        from router.shadow.evidence import ShadowEvidenceGate

        return ShadowEvidenceGate(settings.resolved_database_url, shadow, gate or manifest_gate)
    return gate


def _benchmark_gate(settings, policy: str, *, lambda_: float):
    from core.errors import ExpertmuxError
    from core.settings import PROJECT_ROOT
    from policies.artifacts import resolve
    from router.lifecycle.gate import BenchmarkGate

    gcfg = settings.app_config.policy.gate
    if gcfg is None:
        return None
    raw = (settings.app_config.policy.options.get(policy) or {}).get("artifact")
    fallback = None
    if raw:
        try:
            fallback = resolve(Path(str(raw)) if Path(str(raw)).is_absolute() else PROJECT_ROOT / str(raw))
        except ExpertmuxError:
            fallback = None
    data = Path(gcfg.data) if Path(gcfg.data).is_absolute() else PROJECT_ROOT / gcfg.data
    return BenchmarkGate(data, split=gcfg.split, lambda_=lambda_, min_gain=gcfg.min_gain, tolerance=gcfg.tolerance,
                         fallback_incumbent=fallback)
