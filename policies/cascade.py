"""Cascade routing: route, read the answer, escalate only when it pays.

A query-level policy (the shared contract: ``predict_quality`` gives the ex-ante estimates,
``decide`` the first expert to run) plus one step method::

    next_step(request, answers_in_hand) -> CascadeStep(expert to run next | None = stop, answer_with)

At every step it maximises expected best quality − λ·cost over the sets of experts it could
still run (``policies.cascade_engine``), with ex-ante estimates from any query-level policy
(``ex_ante``: knn, tryage, ...) for the experts not run yet and calibrated post-hoc estimates
(``policies.posthoc``) of the answers in hand (Dekoninck, Baader, Vechev, ICML 2025). The policy
never calls an expert and keeps no session state: the request path runs the steps and passes the
answers back in.

Strategies (``strategy``): ``cascade_routing`` (default), ``routing`` (one step on the same
estimates: plain routing), ``cascade`` (the paper's ordered cascade) and ``threshold`` (the
classic cascade; its threshold τ is fitted on train for each λ to maximise mean quality − λ·cost).
``cascade_route`` and ``cascade_threshold`` are the same policy with those defaults, so one
``expertmux eval`` run compares them.

``ex_ante_params`` are NAME=VALUE items for the ex-ante policy (``("k=20",)``).
``simulate=(σ_ante, σ_post)`` is the paper's simulation for matrices without answers or
logprobs: estimates are the true scores plus Gaussian noise, recalibrated per expert on train.
It reads the outcomes of the rows it routes, so it is for evaluation only, never served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import NoCandidateError, PolicyError
from core.types import Decision, ExpertInfo, RouteRequest
from policies.base import Policy
from policies.cascade_engine import STRATEGIES, choose_step, members, normal_draws, run_cascades
from policies.cascade_quality import AnswerQuality, SimulatedQuality, ViewGrid
from policies.data import RoutingData
from policies.posthoc import ESTIMATORS, AnswerView, get_estimator
from policies.registry import create_policy, get_policy_class

# "judge" is opt-in (estimator="judge"): its verdicts cost a call per answer, which offline runs do not charge
AUTO_CANDIDATES = ("logprob_mean", "logprob_min", "logprob_sum", "answer_prob", "agreement", "paper", "length")


def parse_params(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``("k=20", "k_grid=[5, 10]")`` → {"k": 20, "k_grid": [5, 10]} (values parsed as JSON when they parse)."""
    import json

    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = str(item).partition("=")
        if not sep or not key:
            raise PolicyError(f"ex_ante_params wants NAME=VALUE items, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


@dataclass
class CascadeStep:
    """One live step: run ``expert`` next, or stop (``expert`` None) and answer with ``answer_with``."""

    expert: str | None
    answer_with: str | None
    estimates: dict[str, float] = field(default_factory=dict)  # μ per expert in this state
    values: dict[str, float] = field(default_factory=dict)  # value of running each expert next
    reason: str = ""


class CascadePolicy(Policy):
    name = "cascade"
    requires_training = True
    default_strategy = "cascade_routing"

    def __init__(self, strategy: str | None = None, ex_ante: str = "knn", ex_ante_params: tuple[str, ...] = (),
                 estimator: str = "auto", calibration: str = "isotonic", max_depth: int | None = None,
                 force_order: bool = True, n_samples: int = 128, folds: int = 5,
                 simulate: tuple[float, float] | None = None, encoder: str = "minilm", random_state: int = 0) -> None:
        self.strategy = strategy
        self.ex_ante = ex_ante
        self.ex_ante_params = ex_ante_params
        self.estimator = estimator
        self.calibration = calibration
        self.max_depth = max_depth
        self.force_order = force_order
        self.n_samples = n_samples
        self.folds = folds
        self.simulate = simulate
        self.encoder = encoder
        self.random_state = random_state

    # ---- fitting --------------------------------------------------------------------------------
    def _inner(self):
        params = parse_params(self.ex_ante_params)
        cls = get_policy_class(self.ex_ante)
        for k, v in (("encoder", self.encoder), ("random_state", self.random_state)):
            if k in cls._param_names() and k not in params:
                params[k] = v
        return create_policy(self.ex_ante, **params)

    def _fit(self, train: RoutingData) -> None:
        self.strategy_ = self.strategy or self.default_strategy
        if self.strategy_ not in STRATEGIES:
            raise PolicyError(f"policy {self.name!r}: strategy must be one of {STRATEGIES}, not {self.strategy_!r}")
        m = len(self.experts_)
        costs = train.cost_matrix()
        self.order_ = np.argsort(np.nanmean(np.where(train.known, costs, np.nan), axis=0), kind="stable").astype(np.int64)
        self.depth_ = int(min(self.max_depth or m, m))
        self.z_ = normal_draws(self.n_samples, m, self.random_state)
        if self.simulate is not None:
            sa, sp = (float(x) for x in self.simulate)
            self.quality_ = SimulatedQuality(sa, sp, self.random_state).fit(train.scores)
            tables = self.quality_.tables(*self.quality_.estimates(train.scores, 0))
        else:
            tables = self._fit_answers(train)
        self._fit_threshold(train, tables)

    def _fit_answers(self, train: RoutingData):
        oof = np.full(train.scores.shape, np.nan)
        folds = train.grouped_folds(self.folds, seed=self.random_state) if len(train) >= 2 * self.folds else []
        for tr, te in folds:  # out-of-fold ex-ante predictions: what the calibration may trust
            oof[te] = self._inner().fit(train.subset(tr), experts=self.experts_).predict_quality([train.prompts[i] for i in te])
        self.ante_policy_ = self._inner().fit(train, experts=self.experts_)
        if not folds:
            oof = np.asarray(self.ante_policy_.predict_quality(train.prompts), dtype=float)
        grid = ViewGrid(train.prompts, self.expert_names, train.answers, train.logprobs, train.judge)
        if train.answers is None:  # nothing to read after a call (not a calibration matrix): no post-hoc signal
            names = ["none"]
        elif self.estimator != "auto":
            names = [self.estimator]
        else:
            names = [n for n in AUTO_CANDIDATES if self._has_inputs(n, train)]
        def quality(name: str, posthoc_only: bool) -> AnswerQuality:
            return AnswerQuality(get_estimator(name), self.calibration, self.depth_, self.folds,
                                 self.random_state).fit(grid, train.scores, oof, posthoc_only=posthoc_only)

        if len(names) > 1:  # pick the estimator of lowest cross-fitted Brier score on train
            scored = [quality(n, True) for n in names]
            self.estimator_scores_ = {q.estimator.name: round(q.oof_brier_, 6) for q in scored}
            names = [min(scored, key=lambda q: q.oof_brier_ if np.isfinite(q.oof_brier_) else np.inf).estimator.name]
        self.quality_ = quality(names[0], False)
        self.estimator_scores_ = {**getattr(self, "estimator_scores_", {}), names[0]: round(self.quality_.oof_brier_, 6)}
        return self.quality_.oof_tables()

    @staticmethod
    def _has_inputs(name: str, data: RoutingData) -> bool:
        need = ESTIMATORS[name].needs
        if need == "logprobs":
            return data.logprobs is not None and any(v for v in data.logprobs.ravel())
        if need == "judge":
            return data.judge is not None and bool(np.isfinite(data.judge).any())
        return need == "answers"

    def _fit_threshold(self, train: RoutingData, tables) -> None:
        """τ grid and the train curve (mean quality, mean cost) of the threshold cascade at each τ."""
        taus = np.r_[-np.inf, np.linspace(0.0, 1.0, 41), np.inf]
        run = run_cascades(tables, self.predict_query_cost(train.prompts), train.known, [], order=self.order_,
                           strategy="threshold", max_depth=self.depth_, z=self.z_, taus=taus)
        self.tau_grid_ = taus
        self.tau_quality_ = run.quality(train.scores).mean(axis=1)
        self.tau_cost_ = run.spent(train.cost_matrix()).mean(axis=1)

    def thresholds(self, lambdas: Sequence[float]) -> np.ndarray:
        """τ(λ): the τ whose train curve point maximises mean quality − λ·mean cost."""
        lam = np.asarray(lambdas, dtype=float)[:, None]
        util = self.tau_quality_[None, :] - lam * self.tau_cost_[None, :] - 1e-12 * self.tau_cost_[None, :]
        return self.tau_grid_[np.argmax(util, axis=1)]

    # ---- estimates ----------------------------------------------------------------------------------
    @property
    def reads_prompt(self) -> bool:  # type: ignore[override]
        """As its ex-ante policy (a simulation reads outcomes instead: evaluation only)."""
        return self.simulate is None and getattr(getattr(self, "ante_policy_", None), "reads_prompt", False)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        """Ex-ante estimates (nothing run yet), recalibrated per expert."""
        self._check_fitted()
        if self.simulate is not None:
            raise PolicyError(f"policy {self.name!r} in simulation mode reads the outcomes: evaluation only")
        raw = np.asarray(self.ante_policy_.predict_quality(prompts), dtype=float)
        return self.quality_.ante_[None, :, 0] + self.quality_.ante_[None, :, 1] * raw

    def _tables(self, prompts: Sequence[str], views: Sequence[Sequence[AnswerView]]):
        if self.simulate is not None:
            raise PolicyError(f"policy {self.name!r} in simulation mode reads the outcomes: evaluation only")
        raw = np.asarray(self.ante_policy_.predict_quality(prompts), dtype=float)
        return self.quality_.tables(ViewGrid.of(views), raw)

    # ---- offline: every query under every λ --------------------------------------------------------
    def cascade_many(self, ev: RoutingData, lambdas: Sequence[float]) -> dict[str, Any]:
        """Run the cascade on the rows of ``ev``: the answer it returns per λ and row (``choices``)
        and the cost of every call it made (``spent``). Answers are read only for experts it ran."""
        self._check_fitted()
        ev = ev.select_models(self.expert_names)
        if self.simulate is not None:
            tables = self.quality_.tables(*self.quality_.estimates(ev.scores, 1))
        else:
            raw = np.asarray(self.ante_policy_.predict_quality(ev.prompts), dtype=float)
            tables = self.quality_.tables(ViewGrid(ev.prompts, self.expert_names, ev.answers, ev.logprobs, ev.judge), raw)
        taus = self.thresholds(lambdas) if self.strategy_ == "threshold" else None
        run = run_cascades(tables, self.predict_query_cost(ev.prompts), ev.known, lambdas, order=self.order_,
                           strategy=self.strategy_, max_depth=self.depth_, force_order=self.force_order, z=self.z_,
                           taus=taus)
        info = {"cascade": {"strategy": self.strategy_, "estimator": self.quality_.estimator.name
                            if isinstance(self.quality_, AnswerQuality) else f"simulated {self.simulate}",
                            "estimator_brier": getattr(self, "estimator_scores_", {}),
                            "mean_calls": [round(float(v), 4) for v in run.steps.mean(axis=1)]}}
        return {"choices": run.selected, "spent": run.spent(ev.cost_matrix()), "steps": run.steps, "run": run, "info": info}

    # ---- live: one step at a time --------------------------------------------------------------------
    def next_step(self, request: RouteRequest, answers: Sequence[AnswerView], *, lambda_: float = 0.0,
                  unavailable: frozenset[str] = frozenset(), max_steps: int | None = None,
                  budget_usd: float | None = None) -> CascadeStep:
        """The next expert to run given the answers in hand (in the order they came), or stop.

        ``unavailable``: experts that must not run now (down, or failed this request);
        ``max_steps`` / ``budget_usd``: what the request may still spend in calls / USD."""
        self._check_fitted()
        names = self.expert_names
        lam = self._lambda_for(request, lambda_)
        views = [AnswerView(request.prompt, None, n) for n in names]
        R = 0
        for a in answers:
            j = names.index(a.expert)
            views[j], R = a, R | 1 << j
        mu, sd = self._tables([request.prompt], [views])(R)
        cost = self.predict_cost([request.prompt_tokens], [request.max_completion_tokens])
        allowed = self._feasible(request, cost[0], unavailable)
        if budget_usd is not None:
            allowed &= cost[0] <= budget_usd
        depth = min(self.depth_, len(answers) + max_steps) if max_steps is not None else self.depth_
        last = names.index(answers[-1].expert) if answers else None
        tau = float(self.thresholds([lam])[0]) if self.strategy_ == "threshold" else None
        nxt, values = choose_step(mu, sd, cost, allowed[None, :], R, lam, order=self.order_, strategy=self.strategy_,
                                  max_depth=depth, force_order=self.force_order, z=self.z_, tau=tau, last=last)
        estimates = {n: round(float(mu[0, j]), 6) for j, n in enumerate(names)}
        vals = {names[e]: round(v, 6) for e, v in values.items()}
        if nxt >= 0:
            return CascadeStep(names[nxt], None, estimates, vals, f"{self.strategy_}: run {names[nxt]} (λ={lam:g})")
        run = members(R, len(names))
        if not run:
            raise NoCandidateError(self._why_infeasible(request, unavailable))
        best = last if self.strategy_ == "threshold" else max(run, key=lambda j: mu[0, j])
        return CascadeStep(None, names[best], estimates, vals, f"{self.strategy_}: stop, answer with {names[best]}")

    def decide(self, request: RouteRequest, *, lambda_: float = 0.0, unavailable: frozenset[str] = frozenset()) -> Decision:
        """The first step as a query-level decision; the ranking behind it is the fallback chain."""
        step = self.next_step(request, [], lambda_=lambda_, unavailable=unavailable)
        lam = self._lambda_for(request, lambda_)
        ev = self._evaluate(request, lam, unavailable)
        names = self.expert_names
        ok = [i for i in np.flatnonzero(ev["feasible"])]
        order = sorted(ok, key=lambda i: (names[i] != step.expert, -ev["utility"][i]))
        return Decision(expert=step.expert, policy=self.name, policy_version=self.version,
                        scores={names[i]: round(float(ev["utility"][i]), 9) for i in ok},
                        propensities={names[i]: float(names[i] == step.expert) for i in ok},
                        ranking=[names[i] for i in order], reason=step.reason)

    # ---- artifacts and serving ------------------------------------------------------------------------
    def _get_state(self):
        if self.simulate is not None:
            raise PolicyError(f"policy {self.name!r} in simulation mode reads the outcomes: it has no servable form")
        inner_arrays, inner_meta = self.ante_policy_.artifact_state()
        q_arrays, q_meta = self.quality_.state()
        arrays = {"order": self.order_, "z": self.z_, "tau_grid": self.tau_grid_, "tau_quality": self.tau_quality_,
                  "tau_cost": self.tau_cost_, **{f"ante.{k}": v for k, v in inner_arrays.items()},
                  **{f"q.{k}": v for k, v in q_arrays.items()}}
        meta = {"strategy": self.strategy_, "depth": self.depth_, "ante": inner_meta,
                "ante_params": self.ante_policy_.get_params(), "quality": q_meta,
                "estimator_scores": getattr(self, "estimator_scores_", {})}
        return arrays, meta

    def _set_state(self, arrays, meta):
        self.strategy_, self.depth_ = meta["strategy"], int(meta["depth"])
        self.order_ = np.asarray(arrays["order"], dtype=np.int64)
        self.z_ = np.asarray(arrays["z"], dtype=float)
        for k in ("tau_grid", "tau_quality", "tau_cost"):
            setattr(self, k + "_", np.asarray(arrays[k], dtype=float))
        inner = {k.removeprefix("ante."): v for k, v in arrays.items() if k.startswith("ante.")}
        self.ante_policy_ = get_policy_class(self.ex_ante).from_artifact_state(meta["ante_params"], inner, meta["ante"])
        self.quality_ = AnswerQuality.from_state({k.removeprefix("q."): v for k, v in arrays.items() if k.startswith("q.")},
                                                 meta["quality"])
        self.estimator_scores_ = dict(meta.get("estimator_scores") or {})
        if self.z_.shape[1] != len(self.experts_) or len(self.order_) != len(self.experts_):
            raise ValueError("cascade tables do not match the artifact's experts")

    def for_experts(self, experts: Sequence[ExpertInfo], expert_map: Mapping[str, str]) -> Policy:
        """Post-hoc estimators are calibrated per expert: a cascade serves the experts it was
        trained on, under their own names."""
        live = {e.name for e in experts}
        bad = {m: x for m, x in expert_map.items() if m != x}
        missing = [n for n in self.expert_names if n not in live]
        if bad or missing:
            raise PolicyError(f"policy {self.name!r} serves the experts it was calibrated on under their own names; "
                              f"renamed: {bad or 'none'}, not configured: {missing or 'none'}")
        return self


class CascadeRoutePolicy(CascadePolicy):
    """Plain routing on the cascade's own ex-ante estimates (the one-step special case)."""

    name = "cascade_route"
    default_strategy = "routing"


class CascadeThresholdPolicy(CascadePolicy):
    """The classic threshold cascade on the same estimates (τ fitted on train per λ)."""

    name = "cascade_threshold"
    default_strategy = "threshold"
