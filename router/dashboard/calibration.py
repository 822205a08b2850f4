"""The calibration matrix as the dashboard shows it: per expert, and per skill × expert, the mean
graded quality, cost and latency of the experts' own answers (``router.calibration`` writes the
matrix; this module only reads it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(vals) / len(vals), 6) if vals else None


def calibration_summary(folder: str | Path) -> dict[str, Any] | None:
    """None while no matrix exists; else its experts, skills and the per-cell means."""
    import pandas as pd

    path = Path(folder) / "matrix.parquet"
    if not path.exists():
        return None
    df = pd.read_parquet(path)
    experts = [c.removeprefix("score::") for c in df.columns if c.startswith("score::")]

    def stats(rows) -> dict[str, dict[str, Any]]:
        out = {}
        for e in experts:
            score = rows[f"score::{e}"]
            out[e] = {"quality": _mean(score), "graded": int(score.notna().sum()),
                      "cost_usd": _mean(rows[f"cost_usd::{e}"]) if f"cost_usd::{e}" in rows else None,
                      "latency_s": _mean(rows[f"latency_s::{e}"]) if f"latency_s::{e}" in rows else None}
        return out

    skills = sorted(df["task"].astype(str).unique()) if "task" in df else []
    return {
        "folder": str(Path(folder)), "rows": int(len(df)), "experts": experts, "skills": skills,
        "splits": {str(k): int(v) for k, v in df["split"].value_counts().items()} if "split" in df else {},
        "overall": stats(df),
        "per_skill": {s: stats(df[df["task"].astype(str) == s]) for s in skills},
    }
