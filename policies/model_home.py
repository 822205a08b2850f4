"""Where models made on this machine live: ``<data_dir>/models``.

The packaged GGUFs converted for the activation probes (``policies.activations``) and the static
encoder distilled from MiniLM (``policies.static_encoder``) are derived once and reused by every
process sharing the data folder. The composition root (CLI command, service, benchmark) sets the
folder once; without it, the project's ``var/``.
"""

from __future__ import annotations

from pathlib import Path

_DATA_DIR: list[Path | None] = [None]


def configure_model_home(*, data_dir: str | Path | None) -> None:
    """Set the data folder whose ``models/`` holds derived models; composition root only."""
    _DATA_DIR[0] = Path(data_dir) if data_dir is not None else None


def data_dir() -> Path:
    if _DATA_DIR[0] is not None:
        return _DATA_DIR[0]
    from core.settings import PROJECT_ROOT

    return PROJECT_ROOT / "var"


def models_dir() -> Path:
    return data_dir() / "models"
