"""How predictable is each model's outcome from the prompt? A cross-fitted measurement per signal.

On the TRAIN rows only (grouped K-fold; no test row is read), each signal's features feed a
ridge regression per expert (strength chosen from a grid by cross-fitted squared error, a
mild optimism shared by every signal); from the cross-fitted predictions:

* ``r2``: 1 − MSE / variance of the outcome, averaged over experts;
* ``r2_within_task``: the same after removing each task's mean from outcomes and predictions,
  i.e. what the signal knows about the individual query beyond which task it belongs to;
* ``auc``: mean over experts of the ROC AUC of the predictions for outcomes ≥ 0.5 (where both
  classes occur);
* ``routed`` / ``gap_at_0``: mean outcome when each row goes to its highest predicted expert,
  and the share of the best-single → oracle gap it closes (λ = 0), each with a percentile 95 %
  interval over ``--boot`` resamples of the rows (best single and oracle recomputed per resample;
  the cross-fitted predictions stay fixed).

Signals: feature specs of ``policies.features`` ("minilm", "smollm2-135m-instruct@12:mean",
combinations), plus analysis-only references that no router has at serving time: ``task``
(one-hot of the gold task label), ``pertask:<spec>`` (ridge heads fitted inside each gold task:
the task known exactly, the features used within it), ``pertask-boost:<spec>`` (the same with
gradient-boosted trees on the features' first 64 principal components instead of ridge: whether
a non-linear head reads more within a task) and ``others`` (the other experts' true
outcomes on the same query, with the task: how predictable an outcome is from the query's
measured difficulty; its routing figure is not meaningful, since it reads the outcomes it
routes by). Prefix a spec with ``task+`` to add the gold task to it.

    python -m benchmarks.signal_ceiling --data ../shared/data/llmrouter \
        --signals task minilm smollm2-135m-instruct@12:mean task+minilm others --markdown var/bench/signals/ceiling.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VAR_FLOOR = 1e-12  # a column constant within every task centres to rounding noise, not to 0: no R² for it
ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def onehot(labels: np.ndarray) -> np.ndarray:
    names, idx = np.unique(labels.astype(str), return_inverse=True)
    return np.eye(len(names))[idx]


def centred_by_task(A: np.ndarray, task: np.ndarray) -> np.ndarray:
    """``A`` with each task's mean (per column) subtracted from its rows."""
    out = np.array(A, dtype=float, copy=True)
    for t in np.unique(task):
        rows = task == t
        out[rows] -= out[rows].mean(axis=0)
    return out


def signal_features(spec: str, train) -> np.ndarray:
    from policies.features import compute

    parts = [p for p in spec.split("+") if p]
    blocks = []
    rest = [p for p in parts if p not in ("task", "others")]
    if "task" in parts or "others" in parts:
        blocks.append(onehot(train.task))
    if rest:
        blocks.append(compute("+".join(rest), train.prompts))
    return np.hstack(blocks).astype(np.float64)


def cross_fitted(X: np.ndarray, Y: np.ndarray, folds, *, others: bool = False) -> np.ndarray:
    """Cross-fitted ridge predictions at the strength with the least cross-fitted MSE."""
    from policies.features import fold_ridge_predictions

    if not others:
        P = fold_ridge_predictions(X, Y, folds, ALPHAS)
        mse = ((P - Y[None]) ** 2).mean(axis=(1, 2))
        return P[int(np.argmin(mse))]
    out = np.zeros_like(Y)  # each expert from the task and the other experts' outcomes
    for e in range(Y.shape[1]):
        Xe = np.hstack([X, np.delete(Y, e, axis=1)])
        P = fold_ridge_predictions(Xe, Y[:, [e]], folds, ALPHAS)
        out[:, e] = P[int(np.argmin(((P - Y[None, :, [e]]) ** 2).mean(axis=(1, 2))))][:, 0]
    return out


def per_task_cross_fitted(X: np.ndarray, Y: np.ndarray, task: np.ndarray, folds) -> np.ndarray:
    """Cross-fitted ridge heads per GOLD task (the task known exactly, features inside it)."""
    from policies.features import category_heads, mix_heads, standardiser

    names, y = np.unique(task.astype(str), return_inverse=True)
    onehot = np.eye(len(names))[y]
    P = np.zeros((len(ALPHAS), *Y.shape))
    for tr, te in folds:
        mean, scale = standardiser(X[tr])
        Z = (X - mean) / scale
        W, b = category_heads(Z[tr], Y[tr], y[tr], len(names), ALPHAS)
        for ai in range(len(ALPHAS)):
            P[ai, te] = mix_heads(Z[te], onehot[te], W[ai], b[ai])
    return P[int(np.argmin(((P - Y[None]) ** 2).mean(axis=(1, 2))))]


