"""A simulated three-expert calibration matrix with KNOWN answer-level confidence.

Every (query, expert) cell draws a confidence signal s = logit(p) + ε, where p is the expert's
skill on the query's task lowered by the query's difficulty (shared by all experts, so hard
queries are hard for everyone) and ε is what the prompt cannot tell. The answer is right with
probability σ(s) exactly: ``confidence::<expert>`` = σ(s) is the ideal post-hoc estimate, the
ceiling any estimator can reach. The answer's token logprobs report that confidence the way a
miscalibrated model would: the first token has probability σ(a·s + b) (the small expert is
overconfident, the large one underconfident), followed by filler tokens whose logprobs carry
noise only; the top-k alternatives of the first token share the remaining mass. Wrong answers
are drawn from three distractors, so two wrong answers sometimes agree and two right answers
always do.

The prompt reveals the task (its vocabulary) but not the difficulty: ex-ante routing can learn
which expert is good at what, and only the answers tell which queries are hard.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

TASKS = {
    "math": ["compute", "sum", "integer", "equation", "solve", "multiply", "fraction", "algebra"],
    "code": ["python", "function", "return", "list", "loop", "string", "def", "class"],
    "trivia": ["capital", "country", "river", "famous", "painter", "novel", "year", "mountain"],
    "logic": ["puzzle", "implies", "deduce", "truth", "liar", "order", "premise", "valid"],
}
SKILL = {  # P(right) on a query of average difficulty
    "small": {"math": 0.35, "code": 0.45, "trivia": 0.75, "logic": 0.3},
    "mid": {"math": 0.55, "code": 0.75, "trivia": 0.7, "logic": 0.5},
    "large": {"math": 0.85, "code": 0.8, "trivia": 0.85, "logic": 0.75},
}
USD_PER_QUERY = {"small": 2e-5, "mid": 1e-4, "large": 6e-4}
PARAMS = {"small": 1.0, "mid": 8.0, "large": 70.0}
MISCALIBRATION = {"small": (1.8, 1.0), "mid": (1.0, 0.3), "large": (0.6, -0.2)}  # (a, b): reported = σ(a·s + b)
DIFFICULTY, PRIVATE = 1.2, 1.0  # spread of the shared difficulty and of each cell's private noise


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_frame(*, n_per_task: int = 500, seed: int = 0, test_share: float = 0.3, filler_tokens: int = 6):
    import pandas as pd

    rng = np.random.default_rng(seed)
    experts = list(SKILL)
    rows = []
    for task, words in TASKS.items():
        for i in range(n_per_task):
            picked = rng.choice(words, size=int(rng.integers(4, 30)))
            ref = str(int(rng.integers(10, 99)))
            wrong = [str(int(x)) for x in rng.choice([k for k in range(100, 999)], 3, replace=False)]
            d = rng.normal(0.0, DIFFICULTY)
            row = {"qid": f"{task}-{i:04d}", "dataset": "cascade-sim", "task": task,
                   "prompt": f"{task} question {i}: " + " ".join(picked) + "?", "reference": ref}
            length = len(row["prompt"]) / 100
            for e in experts:
                s = math.log(SKILL[e][task] / (1 - SKILL[e][task])) - d + rng.normal(0.0, PRIVATE)
                conf = float(_sigmoid(s))
                right = bool(rng.random() < conf)
                answer = ref if right else str(rng.choice(wrong))
                a, b = MISCALIBRATION[e]
                p_first = float(np.clip(_sigmoid(a * s + b), 1e-4, 1 - 1e-4))
                alts = rng.dirichlet(np.ones(3)) * (1 - p_first)
                others = [x for x in [ref, *wrong] if x != answer][:3]
                tokens = [[answer, round(math.log(p_first), 5), [[o, round(math.log(max(p, 1e-9)), 5)]
                                                               for o, p in zip(others, alts)]]]
                tokens += [[f" tok{k}", round(float(-abs(rng.normal(0.2, 0.3))), 5)] for k in range(filler_tokens)]
                row[f"score::{e}"] = float(right)
                row[f"cost_usd::{e}"] = USD_PER_QUERY[e] * (1 + length)
                row[f"answer::{e}"] = answer + " is the answer."
                row[f"logprobs::{e}"] = json.dumps(tokens)
                row[f"confidence::{e}"] = conf
            rows.append(row)
    df = pd.DataFrame(rows)
    order = np.random.default_rng(seed + 1).permutation(len(df))
    df["split"] = np.where(np.isin(np.arange(len(df)), order[: int(round(test_share * len(df)))]), "test", "train")
    meta = {"models": {e: {"params_b": PARAMS[e], "input_usd_per_mtok": USD_PER_QUERY[e] * 1e4,
                           "output_usd_per_mtok": USD_PER_QUERY[e] * 2e4} for e in experts},
            "note": "simulated three-expert calibration matrix with known answer-level confidence (confidence::<expert>)"}
    return df, meta


def write(folder: str | Path, **kw) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    df, meta = make_frame(**kw)
    df.to_parquet(folder / "matrix.parquet", index=False)
    (folder / "models.json").write_text(json.dumps(meta, indent=1))
    return folder
