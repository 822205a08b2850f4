"""Query feature maps shared by the signal policies (probe, rank, irt): a spec string names them.

    "minilm"                              the sentence embedding (``policies.embeddings``)
    "smollm2-135m-instruct@12:mean"       prefill activations after block 12, mean-pooled
    "gemma3-270m@8:both"                  … mean and last-token states side by side
    "minilm+smollm2-135m-instruct@12:last"  concatenations (each part standardised by the head)

Activation parts read the cached features of the model's probe layers (``policies.activations``,
``DEFAULT_LAYERS``), so any of those layers costs nothing once extracted. Also here: a
standardiser and a multi-output ridge solved for many strengths at once, the linear algebra the
heads share (plain numpy, artifacts as arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import PolicyError


@dataclass(frozen=True)
class Part:
    kind: str  # "embedding" | "activation"
    name: str  # encoder name, or the probed model
    layer: int = 0
    pooling: str = "mean"


def configure_feature_stores(*, data_dir: str | Path, cache_dir: str | Path | None = None) -> None:
    """Where prompt features live, for a composition root (CLI command, benchmark): the encoders'
    disk cache (``cache_dir``, default ``<data_dir>/cache/embeddings``) and the models converted
    for activation probes (``<data_dir>/models``)."""
    from policies.embeddings import configure_encoders
    from policies.model_home import configure_model_home

    configure_encoders(cache_dir=cache_dir or Path(data_dir) / "cache" / "embeddings")
    configure_model_home(data_dir=data_dir)


def parse_spec(spec: str) -> list[Part]:
    parts = []
    for raw in [p.strip() for p in spec.split("+") if p.strip()]:
        if "@" not in raw:
            parts.append(Part("embedding", raw))
            continue
        model, _, rest = raw.partition("@")
        layer, _, pooling = rest.partition(":")
        try:
            parts.append(Part("activation", model, int(layer), pooling or "mean"))
        except ValueError:
            raise PolicyError(f"feature spec part {raw!r}: expected MODEL@LAYER[:mean|last|both]") from None
    if not parts:
        raise PolicyError(f"empty feature spec {spec!r}")
    return parts


def activation_matrix(model: str, prompts: Sequence[str], *, max_tokens: int = 64, dtype: str = "auto",
                      runtime: str = "transformers") -> tuple[np.ndarray, tuple[int, ...], int]:
    """All cached probe-layer features of ``model`` for the prompts: (X, layers, hidden);
    ``runtime="llamacpp"``: the GGUF's own prefill states (``policies.prefill_states``)."""
    from policies.activations import activation_encoder, default_layers

    layers = default_layers(model)
    if runtime == "llamacpp":
        from policies.prefill_states import prefill_encoder

        enc = prefill_encoder(model, layers)
    else:
        enc = activation_encoder(model, layers, max_tokens=max_tokens, dtype=dtype)
    return enc.encode(list(prompts)), layers, int(enc.backend.hidden)


def compute(spec: str, prompts: Sequence[str], *, max_tokens: int = 64) -> np.ndarray:
    """The features of a spec, parts side by side (float32, not standardised)."""
    from policies.activations import feature_block
    from policies.embeddings import get_encoder

    blocks = []
    for part in parse_spec(spec):
        if part.kind == "embedding":
            blocks.append(get_encoder(part.name).encode(list(prompts)))
        else:
            X, layers, hidden = activation_matrix(part.name, prompts, max_tokens=max_tokens)
            blocks.append(feature_block(X, layers, hidden, part.layer, part.pooling))
    return np.hstack(blocks).astype(np.float32) if len(blocks) > 1 else np.asarray(blocks[0], dtype=np.float32)


# ---- linear algebra the heads share --------------------------------------------------------------
def standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale (std, 1 where constant)."""
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def impute_targets(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unknown outcomes (NaN) → the expert's training mean; returns (filled, per-expert means)."""
    with np.errstate(invalid="ignore"):
        means = np.nanmean(Y, axis=0)
    means = np.where(np.isfinite(means), means, np.nanmean(Y) if np.isfinite(Y).any() else 0.0)
    return np.where(np.isnan(Y), means[None, :], Y), means


