"""Training loop shared by the torch policies (MLP, MF): masked outcome regression.

Targets are outcomes rescaled to [0, 1]; the loss is binary cross-entropy with soft targets,
averaged over KNOWN outcomes only (NaN = not measured, never a zero). A grouped hold-out of the
training rows stops training early and picks the best epoch. torch is imported here, inside
functions, so ``import policies`` stays light.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from policies.data import RoutingData
from policies.progress import report


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    patience: int
    val_fraction: float
    seed: int


@contextmanager
def single_thread():
    """Run torch (and numpy's BLAS) on one thread: these models are small, and on a busy 2-core
    machine a second thread made training epochs ~50× slower and a single-query MiniLM encoding
    ~20× slower (threads spin waiting for each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas_single_thread():
            yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _blas_single_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it BLAS keeps its own setting
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def holdout_split(train: RoutingData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows for fitting and for early stopping; identical prompts stay on one side."""
    n_splits = max(2, int(round(1.0 / val_fraction))) if val_fraction > 0 else 0
    if n_splits == 0 or len(train) < 2 * n_splits:
        idx = np.arange(len(train))
        return idx, idx[:0]
    fit_rows, val_rows = train.grouped_folds(n_splits, seed=seed)[0]
    return fit_rows, val_rows


def train_masked(net, X: np.ndarray, Y: np.ndarray, known: np.ndarray, fit_rows: np.ndarray,
                 val_rows: np.ndarray, cfg: TrainConfig, progress=None) -> dict[str, float]:
    """Fit ``net`` (embeddings → one logit per expert) in place; returns training statistics.

    ``progress`` (optional) is called with (epoch, n_epochs) after every epoch.
    """
    with single_thread():
        return _train(net, X, Y, known, fit_rows, val_rows, cfg, progress)


def _train(net, X, Y, known, fit_rows, val_rows, cfg: TrainConfig, progress) -> dict[str, float]:
    import torch

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    Yt = torch.as_tensor(np.where(known, Y, 0.0), dtype=torch.float32)
    Mt = torch.as_tensor(known, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")

    def masked_loss(rows: torch.Tensor) -> torch.Tensor:
        out = loss_fn(net(Xt[rows]), Yt[rows]) * Mt[rows]
        return out.sum() / Mt[rows].sum().clamp_min(1.0)

    fit_t = torch.as_tensor(fit_rows, dtype=torch.long)
    val_t = torch.as_tensor(val_rows, dtype=torch.long)
    best, best_state, since_best, epochs_run = float("inf"), None, 0, 0
    for epoch in range(cfg.epochs):
        net.train()
        perm = fit_t[torch.randperm(len(fit_t), generator=gen)]
        for start in range(0, len(perm), cfg.batch_size):
            opt.zero_grad()
            loss = masked_loss(perm[start : start + cfg.batch_size])
            loss.backward()
            opt.step()
        epochs_run = epoch + 1
        if progress is not None:
            progress(epochs_run, cfg.epochs)
        report("training epochs", epochs_run, cfg.epochs)
        if len(val_t) == 0:
            continue
        net.eval()
        with torch.no_grad():
            val = float(masked_loss(val_t))
        if val < best - 1e-5:
            best, since_best = val, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            since_best += 1
            if since_best >= cfg.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    report("training epochs", epochs_run, epochs_run)  # stopped early: the bar ends where training did
    return {"epochs": float(epochs_run), "val_loss": best if best_state is not None else float("nan")}


def predict_unit(net, X: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Sigmoid outputs in [0, 1], shape (n, n_experts)."""
    import torch

    outs = []
    with single_thread(), torch.no_grad():
        for start in range(0, len(X), batch):
            xb = torch.as_tensor(X[start : start + batch], dtype=torch.float32)
            outs.append(torch.sigmoid(net(xb)).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0))


def net_state(net) -> dict[str, np.ndarray]:
    """A torch module's parameters and buffers as numpy arrays (for artifacts)."""
    return {f"net.{k}": v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def load_net_state(net, arrays: dict[str, np.ndarray]) -> None:
    """Inverse of ``net_state``; shapes must match the module (else ValueError)."""
    import torch

    state = {k.removeprefix("net."): torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights do not fit the network: {str(exc).splitlines()[0]}") from None
    net.eval()
