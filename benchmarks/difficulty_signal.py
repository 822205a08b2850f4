"""Can the prompt tell how hard a query is *within* its task? A cross-fitted measurement.

The signal ceiling (``benchmarks.signal_ceiling``) found that prompt features mostly know the
task, while the other experts' outcomes on the same query explain a quarter of the within-task
variance: which queries of a task are hard is real and shared across models. This benchmark asks
whether any cheap prompt-only signal reads that difficulty. Target, per TRAIN row (no test row is
read): the mean outcome over the experts minus its task's mean. Signals:

* ``surface``: length in characters, words and distinct words, counts of numbers, lines, question
  marks, commas and arithmetic symbols, the longest number, the share of capitals, mean word length;
* ``surprisal``: how the packaged SmolLM2-135M-Instruct reads the prompt (every block and its LM
  head, the prompt's last 255 tokens): mean, spread, maximum, median and 90th percentile of the
  per-token negative log-likelihood, the next-token entropy at the end and on average, log length;
* the probe's and kNN's features (``minilm``, ``smollm2-135m-instruct@18:both``), for reference.

Each signal, with the gold task one-hot beside it, feeds a ridge regression (strength by
internal CV) and gradient-boosted trees, cross-fitted over grouped folds; reported: R² within
task of the cross-fitted predictions (task means removed from predictions and target), and per
task the correlation of each surprisal statistic with the target.

    python -m benchmarks.difficulty_signal --data ../shared/data/llmrouter --markdown var/bench/signals/difficulty.md
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import numpy as np

from benchmarks.output import publish
from benchmarks.signal_ceiling import centred_by_task, onehot

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SURPRISAL = ("nll mean", "nll sd", "nll max", "nll median", "nll p90", "entropy at end", "entropy mean", "log tokens")


def surface(prompt: str) -> list[float]:
    nums = re.findall(r"\d+(?:\.\d+)?", prompt)
    words = prompt.split()
    return [np.log1p(len(prompt)), np.log1p(len(words)), np.log1p(len({w.lower() for w in words})),
            np.log1p(len(nums)), np.log1p(max((len(n) for n in nums), default=0)), np.log1p(prompt.count("\n")),
            prompt.count("?"), prompt.count(","), np.log1p(sum(c in "+-*/=^" for c in prompt)),
            sum(c.isupper() for c in prompt) / max(1, len(prompt)), float(np.mean([len(w) for w in words])) if words else 0.0]


def surprisal(prompts: list[str], cache: Path, *, max_tokens: int = 255) -> np.ndarray:
    """Per prompt the ``SURPRISAL`` statistics under SmolLM2 (cached in ``cache``, resumable)."""
    import torch
    from rich.progress import Progress
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from policies import model_home
    from policies.activations import native_dtype
    from policies.router_r1.lm import ensure_hf_model

    out = np.load(cache) if cache.exists() else np.full((len(prompts), len(SURPRISAL)), np.nan, dtype=np.float32)
    todo = np.flatnonzero(np.isnan(out).any(axis=1))
    if not len(todo):
        return out
    path = ensure_hf_model("smollm2-135m-instruct", data_dir=model_home.data_dir())
    tok = AutoTokenizer.from_pretrained(path)
    net = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, native_dtype())).eval()
    torch.set_num_threads(2)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    with Progress() as bar, torch.inference_mode():
        task = bar.add_task("SmolLM2 surprisal", total=len(todo))
        for n, i in enumerate(todo):
            ids = bos + tok(prompts[i], add_special_tokens=False)["input_ids"][-max_tokens:]
            x = torch.tensor([ids if len(ids) > 1 else ids + [tok.eos_token_id]])
            logp = torch.log_softmax(net(input_ids=x).logits[0].float(), dim=-1)
            nll = -logp[:-1].gather(1, x[0, 1:, None])[:, 0].numpy()
            entropy = -(logp.exp() * logp).sum(dim=-1).numpy()
            out[i] = [nll.mean(), nll.std(), nll.max(), np.median(nll), np.quantile(nll, 0.9),
                      entropy[-1], entropy.mean(), np.log(len(nll))]
            bar.advance(task)
            if n % 500 == 499:
                np.save(cache, out)
    np.save(cache, out)
    return out


def within_task_r2(pred: np.ndarray, target: np.ndarray, task: np.ndarray) -> float:
    """R² of ``pred`` against the task-centred ``target``, task means removed from ``pred`` too."""
    return float(1 - ((centred_by_task(pred, task) - target) ** 2).mean() / target.var())


def cross_fitted(make, X: np.ndarray, y: np.ndarray, folds) -> np.ndarray:
    out = np.zeros(len(y))
    for tr, te in folds:
        out[te] = make().fit(X[tr], y[tr]).predict(X[te])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--references", nargs="*", default=["minilm", "smollm2-135m-instruct@18:both"])
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/embeddings"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV

    from policies.data import RoutingData
    from policies.features import compute, configure_feature_stores, impute_targets

    configure_feature_stores(data_dir=args.cache_dir.parent.parent, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    data = RoutingData.load(args.data)
    cache = args.cache_dir / f"surprisal-smollm2-{data.fingerprint()[:16]}.npy"
    all_surprisal = surprisal(list(data.prompts), cache)
    rows = data.rows_of("train")
    train = data.subset(rows)
    folds = train.grouped_folds(args.folds, seed=0)
    task = train.task.astype(str)
    target = centred_by_task(impute_targets(train.scores)[0].mean(axis=1), task)
    tasks = onehot(task)

    signals = {"surface": np.array([surface(p) for p in train.prompts]), "surprisal": all_surprisal[rows].astype(float)}
    signals["surface+surprisal"] = np.hstack([signals["surface"], signals["surprisal"]])
    for spec in args.references:
        X = compute(spec, train.prompts).astype(float)
        signals[spec] = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-6)
    results = {}
    for name, X in signals.items():
        Z = np.hstack([X, tasks])
        ridge = cross_fitted(lambda: RidgeCV(alphas=np.logspace(-2, 5, 15)), Z, target, folds)
        trees = cross_fitted(lambda: HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=0),
                             Z, target, folds)
        results[name] = {"ridge": within_task_r2(ridge, target, task), "trees": within_task_r2(trees, target, task)}
        print(f"{name:35s} ridge {results[name]['ridge']:+.3f} trees {results[name]['trees']:+.3f}", flush=True)
    S = signals["surprisal"]
    per_task = {t: {"n": int((task == t).sum()), "sd": float(target[task == t].std()),
                    "corr": [float(np.corrcoef(S[task == t, j], target[task == t])[0, 1]) for j in range(S.shape[1])]}
                for t in np.unique(task)}

    lines = [f"{data.name} / train: within-task difficulty (mean outcome over {len(data.models)} experts minus the task's "
             f"mean), {args.folds}-fold cross-fitted, {len(train)} queries, {time.perf_counter() - t0:.0f} s", "",
             "| signal (+ gold task one-hot) | R² within task, ridge | R² within task, boosted trees |", "|---|---|---|"]
    lines += [f"| {k} | {v['ridge']:+.3f} | {v['trees']:+.3f} |" for k, v in results.items()]
    lines += ["", "Per task: spread of the target and its correlation with each surprisal statistic", "",
              "| task | n | sd | " + " | ".join(SURPRISAL) + " |", "|---|---|---|" + "---|" * len(SURPRISAL)]
    lines += [f"| {t} | {v['n']} | {v['sd']:.3f} | " + " | ".join(f"{c:+.2f}" for c in v["corr"]) + " |"
              for t, v in per_task.items()]
    publish(lines, {"within_task_r2": results, "per_task": per_task, "statistics": SURPRISAL},
            json_path=args.json, markdown_path=args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
