"""A tiny synthetic routing matrix (the project's own fixture; no real data needed).

Three tasks with distinct vocabularies and three models with task-dependent skill, so a router
that reads the prompt can beat every single model: ``small`` knows trivia, ``mid`` writes code,
``large`` does math and is fair elsewhere (and costs the most).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TASKS = {
    "math": ["compute", "sum", "integer", "equation", "solve", "multiply", "fraction", "algebra"],
    "code": ["python", "function", "return", "list", "loop", "string", "def", "class"],
    "trivia": ["capital", "country", "river", "famous", "painter", "novel", "year", "mountain"],
}
SKILL = {  # P(correct) per model and task
    "small": {"math": 0.1, "code": 0.2, "trivia": 0.9},
    "mid": {"math": 0.3, "code": 0.9, "trivia": 0.4},
    "large": {"math": 0.9, "code": 0.6, "trivia": 0.6},
}
PRICES = {"small": 0.1, "mid": 0.5, "large": 2.0}  # USD per million tokens, in and out
PARAMS = {"small": 1.0, "mid": 8.0, "large": 70.0}


def make_frame(*, n_per_task: int = 60, models: tuple[str, ...] = ("small", "mid", "large"), costs: bool = True,
               nan_fraction: float = 0.0, splits: tuple[str, ...] = ("train", "test"), test_share: float = 0.3,
               seed: int = 0, duplicate_prompts: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for task, words in TASKS.items():
        for i in range(n_per_task):
            picked = rng.choice(words, size=int(rng.integers(4, 40)))  # lengths vary: so do costs
            prompt = f"question {i}: " + " ".join(picked) + "?"
            rows.append({"task": task, "dataset": f"synthetic-{task}", "prompt": prompt})
    for d in range(duplicate_prompts):  # the same prompt twice (must stay in one CV fold)
        rows.append(dict(rows[d]))
    df = pd.DataFrame(rows)
    df.insert(0, "qid", [f"q{i}" for i in range(len(df))])
    if len(splits) == 1:
        df["split"] = splits[0]
    else:
        df["split"] = np.where(rng.random(len(df)) < test_share, splits[1], splits[0])
        if len(splits) > 2:  # half of one task only in the third split: an out-of-distribution test
            trivia = df["task"] == "trivia"
            df.loc[trivia, "split"] = np.where(rng.random(trivia.sum()) < 0.5, splits[2], df.loc[trivia, "split"])
    chars = df["prompt"].str.len().to_numpy()
    for m in models:
        p = df["task"].map(SKILL[m]).to_numpy()
        score = (rng.random(len(df)) < p).astype(float)
        if nan_fraction:
            score[rng.random(len(df)) < nan_fraction] = np.nan
        df[f"score::{m}"] = score
        if costs:
            df[f"cost_usd::{m}"] = (np.ceil(chars / 4) + 256) * PRICES[m] / 1e6
    return df


def write_matrix(folder: Path, *, models: tuple[str, ...] = ("small", "mid", "large"), **kw) -> Path:
    """Write ``matrix.parquet`` + ``models.json`` into ``folder`` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    df = make_frame(models=models, **kw)
    df.to_parquet(folder / "matrix.parquet", index=False)
    meta = {"models": {m: {"params_b": PARAMS[m], "input_usd_per_mtok": PRICES[m], "output_usd_per_mtok": PRICES[m]}
                       for m in models},
            "note": "synthetic test fixture"}
    (folder / "models.json").write_text(json.dumps(meta))
    return folder
