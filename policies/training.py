"""Train one policy on a routing matrix and write its artifact (what ``expertmux train`` runs).

The policy learns from the ``train`` rows (all rows when the set has no train split). When the
set has an evaluation split (``test`` by default) the fitted policy is scored on it and the
figures go into the manifest next to the policy's own fit statistics; they describe the
artifact, they never tune it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import PolicyError
from policies.artifacts import save_artifact
from policies.data import TRAIN, RoutingData
from policies.embeddings import get_encoder
from policies.progress import ProgressCallback, reporting
from policies.registry import create_policy, get_policy_class


@dataclass(frozen=True)
class TrainResult:
    path: Path
    manifest: dict[str, Any]
    policy: Any
    seconds: float


def learned_summary(policy) -> dict[str, Any]:
    """Scalars a policy learned (k_, alpha_, confidence_, ...) and its training statistics."""
    out: dict[str, Any] = {}
    for key, value in vars(policy).items():
        if key.endswith("_") and not key.startswith("_") and isinstance(value, int | float | str | bool | np.integer | np.floating):
            out[key.rstrip("_")] = value.item() if isinstance(value, np.generic) else value
    stats = getattr(policy, "train_stats_", None)
    if stats:
        out["train"] = {k: float(v) for k, v in stats.items()}
    return out


def train_policy(name: str, data: RoutingData, *, params: dict[str, Any] | None = None, out: str | Path,
                 eval_split: str | None = "test", flat: bool = False, progress: ProgressCallback | None = None,
                 on_embed: Callable[[int], None] | None = None) -> TrainResult:
    """Fit policy ``name`` on ``data``'s training rows and save it under ``out`` (next version)."""
    cls = get_policy_class(name)
    if cls.uses_labels:
        raise PolicyError(f"policy {name!r} reads the outcomes of the rows it routes: it is evaluation-only, never trained")
    if not cls.requires_training:
        raise PolicyError(f"policy {name!r} learns nothing from a routing matrix; configure it directly")
    policy = create_policy(name, **(params or {}))
    train_rows = data.rows_of(TRAIN)
    train = data.subset(train_rows) if len(train_rows) else data
    t0 = time.perf_counter()
    encoder = getattr(policy, "encoder", None)
    if encoder:
        enc = get_encoder(encoder)
        todo = enc.missing(train.prompts)
        if progress is not None:
            progress("embedding queries", 0, len(todo))
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress("embedding queries", done[0], len(todo))
            if on_embed is not None:
                on_embed(n)

        enc.warm(todo, progress=advance)
    with reporting(progress):
        policy.fit(train)
    seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {"fit_s": round(seconds, 3), "learned": learned_summary(policy)}
    if eval_split and eval_split != TRAIN and len(data.rows_of(eval_split)):
        from policies.evaluation.harness import evaluate_fitted

        metrics[eval_split] = evaluate_fitted(policy, train, data.subset(data.rows_of(eval_split)))
    path = save_artifact(policy, out, data=train, metrics=metrics, flat=flat)
    from policies.artifacts import read_manifest

    return TrainResult(path=path, manifest=read_manifest(path)[1], policy=policy, seconds=seconds)
