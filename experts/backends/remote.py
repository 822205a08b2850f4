"""An expert that already runs elsewhere: any OpenAI-compatible base URL or litellm provider model."""

from __future__ import annotations

from core.config import ExpertConfig
from experts.backends.base import Backend


class RemoteBackend(Backend):
    """``endpoint`` set: an OpenAI-compatible server. Otherwise ``model`` is a litellm model string
    such as ``anthropic/claude-…`` and litellm picks the provider."""

    def __init__(self, config: ExpertConfig, *, api_key: str | None = None) -> None:
        super().__init__(config)
        self._api_key = api_key
        if not config.endpoint and "/" in config.model:
            self.litellm_provider = ""  # the model string carries its provider

    @property
    def api_base(self) -> str | None:
        return self.config.endpoint.rstrip("/") if self.config.endpoint else None

    @property
    def api_key(self) -> str:
        return self._api_key or "not-needed"

    def health(self, timeout: float = 2.0) -> bool:
        return super().health(timeout) if self.api_base else True
