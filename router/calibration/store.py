"""The on-disk state of one calibration folder: its prompt set and an append-only log of cells.

``prompts.jsonl`` freezes the prompt set the first time a folder is used and only grows (a rerun
with a larger ``--limit`` or an edited prompt file adds the new rows, never drops or changes the
old ones, so cells already graded keep meaning the same thing). ``cells.jsonl`` gets one line per
finished cell, flushed and fsync'd before the next one is recorded: a crash or Ctrl-C loses at
most the cells in flight. A torn last line (the process died mid-write) is ignored on reading.

A cell is one (prompt, expert) outcome. Its ``status`` says what a rerun does with it:

* ``ok``: graded; never recomputed;
* ``grade_error``: the expert answered but the grader could not judge (NaN with the reason);
  a rerun grades the stored answer again without calling the expert;
* ``call_error``: the expert failed (down, timeout, refused the prompt); a rerun calls it again.

The latest line for a (qid, expert) pair wins.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from router.calibration.items import PromptItem

PROMPTS, CELLS, RUN, RUNS = "prompts.jsonl", "cells.jsonl", "run.json", "runs.jsonl"
OK, GRADE_ERROR, CALL_ERROR = "ok", "grade_error", "call_error"


@dataclass
class Cell:
    qid: str
    expert: str
    status: str  # ok | grade_error | call_error
    score: float | None = None
    grader: str | None = None
    answer: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float | None = None
    logprobs: list[list[Any]] | None = None  # [[token, logprob], ...] of the answer, where the expert returns them
    error: str | None = None
    finished_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the judge's reply, the feedback source

    @property
    def answered(self) -> bool:
        return self.status in (OK, GRADE_ERROR)

    def to_line(self) -> str:
        data = asdict(self)
        if data["score"] is not None and math.isnan(data["score"]):
            data["score"] = None
        return json.dumps({k: v for k, v in data.items() if v not in (None, {}, [])}, ensure_ascii=False)


def _append_fsync(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line from a crash mid-write: that cell was not finished
    return out


class CellStore:
    """The prompt set and the cell log of one output folder (thread-safe appends)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self._lock = threading.Lock()

    @property
    def cells_path(self) -> Path:
        return self.dir / CELLS

    @property
    def prompts_path(self) -> Path:
        return self.dir / PROMPTS

    # ---- prompts ---------------------------------------------------------------------------------
    def prompts(self) -> list[PromptItem]:
        return [PromptItem.from_json(row) for row in _read_jsonl(self.prompts_path)]

    def add_prompts(self, items: list[PromptItem]) -> list[PromptItem]:
        """Append the items whose qid the folder does not have yet; returns the whole set."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            have = self.prompts()
            known = {it.qid for it in have}
            new = [it for it in items if it.qid not in known]
            if new:
                self._repair_tail(self.prompts_path)
                _append_fsync(self.prompts_path, [json.dumps(it.to_json(), ensure_ascii=False) for it in new])
            return have + new

    # ---- cells -----------------------------------------------------------------------------------
    def cells(self) -> dict[tuple[str, str], Cell]:
        """The latest cell per (qid, expert)."""
        latest: dict[tuple[str, str], Cell] = {}
        for row in _read_jsonl(self.cells_path):
            try:
                cell = Cell(**row)
            except TypeError:
                continue
            latest[(cell.qid, cell.expert)] = cell
        return latest

    def append(self, cell: Cell) -> None:
        """Record one finished cell durably (flush + fsync) before returning."""
        line = cell.to_line()
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            _append_fsync(self.cells_path, [line])

    def open_for_append(self) -> None:
        """Before a run appends: end a torn last line (a crash mid-write) so the next record
        starts on a line of its own."""
        with self._lock:
            self._repair_tail(self.cells_path)

    @staticmethod
    def _repair_tail(path: Path) -> None:
        if not path.exists() or path.stat().st_size == 0:
            return
        with path.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())

    # ---- run metadata ----------------------------------------------------------------------------
    def write_run(self, info: dict[str, Any]) -> None:
        """``run.json``: the last run's state (running | done | budget | interrupted | failed) and
        figures; a finished run is also appended to ``runs.jsonl``, the folder's history."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / (RUN + ".tmp")
        tmp.write_text(json.dumps(info, indent=1, default=str))
        os.replace(tmp, self.dir / RUN)
        if info.get("state") != "running":
            with (self.dir / RUNS).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(info, default=str) + "\n")

    def runs(self) -> list[dict[str, Any]]:
        """Every finished run of this folder, oldest first."""
        return _read_jsonl(self.dir / RUNS)

    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / RUN).read_text())
        except (OSError, ValueError):
            return {}
