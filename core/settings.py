"""The one Settings object (environment prefix ``EXPERTMUX_``).

Only this module reads the environment; everything else receives values.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.config import AppConfig, load_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPERTMUX_", env_file=None, extra="ignore")

    config: Path = Field(PROJECT_ROOT / "config" / "expertmux.yaml", description="YAML file listing experts and the active policy")
    data_dir: Path = Field(PROJECT_ROOT / "var", description="runtime state: SQLite ledger, expert state, caches")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    host: str = "127.0.0.1"
    port: int = 8080
    prompt_storage: Literal["full", "hash", "none"] = "full"
    max_prompt_chars: int = Field(32_000, gt=0, description="longer prompts are rejected with 400")
    max_body_bytes: int = Field(1_000_000, gt=0)
    default_max_tokens: int = Field(256, gt=0, description="used for cost estimates when a request sets no max_tokens")
    reserve_template_tokens: int = Field(64, ge=0, description="budget reservations: tokens a chat template may add to a "
                                         "request (default system prompt, generation prompt) when the expert's tokenizer is not local")
    reserve_tokens_per_message: int = Field(8, ge=0, description="budget reservations: tokens a chat template may add per message")
    reserve_tokens_per_attachment: int = Field(2048, ge=0, description="budget reservations: tokens reserved per image, audio "
                                               "or file part of a message")
    features_off_loop: bool = Field(True, description="learned policies' prompt features (an encoder's forward pass) are "
                                    "computed in a worker thread, batched across requests; false: inside decide, on the event loop")
    gc_freeze: bool = Field(True, description="`expertmux serve`: once started, move every object alive (modules, models, "
                            "config) out of the garbage collector's reach (gc.freeze), so its full collections, which "
                            "pause the event loop, only walk what requests allocate")
    event_loop: Literal["asyncio", "uvloop"] = Field("asyncio", description="`expertmux serve`'s event loop. asyncio's "
                                                      "serves a burst of new connections in turn with the open ones; "
                                                      "uvloop's left them waiting behind the open ones under load "
                                                      "(p99 at 100 clients 4.5x p50 against 1.4x: docs/reliability.md)")
    max_attempts: int = Field(3, ge=1, description="experts tried per request (fallback before the first byte)")
    stream_resume: bool = Field(False, description="an upstream that fails mid-stream: the next expert of the ranking is "
                                "given the partial answer and continues it in the same stream (else the stream ends "
                                "with an error event)")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that open an expert's circuit breaker")
    breaker_reset_s: float = Field(10.0, gt=0, description="seconds an open breaker waits before letting a probe through")
    ledger_batch_size: int = Field(256, gt=0)
    ledger_spool_bytes: int = Field(256 * 1024 * 1024, ge=0, description="disk spool for rows the database cannot take; 0 = off")
    autostart_experts: bool = Field(True, description="start local (llama.cpp / vLLM) experts with the proxy")
    shutdown_grace_s: float = Field(60.0, gt=0, description="on SIGTERM, how long in-flight requests may take to finish")
    supervise_interval_s: float = Field(2.0, ge=0, description="how often dead local experts are restarted; 0 = never")
    auto_migrate: bool = Field(True, description="apply ledger migrations when the proxy starts")
    log_level: str = "info"
    require_api_keys: bool | None = Field(None, description="default: keys required unless the proxy listens on loopback only")
    admin_token: SecretStr | None = Field(None, description="bearer token of the admin API and dashboard; unset = admin API off")
    key_cache_ttl_s: float = Field(5.0, ge=0, description="how long a key lookup is cached (revocation delay)")
    key_hash_secret: SecretStr | None = Field(None, description="server secret API keys are hashed with (HMAC-SHA256); unset: "
                                              "generated once into data_dir/key-hash.secret (0600). Replicas sharing a "
                                              "database need the same value")
    metrics_auth: bool | None = Field(None, description="require a token for /metrics and /healthz/details; default: required "
                                      "unless the proxy listens on loopback only")
    metrics_token: SecretStr | None = Field(None, description="bearer token a Prometheus scraper sends for /metrics and "
                                            "/healthz/details (the admin token works too)")
    registry_poll_s: float = Field(5.0, ge=0, description="how often the policy registry's active versions are applied; 0 = never")
    autolearn: bool | None = Field(None, description="run the config's autolearn job in this process; default: as the config says "
                                                    "(set false on all replicas but one)")

    @property
    def auth_required(self) -> bool:
        """Keyless serving is for local use only: any other deployment requires keys."""
        if self.require_api_keys is not None:
            return self.require_api_keys or not _is_loopback(self.host)
        return not _is_loopback(self.host)

    @property
    def metrics_auth_required(self) -> bool:
        """Metrics name every expert, policy and their traffic: off loopback they need a token."""
        return self.metrics_auth if self.metrics_auth is not None else not _is_loopback(self.host)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'expertmux.db').resolve()}"

    @cached_property
    def app_config(self) -> AppConfig:
        return load_config(self.config)

    def secret(self, env_var: str | None) -> str | None:
        """Secrets named in the config (e.g. a remote expert's API key) are read here, once."""
        return os.environ.get(env_var) if env_var else None
