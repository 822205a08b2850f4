"""The whole training run: prompts → labels → router → artifact (what ``expertmux train r2r`` does).

Labelling is the slow part (the LLM continues every judged branch), so its result can be saved
(``Labels.save``, numpy ``.npz`` + JSON, no pickles) and fitted again with other
hyperparameters or feature sets without generating anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experts.r2r.artifact import new_version, save_artifact
from experts.r2r.datasets import PromptItem, fingerprint, split_validation
from experts.r2r.engine import R2REngine
from experts.r2r.features import DENSE_NAMES, N_BUCKETS, TOP_K
from experts.r2r.labels import LabelConfig, LabelStats, label_prompts
from experts.r2r.training import TrainConfig, fit_router


@dataclass(slots=True)
class Hooks:
    """Progress callbacks (the CLI draws bars with them)."""

    label_start: Callable[[int], None] = lambda total: None
    label_advance: Callable[[LabelStats], None] = lambda stats: None
    fit_start: Callable[[int], None] = lambda epochs: None
    fit_advance: Callable[[int, float, float], None] = lambda epoch, loss, auc: None


@dataclass(slots=True)
class Labels:
    """Labelled SLM positions of a set of prompts, split by prompt into train and validation."""

    arrays: dict[str, np.ndarray]  # dense, bucket, label, weight, group, is_val (+ hidden)
    meta: dict = field(default_factory=dict)  # models, label config, stats, data fingerprint, prompt counts

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path.with_suffix(".npz"), **self.arrays)
        path.with_suffix(".json").write_text(json.dumps(self.meta, indent=2) + "\n")
        return path.with_suffix(".npz")

    @classmethod
    def load(cls, path: Path) -> Labels:
        path = Path(path)
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return cls(arrays=arrays, meta=json.loads(path.with_suffix(".json").read_text()))

    def side(self, validation: bool) -> dict[str, np.ndarray]:
        mask = self.arrays["is_val"] if validation else ~self.arrays["is_val"]
        return {k: v[mask] for k, v in self.arrays.items() if k != "is_val"}


@dataclass(slots=True)
class TrainResult:
    path: Path
    manifest: dict


def collect_labels(engine: R2REngine, prompts: list[PromptItem], *, models: dict[str, str], label_cfg: LabelConfig,
                   val_share: float = 0.2, seed: int = 0, hooks: Hooks | None = None) -> Labels:
    hooks = hooks or Hooks()
    train_items, val_items = split_validation(prompts, val_share, seed)
    hooks.label_start(len(prompts))
    rows, stats = label_prompts(engine, [p.messages for p in train_items + val_items], cfg=label_cfg,
                                with_hidden=engine.slm.has_hidden, on_prompt=hooks.label_advance)
    arrays = rows.arrays()
    arrays["is_val"] = arrays["group"] >= len(train_items)
    meta = {"models": models, "labels": {k: getattr(label_cfg, k) for k in label_cfg.__slots__}, "stats": stats.as_dict(),
            "data": {"fingerprint": fingerprint(prompts), "sources": sorted({p.source for p in prompts}), "split": "train",
                     "prompts": {"train": len(train_items), "validation": len(val_items)}}, "val_share": val_share}
    return Labels(arrays=arrays, meta=meta)


def fit_and_save(labels: Labels, *, out: Path, train_cfg: TrainConfig, versioned: bool = True,
                 hooks: Hooks | None = None) -> TrainResult:
    hooks = hooks or Hooks()
    train, val = labels.side(False), labels.side(True)
    if train_cfg.use_hidden and "hidden" not in train:
        raise ValueError("--features hidden needs labels collected with the SLM's hidden states")
    if train["label"].sum() == 0 or len(val["label"]) == 0:
        raise ValueError(f"not enough labelled data to train a router: {labels.meta.get('stats')} (use more prompts)")
    hooks.fit_start(train_cfg.epochs)
    weights, metrics = fit_router(train, val, train_cfg, on_epoch=hooks.fit_advance)
    data = labels.meta["data"]
    version = new_version(data["fingerprint"])
    manifest = {
        "version": version,
        "models": labels.meta["models"],
        "hyperparameters": {"train": train_cfg.as_dict(), "labels": labels.meta["labels"], "val_share": labels.meta["val_share"]},
        "features": {"set": "logits+hidden" if "hidden_mean" in weights else "logits", "top_k": TOP_K,
                     "n_buckets": N_BUCKETS, "dense": DENSE_NAMES,
                     "hidden_dim": int(weights["hidden_mean"].shape[0]) if "hidden_mean" in weights else 0},
        "data": {**data, "labels": labels.meta["stats"]},
        "metrics": metrics,
        "default_threshold": metrics["default_threshold"],
    }
    target = Path(out) / version if versioned else Path(out)
    save_artifact(target, weights, manifest)
    return TrainResult(path=target, manifest=manifest)
