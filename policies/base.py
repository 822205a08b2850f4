"""The policy contract shared by every query-level routing policy.

scikit-learn rules: the constructor stores hyperparameters only, ``fit`` returns ``self``,
learned state ends in ``_``, ``get_params``/``set_params``/``clone`` work. A policy predicts a
quality per (query, expert) and, where it learns one, a cost; the base class turns predictions
into a decision with the one knob every policy shares:

    utility[e] = quality[e] − λ · cost_usd[e]      (λ: quality points one is willing to pay 1 USD for)

under constraints (allowed experts, max cost, max parameters, health). Every decision keeps the
per-candidate utilities and the probability with which each candidate would have been chosen.

Requests may add user-weighted constraints (Tryage's flags): penalties per 10× parameters, per
second of expected latency and per year of age are subtracted from the utility, and hard limits
(max cost, parameters, latency, earliest release date) remove candidates. ``pareto_front`` lists
the experts no other candidate beats on both predicted quality and cost.

Two ways in: the live service routes one request at a time with ``decide``; offline evaluation
routes a whole split under many λ at once with ``decide_many`` (same rule, vectorised). A policy
fitted on a routing matrix (``policies.data.RoutingData``) takes the matrix's models as its
experts, with the prices ``models.json`` gives, unless ``experts`` are passed explicitly.

A fitted learned policy saves and restores its state through ``artifact_state`` /
``from_artifact_state`` (plain arrays and JSON, see ``policies.artifacts``), and serves live
experts other than the matrix's models through ``for_experts`` (``MappedPolicy``: the config's
``expert_map`` says which trained model each live expert stands for; the mean of their quality).
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np

from core.errors import NoCandidateError, PolicyError
from core.types import Decision, ExpertInfo, RouteRequest
from policies.constraints import constraint_penalties, known_latency, pareto_indices
from policies.costs import CostModel
from policies.data import RoutingData


class Policy(ABC):
    """Base class for query-level policies."""

    name: ClassVar[str] = "policy"
    version: ClassVar[str] = "builtin"
    # Policies whose rule ignores the λ knob (e.g. `cheapest`) pin it here.
    fixed_lambda: ClassVar[float | None] = None
    # Learned policies need a routing matrix in `fit`; simple ones only need experts.
    requires_training: ClassVar[bool] = False
    # Evaluation-only policies (the oracle) read the outcomes of the rows they route; never served.
    uses_labels: ClassVar[bool] = False
    # Predictions run a model over the prompt: a server calls ``warm`` off its event loop first.
    reads_prompt: ClassVar[bool] = False

    # ---- scikit-learn style parameter handling -------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self" and sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self._param_names()}

    def set_params(self, **params: Any) -> Policy:
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise PolicyError(f"policy {self.name!r} has no parameter {key!r}; valid: {sorted(valid)}")
            setattr(self, key, value)
        return self

    def clone(self) -> Policy:
        return type(self)(**copy.deepcopy(self.get_params()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ---- learning -----------------------------------------------------------------------------
    def fit(self, train: RoutingData | None = None, *, experts: Sequence[ExpertInfo] | None = None) -> Policy:
        """Learn from training data (if the policy learns) over the given experts.

        ``experts`` defaults to the models of ``train`` (``RoutingData.experts()``); when both
        are given, ``train`` is restricted to the experts' columns (each must be in it).
        ``cost_model_`` predicts per-query costs from prompts: learned from the matrix's cost
        columns, else from the experts' prices, else uniform (quality-only matrix).
        """
        if experts is None:
            if not isinstance(train, RoutingData):
                raise PolicyError(f"policy {self.name!r}: fit needs experts=... or a RoutingData to take them from")
            experts = train.experts()
        self.experts_ = list(experts)
        if not self.experts_:
            raise PolicyError(f"policy {self.name!r} needs at least one expert")
        if isinstance(train, RoutingData):
            train = train.select_models([e.name for e in self.experts_])
            self.cost_model_ = CostModel.fit(train.prompts, train.costs, self.experts_)
        else:
            self.cost_model_ = CostModel.from_prices(self.experts_)
        if self.requires_training and not isinstance(train, RoutingData):
            raise PolicyError(f"policy {self.name!r} learns from a routing matrix: call fit(RoutingData, ...)")
        self._fit(train)
        return self

    def _fit(self, train: Any) -> None:  # noqa: B027 - optional hook
        """Override to learn from ``train`` (already restricted to ``experts_``); may be None."""

    @property
    def expert_names(self) -> list[str]:
        self._check_fitted()
        return [e.name for e in self.experts_]

    def _check_fitted(self) -> None:
        if not hasattr(self, "experts_"):
            raise PolicyError(f"policy {self.name!r} is not fitted; call fit() first")

    # ---- prediction ---------------------------------------------------------------------------
    @abstractmethod
    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        """Predicted quality, shape (n_prompts, n_experts), columns in ``experts_`` order."""

    def warm(self, prompts: Sequence[str]) -> None:
        """Compute what ``decide`` will read about these prompts, into the encoders' caches."""
        if self.reads_prompt:
            self.predict_quality(list(prompts))

    def served_prefill(self) -> tuple[str, tuple[int, ...]] | None:
        return None  # or (model, blocks) whose prefill states a local expert may hand over (``accept_prefill``)

    def accept_prefill(self, prompt: str, features: np.ndarray) -> None:
        raise PolicyError(f"policy {self.name!r} reads no expert's prefill")

    def predict_cost(self, prompt_tokens: Sequence[int], completion_tokens: Sequence[int]) -> np.ndarray:
        """Expected cost in USD from the experts' prices, shape (n, n_experts)."""
        self._check_fitted()
        p_in = np.array([e.input_usd_per_mtok for e in self.experts_]) / 1e6
        p_out = np.array([e.output_usd_per_mtok for e in self.experts_]) / 1e6
        return np.outer(prompt_tokens, p_in) + np.outer(completion_tokens, p_out)

    def predict_query_cost(self, prompts: Sequence[str]) -> np.ndarray:
        """Expected cost per (prompt, expert) from the prompt alone, shape (n, n_experts)."""
        self._check_fitted()
        return self.cost_model_.predict(prompts)

    def propensities(self, utility: np.ndarray, feasible: np.ndarray) -> np.ndarray:
        """Probability of choosing each candidate; deterministic argmax by default."""
        probs = np.zeros_like(utility)
        masked = np.where(feasible, utility, -np.inf)
        probs[int(np.argmax(masked))] = 1.0
        return probs

    def choose(self, utility: np.ndarray, probs: np.ndarray, feasible: np.ndarray) -> int:
        """Pick one candidate given the propensities; argmax by default."""
        return int(np.argmax(np.where(feasible, utility, -np.inf)))

    # ---- the decision rule ------------------------------------------------------------------
    def _lambda_for(self, request: RouteRequest, default: float) -> float:
        if self.fixed_lambda is not None:
            return self.fixed_lambda
        return request.options.lambda_ if request.options.lambda_ is not None else default

    def _evaluate(self, request: RouteRequest, lam: float, unavailable: frozenset[str]) -> dict[str, np.ndarray]:
        """Predicted quality and cost, penalties, utility and feasibility of every expert."""
        self._check_fitted()
        quality = np.asarray(self.predict_quality([request.prompt]), dtype=float)[0]
        cost = self.predict_cost([request.prompt_tokens], [request.max_completion_tokens])[0]
        latency = known_latency(request, self.experts_)
        penalty = constraint_penalties(request, self.experts_, latency)
        utility = quality - lam * cost - penalty
        feasible = self._feasible(request, cost, unavailable, latency)
        return {"quality": quality, "cost": cost, "penalty": penalty, "utility": utility, "feasible": feasible,
                "latency": latency}

    def decide(
        self, request: RouteRequest, *, lambda_: float = 0.0, unavailable: frozenset[str] = frozenset()
    ) -> Decision:
        """Route one request: utility = quality − λ·cost − penalties, constraints, ranking, propensities."""
        lam = self._lambda_for(request, lambda_)
        ev = self._evaluate(request, lam, unavailable)
        utility, feasible = ev["utility"], ev["feasible"]
        if not feasible.any():
            raise NoCandidateError(self._why_infeasible(request, unavailable))
        probs = self.propensities(utility, feasible)
        chosen = self.choose(utility, probs, feasible)
        order = sorted(np.flatnonzero(feasible), key=lambda i: (i != chosen, -utility[i]))
        names = self.expert_names
        reason = f"argmax quality − λ·cost with λ={lam:g}"
        if ev["penalty"].any():
            reason += " − user-weighted constraints"
        return Decision(
            expert=names[chosen],
            policy=self.name,
            policy_version=self.version,
            scores={n: round(float(u), 9) for n, u, ok in zip(names, utility, feasible) if ok},
            propensities={n: float(p) for n, p, ok in zip(names, probs, feasible) if ok},
            ranking=[names[i] for i in order],
            reason=reason,
        )

    def pareto_front(
        self, request: RouteRequest, *, lambda_: float = 0.0, unavailable: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """The feasible experts no other feasible expert beats on both predicted quality and cost.

        Returns every candidate with its predicted quality, cost, penalty and utility, the front
        (sorted by cost) and the expert ``decide`` would choose at this λ.
        """
        lam = self._lambda_for(request, lambda_)
        ev = self._evaluate(request, lam, unavailable)
        names = self.expert_names
        rows = [{"expert": names[i], "quality": round(float(ev["quality"][i]), 6), "cost_usd": float(f"{ev['cost'][i]:.6g}"),
                 "penalty": round(float(ev["penalty"][i]), 6), "utility": round(float(ev["utility"][i]), 6),
                 "params_b": expert.params_b, "release_date": expert.release_date,
                 "expected_latency_s": None if np.isnan(ev["latency"][i]) else round(float(ev["latency"][i]), 4),
                 "feasible": bool(ev["feasible"][i])} for i, expert in enumerate(self.experts_)]
        front = pareto_indices(ev["quality"], ev["cost"], ev["feasible"])
        chosen = None
        if ev["feasible"].any():
            chosen = names[self.choose(ev["utility"], self.propensities(ev["utility"], ev["feasible"]), ev["feasible"])]
        return {"policy": self.name, "policy_version": self.version, "lambda": lam, "chosen": chosen,
                "front": [rows[i]["expert"] for i in front], "experts": rows}

    # ---- many queries and many λ at once (offline evaluation) ---------------------------------
    def decide_many(
        self, prompts: Sequence[str], lambdas: Sequence[float] | float, *, candidates: np.ndarray | None = None
    ) -> np.ndarray:
        """Chosen expert index (column of ``experts_``) per λ and prompt, shape (n_lambdas, n).

        ``candidates`` (n × n_experts, bool) marks the experts allowed for each prompt (e.g. those
        with a known outcome); every row must allow at least one.
        """
        self._check_fitted()
        quality = np.asarray(self.predict_quality(prompts), dtype=float)
        cost = self.predict_query_cost(prompts)
        return self.choose_many(quality, cost, lambdas, candidates)

    def choose_many(
        self, quality: np.ndarray, cost: np.ndarray, lambdas: Sequence[float] | float, candidates: np.ndarray | None = None
    ) -> np.ndarray:
        """``argmax_e quality − λ·cost`` over candidates for every λ (ties: the earlier expert)."""
        lams = np.atleast_1d(np.asarray(lambdas, dtype=float))
        if self.fixed_lambda is not None:
            lams = np.full_like(lams, self.fixed_lambda)
        if candidates is None:
            candidates = np.ones(quality.shape, dtype=bool)
        if not candidates.any(axis=1).all():
            raise NoCandidateError("decide_many: some prompts have no candidate expert")
        quality = np.where(np.isnan(quality), -1e30, quality)  # an unknown prediction never wins
        out = np.empty((len(lams), quality.shape[0]), dtype=np.int64)
        for start in range(0, len(lams), 16):  # bounded memory: 16 λ × n × experts at a time
            lam = lams[start : start + 16, None, None]
            utility = np.where(candidates[None], quality[None] - lam * cost[None], -np.inf)
            out[start : start + 16] = np.argmax(utility, axis=2)
        return out

    def _feasible(self, request: RouteRequest, cost: np.ndarray, unavailable: frozenset[str],
                  latency: np.ndarray | None = None) -> np.ndarray:
        """Hard constraints. An expert whose size, latency or release date is unknown passes that limit."""
        opts = request.options
        allowed = set(opts.allowed_experts) if opts.allowed_experts else None
        if latency is None:
            latency = np.full(len(self.experts_), np.nan)
        ok = []
        for expert, c, lat in zip(self.experts_, cost, latency):
            ok.append(
                expert.name not in unavailable
                and (allowed is None or expert.name in allowed)
                and (opts.max_cost_usd is None or c <= opts.max_cost_usd)
                and (opts.max_params_b is None or expert.params_b is None or expert.params_b <= opts.max_params_b)
                and (opts.max_latency_s is None or np.isnan(lat) or lat <= opts.max_latency_s)
                and (opts.min_release_date is None or expert.release_date is None
                     or expert.release_date >= opts.min_release_date)
                and request.prompt_tokens + request.max_completion_tokens <= expert.context_window
            )
        return np.array(ok, dtype=bool)

    def _why_infeasible(self, request: RouteRequest, unavailable: frozenset[str]) -> str:
        opts = request.options
        parts = []
        if opts.allowed_experts:
            unknown = sorted(set(opts.allowed_experts) - set(self.expert_names))
            parts.append(f"allowed_experts={opts.allowed_experts}" + (f" (unknown: {unknown})" if unknown else ""))
        if opts.max_cost_usd is not None:
            parts.append(f"max_cost_usd={opts.max_cost_usd:g}")
        if opts.max_params_b is not None:
            parts.append(f"max_params_b={opts.max_params_b:g}")
        if opts.max_latency_s is not None:
            parts.append(f"max_latency_s={opts.max_latency_s:g}")
        if opts.min_release_date is not None:
            parts.append(f"min_release_date={opts.min_release_date}")
        if unavailable:
            parts.append(f"unavailable experts: {sorted(unavailable)}")
        parts.append(f"prompt+max_tokens={request.prompt_tokens + request.max_completion_tokens} tokens")
        return "no expert satisfies the routing constraints: " + ", ".join(parts)

    # ---- artifacts and serving ----------------------------------------------------------------
    def artifact_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything ``fit`` learned, as numeric arrays and JSON metadata (no pickled objects)."""
        self._check_fitted()
        arrays, meta = self._get_state()
        cm = self.cost_model_
        arrays = {**{f"state.{k}": np.asarray(v) for k, v in arrays.items()},
                  "cost.intercept": np.asarray(cm.intercept, dtype=float), "cost.slope": np.asarray(cm.slope, dtype=float)}
        meta = {"state": meta, "cost_model": cm.kind, "experts": [asdict(e) for e in self.experts_]}
        return arrays, meta

    @classmethod
    def from_artifact_state(cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Policy:
        """Rebuild a fitted policy from ``artifact_state`` output (and its hyperparameters)."""
        from policies.costs import CostModel

        defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()}
        params = {k: tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple) else v for k, v in params.items()}
        policy = cls(**params)
        experts = []
        for e in meta["experts"]:
            e = dict(e)
            e["tags"] = tuple(e.get("tags") or ())
            experts.append(ExpertInfo(**e))
        policy.experts_ = experts
        policy.cost_model_ = CostModel(meta["cost_model"], np.asarray(arrays["cost.intercept"], dtype=float),
                                       np.asarray(arrays["cost.slope"], dtype=float))
        state = {k.removeprefix("state."): v for k, v in arrays.items() if k.startswith("state.")}
        policy._set_state(state, dict(meta.get("state") or {}))
        return policy

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Override in learned policies: learned arrays and JSON-able metadata."""
        raise PolicyError(f"policy {self.name!r} has no saved form: it learns nothing an artifact would keep")

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        raise PolicyError(f"policy {self.name!r} cannot be restored from an artifact")

    def for_experts(self, experts: Sequence[ExpertInfo], expert_map: Mapping[str, str]) -> Policy:
        """This fitted policy serving live ``experts``: ``expert_map`` maps the models it was
        trained on to expert names; experts no model maps to are not candidates."""
        return MappedPolicy(self, experts, expert_map)


# ---- a fitted policy serving the live experts of a deployment -------------------------------
def check_expert_map(expert_map: Mapping[str, str], models: Sequence[str], experts: Sequence[ExpertInfo],
                     *, policy: str) -> None:
    """Every key must be a model the policy knows and every value a live expert."""
    if not isinstance(expert_map, Mapping) or not expert_map:
        raise PolicyError(f"policy {policy!r}: expert_map must map at least one of the artifact's models to an expert; "
                          f"models: {list(models)}")
    unknown_models = sorted(m for m in expert_map if m not in models)
    if unknown_models:
        raise PolicyError(f"policy {policy!r}: expert_map names models the artifact was not trained on: {unknown_models}; "
                          f"it knows {list(models)}")
    live = {e.name for e in experts}
    unknown_experts = sorted({x for x in expert_map.values() if x not in live})
    if unknown_experts:
        raise PolicyError(f"policy {policy!r}: expert_map maps to experts this deployment does not have: {unknown_experts}; "
                          f"experts: {sorted(live)}")


class MappedPolicy(Policy):
    """Wraps a fitted policy; columns are live experts, predictions come from the mapped models."""

    requires_training = False

    def __init__(self, inner: Policy, experts: Sequence[ExpertInfo], expert_map: Mapping[str, str]) -> None:
        self.inner = inner
        self.experts = experts
        self.expert_map = expert_map
        inner._check_fitted()
        check_expert_map(expert_map, inner.expert_names, experts, policy=inner.name)
        self.name = inner.name
        self.version = inner.version
        self.fixed_lambda = inner.fixed_lambda
        targets = set(expert_map.values())
        self.experts_ = [e for e in experts if e.name in targets]
        models = inner.expert_names
        # (n_models × n_experts) averaging matrix: expert quality = mean over its mapped models
        weights = np.zeros((len(models), len(self.experts_)))
        for j, expert in enumerate(self.experts_):
            cols = [models.index(m) for m, x in expert_map.items() if x == expert.name]
            weights[cols, j] = 1.0 / len(cols)
        self.weights_ = weights
        self.cost_model_ = CostModel.from_prices(self.experts_)

    reads_prompt = property(lambda self: self.inner.reads_prompt)  # type: ignore[assignment]

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.inner.predict_quality(prompts), dtype=float) @ self.weights_
    served_prefill = property(lambda self: self.inner.served_prefill)  # type: ignore[assignment]
    accept_prefill = property(lambda self: self.inner.accept_prefill)  # type: ignore[assignment]

    def propensities(self, utility, feasible):
        return self.inner.propensities(utility, feasible)

    def choose(self, utility, probs, feasible):
        return self.inner.choose(utility, probs, feasible)