def ridge_path(Xz: np.ndarray, Yc: np.ndarray, alphas: Sequence[float], gram: np.ndarray | None = None) -> list[np.ndarray]:
    """Ridge weights (d × m) of centred data for every alpha from one eigendecomposition.

    ``alpha`` is per row: the penalty is ``alpha · n`` so one grid fits any training size."""
    n, d = Xz.shape
    if gram is None and n < d:  # fewer rows than features: the n × n Gram matrix is the smaller one
        s, U = np.linalg.eigh((Xz @ Xz.T).astype(np.float64))
        proj, s = U.T @ Yc, np.clip(s, 0.0, None)
        return [Xz.T @ (U @ (proj / (s + a * n)[:, None])) for a in alphas]
    G = Xz.T @ Xz if gram is None else gram
    s, V = np.linalg.eigh(G.astype(np.float64))
    proj = V.T @ (Xz.T @ Yc)
    s = np.clip(s, 0.0, None)
    return [V @ (proj / (s + a * n)[:, None]) for a in alphas]


def fold_ridge_predictions(X: np.ndarray, Y: np.ndarray, folds, alphas: Sequence[float]) -> np.ndarray:
    """Cross-fitted ridge predictions for every alpha: (n_alphas, n, m); each fold standardised
    on its own training rows."""
    out = np.zeros((len(alphas), len(X), Y.shape[1]))
    for tr, te in folds:
        mean, scale = standardiser(X[tr])
        Xtr = (X[tr] - mean) / scale
        ym = Y[tr].mean(axis=0)
        for ai, w in enumerate(ridge_path(Xtr, Y[tr] - ym, alphas)):
            out[ai, te] = ((X[te] - mean) / scale) @ w + ym
    return out


def routed_quality(pred: np.ndarray, scores: np.ndarray) -> float:
    """Mean outcome when each row goes to its highest predicted known expert (λ = 0)."""
    known = ~np.isnan(scores)
    pick = np.argmax(np.where(known, pred, -np.inf), axis=1)
    return float(np.nanmean(scores[np.arange(len(scores)), pick]))


def fisher_separability(X: np.ndarray, Y: np.ndarray, *, n_components: int = 64) -> float:
    """Mean over experts of the Fisher criterion Δμᵀ S_w⁻¹ Δμ between queries the expert gets
    right (outcome ≥ 0.5) and wrong, in the top principal components of standardised features."""
    mean, scale = standardiser(X)
    Z = (X - mean) / scale
    _, _, vt = np.linalg.svd(Z[:: max(1, len(Z) // 4000)], full_matrices=False)
    P = Z @ vt[: min(n_components, vt.shape[0])].T
    out = []
    for e in range(Y.shape[1]):
        ok = ~np.isnan(Y[:, e])
        pos, neg = P[ok & (Y[:, e] >= 0.5)], P[ok & (Y[:, e] < 0.5)]
        if len(pos) < 5 or len(neg) < 5:
            continue
        Sw = np.cov(pos.T) * (len(pos) - 1) + np.cov(neg.T) * (len(neg) - 1)
        Sw = Sw / (len(pos) + len(neg) - 2) + 1e-3 * np.eye(P.shape[1])
        d = pos.mean(axis=0) - neg.mean(axis=0)
        out.append(float(d @ np.linalg.solve(Sw, d)))
    return float(np.mean(out)) if out else float("nan")


def effective_dimension(X: np.ndarray) -> float:
    """Participation ratio (Σλ)² / Σλ² of the covariance spectrum of standardised features."""
    mean, scale = standardiser(X)
    Z = (X - mean) / scale
    s = np.linalg.svd(Z[:: max(1, len(Z) // 4000)], compute_uv=False) ** 2
    return float(s.sum() ** 2 / (s**2).sum())


def category_heads(Z: np.ndarray, Y: np.ndarray, y: np.ndarray, k: int, alphas: Sequence[float],
                   *, min_rows: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Ridge heads per category for every alpha: weights (A, k, d, m), biases (A, k, m).

    Each category's head is centred on its own rows (the intercept is the category's mean
    outcome, the slope what the features add inside it); a category with fewer than
    ``min_rows`` rows keeps a flat head at the overall mean."""
    d, m = Z.shape[1], Y.shape[1]
    W = np.zeros((len(alphas), k, d, m), dtype=np.float32)
    b = np.tile(Y.mean(axis=0), (len(alphas), k, 1))
    for c in range(k):
        rows = y == c
        if rows.sum() < min_rows:
            continue
        zc, yc = Z[rows].mean(axis=0), Y[rows].mean(axis=0)
        for ai, w in enumerate(ridge_path(Z[rows] - zc, Y[rows] - yc, alphas)):
            W[ai, c], b[ai, c] = w, yc - zc @ w
    return W, b


def mix_heads(Z: np.ndarray, P: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_c P[:, c] · (Z W_c + b_c): predictions mixed by a category posterior (n, m)."""
    out = P @ b
    for c in range(W.shape[0]):
        if np.any(W[c]):
            out += P[:, [c]] * (Z @ W[c])
    return out
