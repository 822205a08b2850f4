"""A real R2R router for the tests, trained with ``expertmux train r2r`` on the packaged local pair.

Routers are not part of the repository: they are trained on the machine that serves them, into
the data folder. The tests do the same, once per session, with settings small enough to take
well under two minutes on two cores yet large enough to give both label classes (tokens the
LLM agrees with and tokens judged divergent). No ``--out``: the command writes to its default
folder, which is where an ``r2r`` expert without ``r2r.router`` looks, so every test that uses
this router also checks that the two agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.settings import PROJECT_ROOT
from experts.r2r.artifact import MANIFEST, pair_router_dir, resolve_artifact_dir

SLM = "smollm2-135m-instruct"
LLM = "gemma3-270m"

# 8 short prompts (6 train, 2 validation), 24-token references, 3 judged positions per prompt
# with the lexical judge (no sentence encoder to load), 60 epochs: ~200 labelled positions, a
# dozen of them divergent; ~30 s with the Gemma weights' first assembly. One thread: when another
# job holds a core, llama.cpp's two threads wait on each other and the same run takes minutes.
TRAIN_ARGS = ["--n-prompts", "8", "--max-prompt-chars", "400", "--gen-tokens", "24", "--judge-tokens", "8",
              "--points", "3", "--judge", "lexical", "--epochs", "60", "--n-threads", "1", "--seed", "0"]


@dataclass(frozen=True, slots=True)
class TrainedRouter:
    data_dir: Path  # the data folder it was trained into
    folder: Path  # pair_router_dir(data_dir, SLM, LLM): the versions folder
    path: Path  # the version the command wrote
    manifest: dict
    seconds: float  # wall time of the training command

    def install(self, data_dir: Path) -> Path:
        """Copy the router into another data folder's default place; returns that folder."""
        target = pair_router_dir(data_dir, SLM, LLM)
        shutil.copytree(self.folder, target)
        return target


def expertmux_command() -> list[str]:
    exe = PROJECT_ROOT / ".venv" / "bin" / "expertmux"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli"]


def train_router(data_dir: Path, prompts: Path, *, timeout_s: float = 900) -> TrainedRouter:
    """Run ``expertmux train r2r`` with its default output folder inside ``data_dir``."""
    cmd = [*expertmux_command(), "train", "r2r", "--slm", SLM, "--llm", LLM, "--prompts", str(prompts), *TRAIN_ARGS]
    env = {**os.environ, "EXPERTMUX_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"expertmux train r2r failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    folder = pair_router_dir(data_dir, SLM, LLM)
    path = resolve_artifact_dir(folder)  # the command wrote a version into its default folder
    manifest = json.loads((path / MANIFEST).read_text())
    labels = manifest["data"]["labels"]
    assert labels["agree"] > 0 and labels["divergent"] > 0, f"a single label class: {labels}"
    assert manifest["models"]["slm"] == SLM and manifest["models"]["llm"] == LLM
    return TrainedRouter(data_dir=data_dir, folder=folder, path=path, manifest=manifest, seconds=seconds)
