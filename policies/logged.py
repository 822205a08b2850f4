"""Logged bandit feedback as plain arrays, and training sets built from it.

``LoggedData`` is what ``router.learning.bandit.load_logged`` reads from the ledger: one entry per
answered request with feedback — the prompt, the expert that answered (``action``), the mean
feedback score (``reward``), the cost, and the probability with which the serving policy chose
that expert (``propensity``). Only the chosen expert's outcome is known for each request.

Training sets (``training_data``) turn it into a routing matrix (``RoutingData``, one row per
logged request, one column per expert) that every learned policy can fit:

* ``observed``: the chosen expert's reward, NaN elsewhere; propensities ignored (the direct
  method: consistent for flexible models because routing depended on the prompt only, but a
  model that cannot fit everything fits best where the old policy sent traffic);
* ``ipw``: inverse-propensity-weighted regression on the observed entries. Policies take no
  sample weights, so the weights are realised by importance resampling: row i appears in
  proportion to w_i = 1/p_i (clipped, normalised per expert), systematic rounding, so a fit on
  the resampled rows minimises the weighted loss. Copies of a prompt stay in one CV fold
  (folds group identical prompts);
* ``dr``: a doubly-robust pseudo-outcome for EVERY (prompt, expert):
  Γ(x, e) = q̂(x, e) + 1[a = e] / p · (r − q̂(x, e)), with q̂ a reward model fitted out of fold
  (``q_hat``); unbiased for the expected reward of every expert, at the price of variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.errors import PolicyError
from policies.data import RoutingData

TARGETS = ("ipw", "dr", "observed")


@dataclass(frozen=True, eq=False)
class LoggedData:
    """n logged requests over ``experts`` (columns of ``propensities`` / ``candidates``)."""

    request_id: np.ndarray  # (n,) object
    created_at: np.ndarray  # (n,) datetime64[us], UTC
    prompts: list[str | None]  # None where the ledger kept no prompt text
    experts: list[str]
    action: np.ndarray  # (n,) int64: column of the chosen expert
    reward: np.ndarray  # (n,) mean feedback score in [0, 1]; NaN when loaded with min_feedback=0
    n_feedback: np.ndarray  # (n,) int
    cost: np.ndarray  # (n,) USD the request cost
    propensity: np.ndarray  # (n,) probability the chosen expert had
    propensities: np.ndarray  # (n, K) every candidate's probability (0: not a candidate)
    candidates: np.ndarray  # (n, K) bool: the expert was a candidate of the decision
    logged: np.ndarray  # (n,) bool: the decision recorded propensities (else p = 1 was assumed)
    policy: np.ndarray  # (n,) object: the policy that decided
    policy_version: np.ndarray  # (n,) object
    query: dict[str, Any] = field(default_factory=dict)  # how it was loaded (provenance)

    def __len__(self) -> int:
        return len(self.action)

    @property
    def deterministic_share(self) -> float:
        """Share of rows whose decision was deterministic or recorded no propensities."""
        return float(np.mean(~self.logged | (self.propensity >= 1.0))) if len(self) else 0.0

    def subset(self, rows: np.ndarray) -> LoggedData:
        idx = np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        arrays = {k: getattr(self, k)[idx] for k in ("request_id", "created_at", "action", "reward", "n_feedback", "cost",
                                                      "propensity", "propensities", "candidates", "logged", "policy",
                                                      "policy_version")}
        return replace(self, prompts=[self.prompts[i] for i in idx], **arrays)

    def with_prompts(self) -> LoggedData:
        """Only the rows whose prompt text was stored (what a prompt-reading policy can learn from)."""
        return self.subset(np.array([p is not None for p in self.prompts], dtype=bool))

    def with_reward(self) -> LoggedData:
        return self.subset(np.isfinite(self.reward))

    def stats(self) -> dict[str, Any]:
        """Provenance and propensity statistics for manifests and reports."""
        n = len(self)
        out: dict[str, Any] = {"rows": n, **self.query}
        if not n:
            return out
        counts = np.bincount(self.action, minlength=len(self.experts))
        p = self.propensity
        out.update(
            experts={e: int(c) for e, c in zip(self.experts, counts)},
            first=str(self.created_at.min()), last=str(self.created_at.max()),
            with_prompt=int(sum(x is not None for x in self.prompts)),
            propensity={"min": float(p.min()), "p05": float(np.quantile(p, 0.05)), "median": float(np.median(p)),
                        "mean_inverse": float(np.mean(1.0 / p)), "logged_share": float(self.logged.mean()),
                        "deterministic_share": self.deterministic_share},
            reward_mean=float(np.nanmean(self.reward)) if np.isfinite(self.reward).any() else None,
            cost_mean=float(self.cost.mean()),
            policies=sorted({str(x) for x in self.policy.tolist()}),
        )
        return out


def _ipw_copies(action: np.ndarray, propensity: np.ndarray, k: int, *, clip: float, max_factor: float,
                seed: int) -> np.ndarray:
    """How many times each row appears so that counts ∝ (1/p clipped), normalised per expert.

    The scale puts the lightest row at about one copy (so no observation is dropped by rounding
    alone), capped at ``max_factor`` copies per row on average.
    """
    w = np.minimum(1.0 / propensity, clip)
    mean_w = np.bincount(action, weights=w, minlength=k) / np.maximum(np.bincount(action, minlength=k), 1)
    w = w / mean_w[action]  # each expert keeps its share of the rows
    factor = min(max_factor, 1.0 / float(w.min())) if len(w) else 1.0
    expected = w * factor
    u = np.random.default_rng(seed).random()
    cum = np.concatenate([[0.0], np.cumsum(expected)])
    # systematic resampling: copies = number of grid points u, u+1, ... falling in row i's interval
    return (np.floor(cum[1:] - u + 1.0) - np.floor(cum[:-1] - u + 1.0)).astype(np.int64)


def training_data(logged: LoggedData, *, target: str = "ipw", clip: float = 50.0, max_factor: float = 8.0,
                  q_hat: np.ndarray | None = None, expert_info: dict[str, dict[str, Any]] | None = None,
                  seed: int = 0, name: str = "ledger") -> RoutingData:
    """A routing matrix (rows = logged requests, columns = experts) for ``policy.fit``.

    Rows without prompt text or reward must have been dropped (``with_prompts().with_reward()``).
    ``q_hat`` (n × K) is required for ``target="dr"``. ``expert_info`` (name → prices, params)
    becomes the matrix's model metadata, so the fitted policy knows the experts' prices. Costs:
    the logged cost of the chosen expert, NaN elsewhere (the cost model learns from them).
    """
    if target not in TARGETS:
        raise PolicyError(f"unknown training target {target!r}; choose one of {', '.join(TARGETS)}")
    if any(p is None for p in logged.prompts):
        raise PolicyError("training needs prompt text: drop the rows the ledger kept no prompt for")
    if not len(logged) or not np.all(np.isfinite(logged.reward)):
        raise PolicyError("training needs rows with feedback (rewards)")
    n, k = len(logged), len(logged.experts)
    rows = np.arange(n)
    scores = np.full((n, k), np.nan)
    scores[rows, logged.action] = logged.reward
    costs = np.full((n, k), np.nan)
    costs[rows, logged.action] = logged.cost
    take = rows
    if target == "ipw":
        copies = _ipw_copies(logged.action, logged.propensity, k, clip=clip, max_factor=max_factor, seed=seed)
        take = np.repeat(rows, copies)
    elif target == "dr":
        if q_hat is None or np.shape(q_hat) != (n, k):
            raise PolicyError(f"the doubly-robust target needs reward-model predictions of shape ({n}, {k})")
        w = np.minimum(1.0 / logged.propensity, clip)
        scores = np.array(q_hat, dtype=float)
        scores[rows, logged.action] += w * (logged.reward - scores[rows, logged.action])
        scores = np.where(logged.candidates | (np.arange(k)[None, :] == logged.action[:, None]), scores, np.nan)
    info = {e: dict((expert_info or {}).get(e) or {}) for e in logged.experts}
    return RoutingData(prompts=[logged.prompts[i] for i in take], models=list(logged.experts), scores=scores[take],
                       costs=costs[take], qid=logged.request_id[take].astype(str), split=np.full(len(take), "train"),
                       model_info=info, name=name, note=f"logged traffic, target={target}")


def cross_fitted_quality(make_policy, logged: LoggedData, *, folds: int = 2, seed: int = 0,
                         expert_info: dict[str, dict[str, Any]] | None = None) -> np.ndarray:
    """Out-of-fold predicted quality (n × K) of a policy fitted on the observed rewards: the
    reward model of the doubly-robust target, never predicting a row it was fitted on."""
    data = training_data(logged, target="observed", expert_info=expert_info)
    q = np.empty((len(logged), len(logged.experts)))
    for tr, te in data.grouped_folds(folds, seed=seed):
        policy = make_policy().fit(data.subset(tr))
        q[te] = np.asarray(policy.predict_quality([data.prompts[i] for i in te]), dtype=float)
    return q
