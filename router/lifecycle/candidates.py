"""Choosing which learned policy to train on the experts' own calibration matrix.

Each candidate (a policy name with its hyperparameters) is cross-validated on the matrix's train
rows only — grouped K-fold, the evaluation harness's aiq (area under the cost–quality curve) — and
the best is the one trained on all train rows and gated on the held-out split. The held-out split
is never read for the choice, so the gate's comparison stays a fair one. A candidate that cannot
be fitted on this matrix (too few rows, a missing optional dependency) is reported and skipped.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from core.errors import ExpertmuxError, PolicyError


def parse_candidates(raw: list[str | dict[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``["knn", {"probe": {"dtype": "int8"}}]`` → ``[("knn", {}), ("probe", {"dtype": "int8"})]``."""
    from policies.registry import get_policy_class

    out = []
    for item in raw:
        pairs = [(item, {})] if isinstance(item, str) else list(item.items())
        for name, params in pairs:
            cls = get_policy_class(name)  # an unknown name fails here, with the registry's list
            if not cls.requires_training or cls.uses_labels:
                raise PolicyError(f"autolearn candidate {name!r} is not a policy trained on a matrix")
            out.append((name, dict(params or {})))
    return out


def choose_by_cv(data, candidates: list[tuple[str, dict[str, Any]]], *, folds: int = 3,
                 seed: int = 0) -> tuple[tuple[str, dict[str, Any]], list[dict[str, Any]]]:
    """The candidate with the highest cross-validated aiq on ``data``'s train rows, and every
    candidate's result (``aiq``, or ``error``)."""
    from policies.evaluation.harness import EvalConfig, evaluate

    train = data.subset(data.rows_of("train"))
    if len(train) < 2 * folds:
        raise PolicyError(f"{len(train)} train rows are too few to cross-validate {len(candidates)} candidates")
    cv = replace(train, split=np.full(len(train), "cv", dtype=object))
    table: list[dict[str, Any]] = []
    from policies.registry import create_policy

    for name, params in candidates:
        try:  # the harness warms this encoder for every prompt first: the candidate's own, not MiniLM by default
            encoder = getattr(create_policy(name, **params), "encoder", "minilm")
        except ExpertmuxError:
            encoder = "minilm"  # bad parameters: reported below, by the harness
        cfg = EvalConfig(split="cv", n_folds=folds, seed=seed, encoder=encoder, policy_params={name: params})
        try:
            aiq = evaluate(cv, [name], cfg)["policies"][name]["aiq"]
        except Exception as exc:  # one candidate that cannot be fitted here must not end the job
            message = exc.message if isinstance(exc, ExpertmuxError) else f"{type(exc).__name__}: {exc}"
            table.append({"policy": name, "params": params, "error": message})
            continue
        if aiq is None:
            table.append({"policy": name, "params": params, "error": "no cost–quality curve on these rows"})
            continue
        table.append({"policy": name, "params": params, "cv_aiq": round(float(aiq), 6)})
    scored = [row for row in table if "cv_aiq" in row]
    if not scored:
        raise PolicyError("no candidate could be cross-validated: " + "; ".join(f"{r['policy']}: {r['error']}" for r in table))
    best = max(scored, key=lambda row: row["cv_aiq"])  # ties: the first listed
    best["chosen"] = True
    return (best["policy"], best["params"]), table
