"""Backends that run (or point at) an OpenAI-compatible server for one expert."""

from __future__ import annotations

from core.config import ExpertConfig
from core.errors import ConfigError
from experts.backends.base import Backend


def make_backend(config: ExpertConfig, *, data_dir, api_key: str | None = None) -> Backend:
    """Pick the backend class for an expert; imports stay lazy per backend."""
    if config.backend == "llamacpp":
        from experts.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(config, data_dir=data_dir)
    if config.backend == "vllm":
        from experts.backends.vllm import VllmBackend

        return VllmBackend(config, data_dir=data_dir)
    if config.backend == "remote":
        from experts.backends.remote import RemoteBackend

        return RemoteBackend(config, api_key=api_key)
    if config.backend == "r2r":
        from experts.backends.r2r import R2RBackend

        return R2RBackend(config, data_dir=data_dir, api_key=api_key)
    raise ConfigError(f"expert {config.name!r}: unknown backend {config.backend!r}")
