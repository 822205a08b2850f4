"""Prompts for training and benchmarking, read from routing-matrix folders (``matrix.parquet``).

Only the ``prompt`` column (with ``qid``, ``dataset``, ``task``, ``split``) is read. Training
draws from the ``train`` split, the benchmark from the held-out split (``test``), so the two
never share a prompt; within training, a seeded share of prompts is kept for validation (early
stopping and the default threshold).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PromptItem:
    qid: str
    source: str  # the routing-matrix folder's name
    task: str
    prompt: str

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def load_prompts(folders: list[Path], *, split: str, n: int, seed: int = 0, max_chars: int = 1500) -> list[PromptItem]:
    """``n`` prompts of ``split``, as evenly as possible from each folder, seeded.

    Prompts longer than ``max_chars`` are left out: on two CPU cores their prefill would dominate
    every timing without telling anything about token routing.
    """
    import pandas as pd

    pools = []
    for folder in folders:
        path = Path(folder) / "matrix.parquet"
        if not path.is_file():
            raise ConfigError(f"{folder} is not a routing-matrix folder (no matrix.parquet)")
        df = pd.read_parquet(path, columns=["qid", "task", "split", "prompt"])
        df = df[(df["split"] == split) & (df["prompt"].str.len() <= max_chars)]
        if df.empty:
            raise ConfigError(f"{path}: no prompts in split {split!r} with at most {max_chars} characters")
        pools.append((Path(folder).name, df.sample(frac=1.0, random_state=seed)))
    out: list[PromptItem] = []
    share = [n // len(pools) + (1 if i < n % len(pools) else 0) for i in range(len(pools))]
    for (name, df), k in zip(pools, share):
        for row in df.head(k).itertuples(index=False):
            out.append(PromptItem(qid=str(row.qid), source=name, task=str(row.task), prompt=str(row.prompt)))
    return out


def fingerprint(items: list[PromptItem]) -> str:
    """sha256 over the prompts' sources, ids and texts: names the data a router was trained on."""
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.source}\x00{item.qid}\x00{item.prompt}\x01".encode())
    return h.hexdigest()


def split_validation(items: list[PromptItem], share: float, seed: int) -> tuple[list[PromptItem], list[PromptItem]]:
    """Split by prompt (never by token): a prompt's tokens all land on the same side."""
    import random

    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(items) * share)) if len(items) > 1 else 0
    val = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]
