"""Routing matrices: the offline data every learned policy trains on and every policy is judged by.

A routing matrix holds, for each query, the measured outcome of every candidate model (format:
``shared/data/README.md``): ``matrix.parquet`` with ``qid``, ``dataset``, ``task``, ``split``,
``prompt``, ``score::<model>`` and optional ``cost_usd::<model>`` columns, plus ``models.json``
with per-model metadata. ``RoutingData`` keeps it as plain numpy arrays so policies need neither
pandas nor pyarrow; only ``RoutingData.load`` reads Parquet.

Unknown outcomes stay NaN: a model with an unknown outcome on a query is not a candidate there.
A set without cost columns is quality-only: every model costs 1 per query (``has_costs`` False).
Calibration matrices also carry each model's answer text (``answer::<model>``) and token logprobs
(``logprobs::<model>``, JSON), and may carry an LLM judge's verdicts (``judge::<model>``, in [0, 1]); they
are kept as ``answers`` / ``logprobs`` / ``judge`` (None when absent) for
post-hoc quality estimators, which may read them only for the models a cascade has called.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import PolicyError
from core.types import ExpertInfo

SCORE_PREFIX = "score::"
COST_PREFIX = "cost_usd::"
ANSWER_PREFIX = "answer::"
LOGPROBS_PREFIX = "logprobs::"
JUDGE_PREFIX = "judge::"
TRAIN = "train"


@dataclass(frozen=True, eq=False)
class RoutingData:
    """Queries × models: outcomes (``scores``), optional per-query costs, and row metadata.

    ``scores`` and ``costs`` have shape (n_queries, n_models), NaN where unknown; ``costs`` is
    ``None`` for a quality-only set. Row metadata (``task``, ``dataset``, ``split``) serves
    training and the report's breakdowns; policies see only ``prompts`` of evaluation rows.
    """

    prompts: list[str]
    models: list[str]
    scores: np.ndarray
    costs: np.ndarray | None = None
    qid: np.ndarray | None = None
    task: np.ndarray | None = None
    dataset: np.ndarray | None = None
    split: np.ndarray | None = None
    model_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = "routing-matrix"
    note: str = ""
    answers: np.ndarray | None = None  # (n, m) object: answer text per query and model, None where unknown
    logprobs: np.ndarray | None = None  # (n, m) object: JSON [[token, logprob, ...], ...] or None
    judge: np.ndarray | None = None  # (n, m) float: an LLM judge's verdict on each answer in [0, 1], NaN where none

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        scores = np.asarray(self.scores, dtype=float)
        if scores.shape != (n, m):
            raise PolicyError(f"scores must have shape ({n}, {m}), got {scores.shape}")
        object.__setattr__(self, "scores", scores)
        if self.costs is not None:
            costs = np.asarray(self.costs, dtype=float)
            if costs.shape != (n, m):
                raise PolicyError(f"costs must have shape ({n}, {m}), got {costs.shape}")
            object.__setattr__(self, "costs", costs)
        for attr in ("answers", "logprobs", "judge"):
            value = getattr(self, attr)
            if value is not None:
                arr = np.asarray(value, dtype=float if attr == "judge" else object)
                if arr.shape != (n, m):
                    raise PolicyError(f"{attr} must have shape ({n}, {m}), got {arr.shape}")
                object.__setattr__(self, attr, arr)
        for attr in ("qid", "task", "dataset", "split"):
            value = getattr(self, attr)
            default = np.arange(n).astype(str) if attr == "qid" else np.full(n, "" if attr != "split" else "all")
            arr = np.asarray(value if value is not None else default, dtype=object)
            if arr.shape != (n,):
                raise PolicyError(f"{attr} must have {n} entries, got {arr.shape}")
            object.__setattr__(self, attr, arr)
        if len(set(self.models)) != m:
            raise PolicyError("model names must be unique")

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> RoutingData:
        """Read a routing-matrix folder (``matrix.parquet`` + optional ``models.json``)."""
        import pandas as pd  # heavy: only when reading Parquet

        path = Path(path)
        matrix = path / "matrix.parquet" if path.is_dir() else path
        if not matrix.exists():
            raise PolicyError(f"no routing matrix at {matrix} (expected a folder with matrix.parquet)")
        df = pd.read_parquet(matrix)
        meta_file = matrix.parent / "models.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        return cls.from_frame(df, meta, name=matrix.parent.name)

    @classmethod
    def from_frame(cls, df: Any, meta: dict[str, Any] | None = None, *, name: str = "routing-matrix") -> RoutingData:
        """Build from a pandas DataFrame in the routing-matrix layout (tests, custom loaders)."""
        meta = meta or {}
        models = [c[len(SCORE_PREFIX):] for c in df.columns if c.startswith(SCORE_PREFIX)]
        if not models:
            raise PolicyError(f"routing matrix {name!r} has no '{SCORE_PREFIX}<model>' columns")
        if "prompt" not in df.columns:
            raise PolicyError(f"routing matrix {name!r} has no 'prompt' column")
        scores = df[[SCORE_PREFIX + m for m in models]].to_numpy(dtype=float)
        cost_cols = [COST_PREFIX + m for m in models]
        present = [c in df.columns for c in cost_cols]
        costs = None
        if any(present):
            costs = np.full_like(scores, np.nan)
            for j, (col, ok) in enumerate(zip(cost_cols, present)):
                if ok:
                    costs[:, j] = df[col].to_numpy(dtype=float)
        def col(c: str) -> np.ndarray | None:
            return df[c].astype(str).to_numpy(dtype=object) if c in df.columns else None

        def per_model(prefix: str) -> np.ndarray | None:  # answers / logprobs, where the matrix has them
            if not any(prefix + m in df.columns for m in models):
                return None
            out = np.full(scores.shape, None, dtype=object)
            for j, m in enumerate(models):
                if prefix + m in df.columns:
                    out[:, j] = [v if isinstance(v, str) else None for v in df[prefix + m].tolist()]
            return out
        return cls(
            prompts=df["prompt"].fillna("").astype(str).tolist(),
            models=models,
            scores=scores,
            costs=costs,
            qid=col("qid"),
            task=col("task"),
            dataset=col("dataset"),
            split=col("split"),
            model_info={m: dict((meta.get("models") or {}).get(m) or {}) for m in models},
            name=name,
            note=str(meta.get("note", "")),
            answers=per_model(ANSWER_PREFIX),
            logprobs=per_model(LOGPROBS_PREFIX),
            judge=(np.column_stack([df[JUDGE_PREFIX + m].to_numpy(dtype=float) if JUDGE_PREFIX + m in df.columns
                                    else np.full(len(df), np.nan) for m in models])
                   if any(JUDGE_PREFIX + m in df.columns for m in models) else None),
        )

    # ---- shape and views ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def has_costs(self) -> bool:
        return self.costs is not None

    @property
    def known(self) -> np.ndarray:
        """Boolean (n, m): outcome known, i.e. the model is a candidate for that query."""
        return ~np.isnan(self.scores)

    def cost_matrix(self) -> np.ndarray:
        """Per-query cost of each model; 1 everywhere for a quality-only set.

        A missing cost next to a known outcome is filled with that model's mean cost (else the
        overall mean, else 0), so every candidate has a price.
        """
        if self.costs is None:
            return np.ones_like(self.scores)
        if not np.isnan(self.costs).any():
            return self.costs
        finite = np.isfinite(self.costs)
        overall = float(self.costs[finite].mean()) if finite.any() else 0.0
        col_sum = np.where(finite, self.costs, 0.0).sum(axis=0)
        col_n = finite.sum(axis=0)
        fill = np.where(col_n > 0, col_sum / np.maximum(col_n, 1), overall)
        return np.where(finite, self.costs, fill[None, :])

    @property
    def splits(self) -> list[str]:
        return sorted(set(self.split.tolist()))

    def subset(self, rows: Sequence[int] | np.ndarray) -> RoutingData:
        idx = np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(
            self,
            prompts=[self.prompts[i] for i in idx],
            scores=self.scores[idx],
            costs=None if self.costs is None else self.costs[idx],
            answers=None if self.answers is None else self.answers[idx],
            logprobs=None if self.logprobs is None else self.logprobs[idx],
            judge=None if self.judge is None else self.judge[idx],
            qid=self.qid[idx],
            task=self.task[idx],
            dataset=self.dataset[idx],
            split=self.split[idx],
        )

    def rows_of(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def select_models(self, names: Sequence[str]) -> RoutingData:
        """The same queries restricted to (and ordered as) ``names``."""
        missing = [n for n in names if n not in self.models]
        if missing:
            raise PolicyError(f"routing matrix {self.name!r} has no outcomes for {missing}; it has {self.models}")
        cols = [self.models.index(n) for n in names]
        return replace(
            self,
            models=list(names),
            scores=self.scores[:, cols],
            costs=None if self.costs is None else self.costs[:, cols],
            answers=None if self.answers is None else self.answers[:, cols],
            logprobs=None if self.logprobs is None else self.logprobs[:, cols],
            judge=None if self.judge is None else self.judge[:, cols],
            model_info={n: self.model_info.get(n, {}) for n in names},
        )

    # ---- models as experts --------------------------------------------------------------------
    def experts(self) -> list[ExpertInfo]:
        """The matrix's models as experts, with the prices and sizes ``models.json`` gives."""
        out = []
        for name in self.models:
            info = self.model_info.get(name, {})
            out.append(
                ExpertInfo(
                    name=name,
                    input_usd_per_mtok=float(info.get("input_usd_per_mtok") or 0.0),
                    output_usd_per_mtok=float(info.get("output_usd_per_mtok") or 0.0),
                    params_b=float(info["params_b"]) if info.get("params_b") is not None else None,
                    context_window=int(info.get("context_window") or 1_000_000),
                    description=str(info.get("description") or info.get("hub_id") or ""),
                )
            )
        return out

    # ---- evaluation plans ---------------------------------------------------------------------
    def grouped_folds(self, n_splits: int = 5, *, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """K folds over queries grouped by prompt (identical prompts never straddle two folds).

        Groups are assigned greedily, largest first, to the currently smallest fold after a
        seeded shuffle, so folds are balanced and reproducible.
        """
        if n_splits < 2:
            raise PolicyError("cross-validation needs at least 2 folds")
        _, group = np.unique(np.asarray(self.prompts, dtype=object), return_inverse=True)
        n_groups = int(group.max()) + 1 if len(group) else 0
        if n_groups < n_splits:
            raise PolicyError(f"{n_groups} distinct prompts cannot make {n_splits} folds")
        sizes = np.bincount(group, minlength=n_groups)
        order = np.random.default_rng(seed).permutation(n_groups)
        order = order[np.argsort(-sizes[order], kind="stable")]
        fold_of_group = np.empty(n_groups, dtype=int)
        load = np.zeros(n_splits, dtype=int)
        for g in order:
            f = int(np.argmin(load))
            fold_of_group[g] = f
            load[f] += sizes[g]
        fold = fold_of_group[group]
        return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_splits)]

    def evaluation_plan(self, split: str = "test", *, n_splits: int = 5, seed: int = 0) -> EvaluationPlan:
        """Train on ``train`` and evaluate on ``split``; without a train split, K-fold CV.

        Under cross-validation every row of the requested split (all rows if the set has no
        such split) is predicted by a policy fitted on folds that do not contain its prompt.
        """
        train_rows = self.rows_of(TRAIN)
        if len(train_rows):
            eval_rows = self.rows_of(split)
            if not len(eval_rows):
                raise PolicyError(f"routing matrix {self.name!r} has no rows in split {split!r}; splits: {self.splits}")
            return EvaluationPlan(split=split, folds=[(train_rows, eval_rows)], cross_validated=False)
        target = self.rows_of(split)
        effective = split if len(target) else "all"
        keep = np.zeros(len(self), dtype=bool)
        keep[target if len(target) else np.arange(len(self))] = True
        folds = []
        for tr, te in self.grouped_folds(n_splits, seed=seed):
            te = te[keep[te]]
            if len(te):
                folds.append((tr, te))
        return EvaluationPlan(split=effective, folds=folds, cross_validated=True)

    def fingerprint(self) -> str:
        """Stable content hash (prompts, models, outcomes), for artifact manifests and caches."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.models).encode())
        for p in self.prompts:
            h.update(p.encode("utf-8", "replace") + b"\x1e")
        h.update(np.ascontiguousarray(self.scores).tobytes())
        if self.costs is not None:
            h.update(np.ascontiguousarray(self.costs).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class EvaluationPlan:
    """Which rows train which policy instance, and which rows it is judged on."""

    split: str
    folds: list[tuple[np.ndarray, np.ndarray]]
    cross_validated: bool

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return iter(self.folds)

    @property
    def eval_rows(self) -> np.ndarray:
        return np.concatenate([te for _, te in self.folds])
