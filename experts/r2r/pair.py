"""Building the local engine from model names (packaged GGUFs) or GGUF paths."""

from __future__ import annotations

from pathlib import Path

from core.model_files import resolve_gguf
from experts.r2r.engine import R2REngine
from experts.r2r.prompts import default_format


def load_local_engine(slm: str, llm: str, *, data_dir: Path, n_threads: int = 2, n_ctx: int = 2048, hidden: bool = False,
                      slm_format: str | None = None, llm_format: str | None = None, max_backoff: int = 4) -> R2REngine:
    """Both models in-process; ``hidden`` exposes the SLM's hidden states to the router."""
    from experts.r2r.lm import LlamaCppLM

    slm_path = resolve_gguf(slm, data_dir=data_dir)
    llm_path = resolve_gguf(llm, data_dir=data_dir)
    slm_lm = LlamaCppLM(slm_path, n_ctx=n_ctx, n_threads=n_threads, hidden=hidden, name=f"slm:{Path(slm).name}")
    llm_lm = LlamaCppLM(llm_path, n_ctx=n_ctx, n_threads=n_threads, name=f"llm:{Path(llm).name}")
    return R2REngine(slm_lm, llm_lm, slm_format=slm_format or default_format(slm), llm_format=llm_format or default_format(llm),
                     max_backoff=max_backoff)
