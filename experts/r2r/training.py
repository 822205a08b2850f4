"""Fitting the router: a tiny MLP on the labelled SLM positions (torch, CPU, full batch).

Divergent tokens are a small minority, so the loss weighs classes to equal total weight
(on top of each row's sampling weight from the labeller), and the epoch kept is the one with
the best validation ROC-AUC (validation = held-back training prompts, never the benchmark's).
The default threshold is the highest one that still hands the LLM ``target_recall`` of the
divergent validation tokens. Weights are exported as numpy arrays in the layout
``routers.RouterNet`` reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from experts.r2r.features import N_BUCKETS


@dataclass(slots=True)
class TrainConfig:
    hidden_units: int = 32
    bucket_dim: int = 8
    use_hidden: bool = False  # feed the SLM's hidden state (in-process engines only)
    epochs: int = 300
    patience: int = 40
    lr: float = 3e-3
    weight_decay: float = 1e-3
    dropout: float = 0.1
    target_recall: float = 0.8
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _norm_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-3).astype(np.float32)


def _auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s, sample_weight=w)) if 0 < y.sum() < len(y) else float("nan")


def _ap(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s, sample_weight=w)) if 0 < y.sum() < len(y) else float("nan")


def threshold_for_recall(y: np.ndarray, s: np.ndarray, w: np.ndarray, recall: float) -> float:
    """Highest threshold whose weighted recall of positives is at least ``recall``."""
    pos = np.sort(s[y > 0.5])[::-1]
    pw = w[y > 0.5][np.argsort(-s[y > 0.5])]
    if len(pos) == 0:
        return 0.5
    cum = np.cumsum(pw) / pw.sum()
    i = int(np.searchsorted(cum, recall - 1e-9))
    return float(pos[min(i, len(pos) - 1)])


def rates_at(y: np.ndarray, s: np.ndarray, w: np.ndarray, threshold: float) -> dict[str, float]:
    flag = s >= threshold
    tp = float((w * flag * (y > 0.5)).sum())
    return {
        "hand_over_rate": float((w * flag).sum() / w.sum()),
        "recall": tp / max(float((w * (y > 0.5)).sum()), 1e-12),
        "precision": tp / max(float((w * flag).sum()), 1e-12),
    }


def fit_router(train: dict[str, np.ndarray], val: dict[str, np.ndarray], cfg: TrainConfig, on_epoch=None
               ) -> tuple[dict[str, np.ndarray], dict]:
    """Returns (weights for ``RouterNet``, metrics)."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    use_hidden = cfg.use_hidden and "hidden" in train
    d_mean, d_std = _norm_stats(train["dense"])
    h_mean, h_std = _norm_stats(train["hidden"]) if use_hidden else (None, None)

    def inputs(data: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        dense = torch.from_numpy((data["dense"] - d_mean) / d_std)
        hidden = torch.from_numpy((data["hidden"] - h_mean) / h_std) if use_hidden else None
        return dense, torch.from_numpy(data["bucket"]), hidden

    n_in = train["dense"].shape[1] + cfg.bucket_dim + (train["hidden"].shape[1] if use_hidden else 0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(N_BUCKETS, cfg.bucket_dim)
            self.l1, self.l2, self.l3 = nn.Linear(n_in, cfg.hidden_units), nn.Linear(cfg.hidden_units, cfg.hidden_units), \
                nn.Linear(cfg.hidden_units, 1)
            self.drop = nn.Dropout(cfg.dropout)

        def forward(self, dense, bucket, hidden=None):
            parts = [dense, self.emb(bucket)] + ([hidden] if hidden is not None else [])
            h = self.drop(torch.relu(self.l1(torch.cat(parts, -1))))
            h = self.drop(torch.relu(self.l2(h)))
            return self.l3(h).squeeze(-1)

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    y = torch.from_numpy(train["label"])
    w = torch.from_numpy(train["weight"])
    pos_w = float((w * (1 - y)).sum() / max(float((w * y).sum()), 1e-6))  # classes to equal total weight
    sample_w = w * torch.where(y > 0.5, torch.tensor(pos_w), torch.tensor(1.0))
    sample_w = sample_w / sample_w.mean()
    x_tr, x_val = inputs(train), inputs(val)
    loss_fn = nn.BCEWithLogitsLoss(weight=sample_w)
    best, best_state, best_epoch, stale = -1.0, None, 0, 0
    for epoch in range(cfg.epochs):
        net.train()
        opt.zero_grad()
        loss = loss_fn(net(*x_tr), y)
        loss.backward()
        opt.step()
        net.eval()
        with torch.no_grad():
            s_val = torch.sigmoid(net(*x_val)).numpy()
        auc = _auc(val["label"], s_val, val["weight"])
        score = auc if auc == auc else -float(loss)  # no positives in validation: fall back to the loss
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(epoch, loss.item(), auc)
        if stale >= cfg.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        s_tr = torch.sigmoid(net(*x_tr)).numpy()
        s_val = torch.sigmoid(net(*x_val)).numpy()
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    weights = {"dense_mean": d_mean, "dense_std": d_std, "bucket_emb": sd["emb.weight"],
               "w1": sd["l1.weight"], "b1": sd["l1.bias"], "w2": sd["l2.weight"], "b2": sd["l2.bias"],
               "w3": sd["l3.weight"], "b3": sd["l3.bias"]}
    if use_hidden:
        weights.update(hidden_mean=h_mean, hidden_std=h_std)
    y_val, w_val = val["label"], val["weight"]
    threshold = threshold_for_recall(y_val, s_val, w_val, cfg.target_recall)
    confidence = 1.0 - np.exp(val["dense"][:, 0])  # the baseline's score: 1 - SLM top probability
    metrics = {
        "rows": {"train": int(len(y)), "validation": int(len(y_val))},
        "positives": {"train": int(train["label"].sum()), "validation": int(y_val.sum())},
        "epochs": best_epoch + 1,
        "train_auc": _auc(train["label"], s_tr, train["weight"]),
        "val_auc": _auc(y_val, s_val, w_val),
        "val_average_precision": _ap(y_val, s_val, w_val),
        "val_auc_confidence_baseline": _auc(y_val, confidence, w_val),
        "default_threshold": threshold,
        "at_default_threshold": rates_at(y_val, s_val, w_val, threshold),
        "divergent_rate_validation": float((w_val * y_val).sum() / w_val.sum()),
    }
    return weights, metrics
