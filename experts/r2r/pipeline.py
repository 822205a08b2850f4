"""The whole training run: prompts → labels → router → artifact (what ``expertmux train r2r`` does)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experts.r2r.artifact import new_version, save_artifact
from experts.r2r.datasets import PromptItem, fingerprint, split_validation
from experts.r2r.engine import R2REngine
from experts.r2r.features import DENSE_NAMES, N_BUCKETS, TOP_K
from experts.r2r.labels import LabelConfig, LabelStats, Rows, label_prompts
from experts.r2r.training import TrainConfig, fit_router


@dataclass(slots=True)
class Hooks:
    """Progress callbacks (the CLI draws bars with them)."""

    label_start: Callable[[int], None] = lambda total: None
    label_advance: Callable[[LabelStats], None] = lambda stats: None
    fit_start: Callable[[int], None] = lambda epochs: None
    fit_advance: Callable[[int, float, float], None] = lambda epoch, loss, auc: None


@dataclass(slots=True)
class TrainResult:
    path: Path
    manifest: dict
    label_stats: dict = field(default_factory=dict)


def train_r2r(engine: R2REngine, prompts: list[PromptItem], *, out: Path, models: dict[str, str], label_cfg: LabelConfig,
              train_cfg: TrainConfig, val_share: float = 0.2, sources: list[str] | None = None, versioned: bool = True,
              hooks: Hooks | None = None) -> TrainResult:
    hooks = hooks or Hooks()
    if train_cfg.use_hidden and not engine.slm.has_hidden:
        raise ValueError("use_hidden needs an engine whose SLM exposes hidden states")
    train_items, val_items = split_validation(prompts, val_share, train_cfg.seed)
    hooks.label_start(len(prompts))
    rows = Rows()
    stats_all = LabelStats()

    def advance(stats: LabelStats) -> None:
        hooks.label_advance(stats)

    # one pass over all prompts (the engine's caches stay warm); groups mark each prompt's side
    ordered = train_items + val_items
    rows, stats_all = label_prompts(engine, [p.messages for p in ordered], cfg=label_cfg, with_hidden=train_cfg.use_hidden,
                                    on_prompt=advance)
    data = rows.arrays()
    is_val = data["group"] >= len(train_items)
    train = {k: v[~is_val] for k, v in data.items()}
    val = {k: v[is_val] for k, v in data.items()}
    if train["label"].sum() == 0 or len(val["label"]) == 0:
        raise ValueError(f"not enough labelled data to train a router: {stats_all.as_dict()} (use more prompts)")
    hooks.fit_start(train_cfg.epochs)
    weights, metrics = fit_router(train, val, train_cfg, on_epoch=hooks.fit_advance)
    fp = fingerprint(prompts)
    version = new_version(fp)
    manifest = {
        "version": version,
        "models": models,
        "hyperparameters": {"train": train_cfg.as_dict(), "labels": _label_dict(label_cfg), "val_share": val_share},
        "features": {"set": "logits+hidden" if "hidden_mean" in weights else "logits", "top_k": TOP_K,
                     "n_buckets": N_BUCKETS, "dense": DENSE_NAMES,
                     "hidden_dim": int(weights["hidden_mean"].shape[0]) if "hidden_mean" in weights else 0},
        "data": {"fingerprint": fp, "sources": sources or sorted({p.source for p in prompts}), "split": "train",
                 "prompts": {"train": len(train_items), "validation": len(val_items)}, "labels": stats_all.as_dict()},
        "metrics": metrics,
        "default_threshold": metrics["default_threshold"],
    }
    target = Path(out) / version if versioned else Path(out)
    save_artifact(target, weights, manifest)
    return TrainResult(path=target, manifest=manifest, label_stats=stats_all.as_dict())


def _label_dict(cfg: LabelConfig) -> dict:
    return {k: getattr(cfg, k) for k in cfg.__slots__}


def weights_size(weights: dict[str, np.ndarray]) -> int:
    return int(sum(v.size for v in weights.values()))