def per_task_boosted(X: np.ndarray, Y: np.ndarray, task: np.ndarray, folds, *, components: int = 64) -> np.ndarray:
    """Cross-fitted boosted-tree heads per GOLD task and expert, on principal components fitted per fold."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingRegressor

    task = np.asarray(task).astype(str)
    P = np.zeros_like(Y)
    for tr, te in folds:
        mean, scale = X[tr].mean(axis=0), X[tr].std(axis=0) + 1e-6
        Z = PCA(min(components, len(tr) - 1), random_state=0).fit((X[tr] - mean) / scale).transform((X - mean) / scale)
        for t in np.unique(task[te]):
            a, b = tr[task[tr] == t], te[task[te] == t]
            for e in range(Y.shape[1]):
                head = HistGradientBoostingRegressor(max_iter=100, learning_rate=0.05, max_leaf_nodes=8,
                                                     min_samples_leaf=20, l2_regularization=1.0, random_state=0)
                P[b, e] = head.fit(Z[a], Y[a, e]).predict(Z[b])
    return P


def _auc(pred: np.ndarray, y: np.ndarray) -> float:
    pos = y >= 0.5
    if pos.all() or not pos.any():
        return float("nan")
    ranks = np.argsort(np.argsort(pred, kind="stable"), kind="stable") + 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def routed_distribution(P: np.ndarray, scores: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Per bootstrap resample (rows of ``W`` count draws of each row): routed quality at λ = 0 and
    the share of the best-single → oracle gap it closes, references recomputed per resample."""
    known = ~np.isnan(scores)
    rows = np.arange(len(scores))
    picked = scores[rows, np.argmax(np.where(known, P, -np.inf), axis=1)]
    has = ~np.isnan(picked)
    routed = (W[:, has] @ picked[has]) / W[:, has].sum(axis=1)
    cnt = W @ known.astype(float)
    per_model = np.where(cnt > 0, (W @ np.where(known, scores, 0.0)) / np.maximum(cnt, 1), -np.inf)
    best = per_model.max(axis=1)
    top = np.nanmax(np.where(known, scores, np.nan), axis=1)
    ok = ~np.isnan(top)
    oracle = (W[:, ok] @ top[ok]) / W[:, ok].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = (routed - best) / (oracle - best)
    return {"routed": routed, "gap_at_0": gap}


def measure(P: np.ndarray, scores: np.ndarray, task: np.ndarray, W: np.ndarray | None = None) -> dict:
    from policies.features import impute_targets, routed_quality

    Y, _ = impute_targets(scores)
    known = ~np.isnan(scores)
    var = Y.var(axis=0)
    r2 = 1 - ((P - Y) ** 2).mean(axis=0) / np.where(var > VAR_FLOOR, var, np.nan)
    Pw, Yw = centred_by_task(P, task), centred_by_task(Y, task)
    var_w = Yw.var(axis=0)
    r2w = 1 - ((Pw - Yw) ** 2).mean(axis=0) / np.where(var_w > VAR_FLOOR, var_w, np.nan)
    auc = [_auc(P[known[:, e], e], scores[known[:, e], e]) for e in range(scores.shape[1])]
    best = float(np.nanmax(np.nanmean(scores, axis=0)))
    oracle = float(np.nanmean(np.nanmax(scores, axis=1)))
    routed = routed_quality(P, scores)
    out = {"r2": float(np.nanmean(r2)), "r2_within_task": float(np.nanmean(r2w)), "auc": float(np.nanmean(auc)),
           "routed": routed, "gap_at_0": (routed - best) / (oracle - best), "best_single": best, "oracle": oracle}
    if W is not None:
        from benchmarks.routing_stats import interval

        for k, v in routed_distribution(P, scores, W).items():
            out[f"{k}_ci"] = interval(v)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--signals", nargs="+", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the rows (0: no intervals)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/embeddings"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    from benchmarks.routing_stats import resample_weights
    from policies.data import RoutingData
    from policies.features import configure_feature_stores, impute_targets

    configure_feature_stores(data_dir=args.cache_dir.parent.parent, cache_dir=args.cache_dir)  # var/cache/embeddings → var
    data = RoutingData.load(args.data)
    train = data.subset(data.rows_of("train"))
    folds = train.grouped_folds(args.folds, seed=0)
    Y, _ = impute_targets(train.scores)
    W = resample_weights(len(train), args.boot, seed=0) if args.boot else None
    results = {}
    for spec in args.signals:
        if spec.startswith("pertask-boost:"):
            P = per_task_boosted(signal_features(spec.removeprefix("pertask-boost:"), train), Y, train.task, folds)
        elif spec.startswith("pertask:"):
            P = per_task_cross_fitted(signal_features(spec.removeprefix("pertask:"), train), Y, train.task, folds)
        else:
            P = cross_fitted(signal_features(spec, train), Y, folds, others="others" in spec.split("+"))
        results[spec] = measure(P, train.scores, train.task, W)
        r = results[spec]
        print(f"{spec:45s} r2 {r['r2']:.3f} within-task {r['r2_within_task']:.3f} auc {r['auc']:.3f} "
              f"routed {r['routed']:.4f} gap@0 {r['gap_at_0']:+.3f}", flush=True)
    any_r = next(iter(results.values()))
    boot = f"; 95 % intervals over {args.boot} bootstrap resamples" if args.boot else ""
    lines = [f"{data.name} / train, {args.folds}-fold cross-fitted ridge per expert ({len(train)} queries; "
             f"best single {any_r['best_single']:.3f}, oracle {any_r['oracle']:.3f}{boot})", "",
             "| signal | R² | R² within task | AUC | routed quality (λ=0) | gap closed at λ=0 |", "|---|---|---|---|---|---|"]
    for spec, r in results.items():
        routed_ci = " [{:.4f}, {:.4f}]".format(*r["routed_ci"]) if "routed_ci" in r else ""
        gap_ci = " [{:+.3f}, {:+.3f}]".format(*r["gap_at_0_ci"]) if "gap_at_0_ci" in r else ""
        lines.append(f"| {spec} | {r['r2']:.3f} | {r['r2_within_task']:.3f} | {r['auc']:.3f} | {r['routed']:.4f}{routed_ci} | "
                     f"{r['gap_at_0']:+.3f}{gap_ci} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.markdown, text)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
