"""Text descriptors of models and tasks (``descriptors.yaml``) for policies that read them.

A model's descriptor is, in order of preference: its entry in ``descriptors.yaml``, the
expert's configured ``description``, or a sentence built from what is known (name, size,
prices). Task descriptions fall back to the task's name.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from core.types import ExpertInfo

DESCRIPTORS = Path(__file__).with_name("descriptors.yaml")


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return {"models": dict(raw.get("models") or {}), "tasks": dict(raw.get("tasks") or {})}


def known_models(path: Path = DESCRIPTORS) -> list[str]:
    return sorted(_load(str(path))["models"])


def model_descriptor(expert: ExpertInfo, path: Path = DESCRIPTORS) -> str:
    entry = _load(str(path))["models"].get(expert.name)
    if entry:
        return str(entry["text"] if isinstance(entry, dict) else entry).strip()
    parts = [f"Model {expert.name}."]
    if expert.description:
        parts.append(expert.description.strip())
    if expert.params_b:
        parts.append(f"{expert.params_b:g}B parameters.")
    if expert.input_usd_per_mtok or expert.output_usd_per_mtok:
        parts.append(f"Costs {expert.input_usd_per_mtok:g} USD per million input tokens and "
                     f"{expert.output_usd_per_mtok:g} per million output tokens.")
    return " ".join(parts)


def task_description(task: str, path: Path = DESCRIPTORS) -> str:
    text = _load(str(path))["tasks"].get(task)
    return str(text).strip() if text else f"Task: {task}."
