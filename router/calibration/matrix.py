"""A calibration folder as a routing matrix (``matrix.parquet`` + ``models.json``), and its status.

The matrix is the shared format (``docs/calibration.md``, ``../shared/data/README.md``): ``qid``,
``dataset``, ``task`` (the skill), ``split``, ``prompt`` (the text the proxy routes on), per
expert ``score::``, ``cost_usd::``, ``latency_s::``, ``output_tokens::``, ``answer::``,
``logprobs::`` (JSON ``[[token, logprob], ...]``) and ``error::`` (why a cell is NaN), then
``grader`` and ``reference``. Every configured expert with at least one cell gets its columns;
a prompt no expert could answer yet is left out (a policy needs a candidate on every row).

The split is seeded and stratified by skill: within each skill, prompts are ranked by a hash of
(seed, qid) and the first ``test_share`` of them are ``test``. A prompt added later falls where its
hash puts it, so growing a folder moves few rows between splits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.types import ExpertInfo
from router.calibration.items import PromptItem
from router.calibration.store import CALL_ERROR, OK, Cell, CellStore

MATRIX, MODELS = "matrix.parquet", "models.json"
NOTE = ("expertmux calibration: every configured expert answered the same graded prompts through the proxy's expert "
        "client (temperature 0); score from the row's grader (NaN with error::<expert> when it could not be graded), "
        "cost_usd from the answer's real token counts × the configured prices.")


def assign_splits(items: Sequence[PromptItem], *, test_share: float = 0.3, seed: int = 0) -> dict[str, str]:
    """qid → train | test, stratified by skill (round(test_share × n) test rows per skill)."""
    by_skill: dict[str, list[str]] = defaultdict(list)
    for it in items:
        by_skill[it.skill].append(it.qid)
    out = {}
    for qids in by_skill.values():
        ranked = sorted(qids, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest())
        n_test = int(math.floor(test_share * len(ranked) + 0.5)) if len(ranked) > 1 else 0
        for i, q in enumerate(ranked):
            out[q] = "test" if i < n_test else "train"
    return out


def _expert_meta(info: ExpertInfo) -> dict[str, Any]:
    return {"params_b": info.params_b, "input_usd_per_mtok": info.input_usd_per_mtok,
            "output_usd_per_mtok": info.output_usd_per_mtok, "context_window": info.context_window,
            "description": info.description, "tags": list(info.tags), "prior_quality": info.prior_quality,
            "release_date": info.release_date}


def build_frame(items: Sequence[PromptItem], cells: dict[tuple[str, str], Cell], experts: Sequence[str],
                *, test_share: float = 0.3, seed: int = 0):
    """The matrix as a pandas DataFrame (rows: prompts with at least one score)."""
    import pandas as pd

    splits = assign_splits(items, test_share=test_share, seed=seed)
    rows = []
    for it in items:
        row: dict[str, Any] = {"qid": it.qid, "dataset": it.dataset, "task": it.skill, "split": splits[it.qid],
                               "prompt": it.routing_text()}
        scored = False
        for e in experts:
            c = cells.get((it.qid, e))
            score = c.score if c is not None and c.status == OK and c.score is not None else float("nan")
            scored |= not math.isnan(score)
            answered = c is not None and c.status != CALL_ERROR
            row[f"score::{e}"] = score
            row[f"cost_usd::{e}"] = c.cost_usd if answered else float("nan")
            row[f"latency_s::{e}"] = c.latency_s if answered and c.latency_s is not None else float("nan")
            row[f"output_tokens::{e}"] = float(c.output_tokens) if answered else float("nan")
            row[f"answer::{e}"] = c.answer if c is not None else None
            row[f"logprobs::{e}"] = json.dumps(c.logprobs) if c is not None and c.logprobs else None
            row[f"error::{e}"] = (c.error or None) if c is not None else "not calibrated yet"
        row["grader"] = it.grader
        row["reference"] = it.reference
        if scored:
            rows.append(row)
    columns = ["qid", "dataset", "task", "split", "prompt"]
    for kind in ("score", "cost_usd", "latency_s", "output_tokens", "answer", "logprobs", "error"):
        columns += [f"{kind}::{e}" for e in experts]
    return pd.DataFrame(rows, columns=columns + ["grader", "reference"])


def write_matrix(out_dir: str | Path, *, experts: Sequence[ExpertInfo], test_share: float = 0.3, seed: int = 0,
                 extra_meta: dict[str, dict[str, Any]] | None = None) -> Path | None:
    """Write ``matrix.parquet`` and ``models.json`` from the folder's prompts and cells.

    Columns: the given (configured) experts that have at least one cell, in config order.
    ``models.json`` keeps entries of experts written earlier and refreshes the given ones.
    Returns the matrix path, or None when no prompt has a score yet (nothing is written)."""
    store = CellStore(out_dir)
    items, cells = store.prompts(), store.cells()
    with_cells = {e for _, e in cells}
    names = [i.name for i in experts if i.name in with_cells]
    df = build_frame(items, cells, names, test_share=test_share, seed=seed)
    if df.empty:
        return None
    out = Path(out_dir)
    tmp = out / (MATRIX + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out / MATRIX)
    models_path = out / MODELS
    try:
        meta = json.loads(models_path.read_text())
    except (OSError, ValueError):
        meta = {}
    models = dict(meta.get("models") or {})
    for info in experts:
        if info.name in names:
            models[info.name] = {**_expert_meta(info), **((extra_meta or {}).get(info.name) or {})}
    models_path.write_text(json.dumps({"models": models, "note": NOTE, "test_share": test_share, "seed": seed}, indent=1))
    return out / MATRIX


# ---- status: what the CLI summary, the background job and the dashboard read ------------------
@dataclass
class SkillCell:
    n: int  # prompts with a score
    quality: float | None  # mean score
    cost_usd: float | None  # mean cost per answered prompt
    latency_s: float | None


@dataclass
class CalibrationStatus:
    out_dir: Path
    prompts: int
    experts: dict[str, dict[str, int]]  # expert → {graded, grade_errors, call_errors, pending}
    skills: dict[str, dict[str, SkillCell]] = field(default_factory=dict)  # skill → expert → figures
    overall: dict[str, SkillCell] = field(default_factory=dict)  # expert → figures over all skills
    run: dict[str, Any] = field(default_factory=dict)  # the last run's run.json
    matrix: Path | None = None

    @property
    def complete(self) -> bool:
        return bool(self.experts) and all(v["pending"] == 0 and v["call_errors"] == 0 for v in self.experts.values())


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def load_status(out_dir: str | Path, experts: Sequence[str] | None = None) -> CalibrationStatus:
    """Counts per expert and per-skill quality, cost and latency of a calibration folder (cheap:
    reads the JSONL files only). ``experts`` default: every expert with a cell."""
    store = CellStore(out_dir)
    items, cells = store.prompts(), store.cells()
    names = list(experts) if experts is not None else sorted({e for _, e in cells})
    counts = {e: {"graded": 0, "grade_errors": 0, "call_errors": 0, "pending": 0} for e in names}
    acc: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        for e in names:
            c = cells.get((it.qid, e))
            if c is None:
                counts[e]["pending"] += 1
                continue
            key = {"ok": "graded", "grade_error": "grade_errors"}.get(c.status, "call_errors")
            counts[e][key] += 1
            if c.status == OK and c.score is not None:
                for skill in (it.skill, "*"):
                    a = acc[(skill, e)]
                    a["q"].append(c.score)
                    a["c"].append(c.cost_usd)
                    if c.latency_s is not None:
                        a["l"].append(c.latency_s)
    table: dict[str, dict[str, SkillCell]] = defaultdict(dict)
    for (skill, e), a in sorted(acc.items()):
        table[skill][e] = SkillCell(len(a["q"]), _mean(a["q"]), _mean(a["c"]), _mean(a["l"]))
    overall = table.pop("*", {})
    matrix = Path(out_dir) / MATRIX
    return CalibrationStatus(out_dir=Path(out_dir), prompts=len(items), experts=counts, skills=dict(table),
                             overall=overall, run=store.read_run(), matrix=matrix if matrix.exists() else None)
