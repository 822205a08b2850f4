"""Train a learned policy on logged traffic and write its artifact (``expertmux train <p> --ledger``).

The training set comes from ``policies.logged.training_data``: inverse-propensity-weighted
observed rewards (``ipw``, default), doubly-robust pseudo-outcomes for every (prompt, expert)
(``dr``: the reward model is the same policy fitted out of fold on the observed rewards), or the
observed rewards alone (``observed``). The artifact's manifest records where the data came from:
the ledger slice, the rows, the target and the propensity statistics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import PolicyError
from policies.artifacts import read_manifest, save_artifact
from policies.embeddings import get_encoder
from policies.logged import LoggedData, cross_fitted_quality, training_data
from policies.progress import ProgressCallback, reporting
from policies.registry import create_policy, get_policy_class
from policies.training import TrainResult, learned_summary


def _warm(policy, prompts: list[str], progress: ProgressCallback | None) -> None:
    encoder = getattr(policy, "encoder", None)
    if not encoder:
        return
    enc = get_encoder(encoder)
    todo = enc.missing(list(dict.fromkeys(prompts)))
    done = [0]
    if progress is not None:
        progress("embedding prompts", 0, len(todo))

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress("embedding prompts", done[0], len(todo))

    enc.warm(todo, progress=advance)


def fit_logged(name: str, logged: LoggedData, *, params: dict[str, Any] | None = None, target: str = "ipw",
               clip: float = 50.0, expert_info: dict[str, dict[str, Any]] | None = None, seed: int = 0,
               progress: ProgressCallback | None = None):
    """Fit policy ``name`` on logged traffic; returns (fitted policy, training RoutingData, facts)."""
    cls = get_policy_class(name)
    if cls.uses_labels or not cls.requires_training:
        raise PolicyError(f"policy {name!r} learns nothing from logged traffic; only learned policies train")
    usable = logged.with_prompts().with_reward()
    dropped = len(logged) - len(usable)
    if len(usable) < 10:
        raise PolicyError(f"only {len(usable)} logged requests have both feedback and stored prompt text "
                          f"({dropped} dropped); at least 10 are needed (is EXPERTMUX_PROMPT_STORAGE=full?)")
    make = lambda: create_policy(name, **(params or {}))  # noqa: E731 - a factory for cross-fitting
    policy = make()
    _warm(policy, usable.prompts, progress)
    q_hat = None
    with reporting(progress):
        if target == "dr":
            q_hat = cross_fitted_quality(make, usable, folds=2, seed=seed, expert_info=expert_info)
        data = training_data(usable, target=target, clip=clip, q_hat=q_hat, expert_info=expert_info, seed=seed)
        policy.fit(data)
    w = np.minimum(1.0 / usable.propensity, clip)
    facts = {"target": target, "clip": clip, "rows_used": len(usable), "rows_dropped_no_prompt_or_feedback": dropped,
             "training_rows": len(data), "weight_max": float(w.max()), "weight_mean": float(w.mean()),
             "ess": float(w.sum() ** 2 / (w**2).sum())}
    return policy, data, facts


def train_logged(name: str, logged: LoggedData, *, out: str | Path, params: dict[str, Any] | None = None,
                 target: str = "ipw", clip: float = 50.0, expert_info: dict[str, dict[str, Any]] | None = None,
                 ledger: str | None = None, seed: int = 0, progress: ProgressCallback | None = None) -> TrainResult:
    """Fit on logged traffic and save the next version under ``out``, with its provenance."""
    t0 = time.perf_counter()
    policy, data, facts = fit_logged(name, logged, params=params, target=target, clip=clip, expert_info=expert_info,
                                     seed=seed, progress=progress)
    seconds = time.perf_counter() - t0
    provenance = {"source": "ledger", "ledger": _redact(ledger), **logged.stats(), "training": facts}
    metrics = {"fit_s": round(seconds, 3), "learned": learned_summary(policy)}
    path = save_artifact(policy, out, data=data, metrics=metrics, extra={"provenance": provenance})
    return TrainResult(path=path, manifest=read_manifest(path)[1], policy=policy, seconds=seconds)


def _redact(url: str | None) -> str | None:
    """A database URL without its password (manifests are not secret)."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
