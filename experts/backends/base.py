"""What every backend offers the registry: an OpenAI-compatible base URL, start/stop, health, load."""

from __future__ import annotations

from abc import ABC, abstractmethod

from core.config import ExpertConfig
from core.contracts import LoadSnapshot


class Backend(ABC):
    """One expert's server (implements ``core.contracts.ExpertServer``). Local backends own a
    subprocess; remote ones only point at a URL."""

    #: litellm provider prefix for calls to this backend
    litellm_provider: str = "openai"

    def __init__(self, config: ExpertConfig) -> None:
        self.config = config

    @property
    @abstractmethod
    def api_base(self) -> str | None:
        """Base URL ending in ``/v1`` (None while a local server is not running)."""

    @property
    def model_id(self) -> str:
        """The model name to send upstream."""
        return self.config.model

    @property
    def api_key(self) -> str:
        return "not-needed"

    @property
    def is_local(self) -> bool:
        return False

    def is_running(self) -> bool:
        """Remote servers are not ours to watch."""
        return True

    def start(self) -> None:  # noqa: B027 - remote backends have nothing to start
        """Start the server and block until it answers (local backends)."""

    def stop(self) -> None:  # noqa: B027
        """Stop the server cleanly (local backends)."""

    def adopt(self, api_base: str, pid: int | None) -> bool:
        """Reuse a server started earlier (``expertmux experts up``); True if it is healthy."""
        return False

    def health(self, timeout: float = 2.0) -> bool:
        """True if the server answers ``GET /models``."""
        import httpx

        if not self.api_base:
            return False
        try:
            r = httpx.get(f"{self.api_base}/models", timeout=timeout, headers={"Authorization": f"Bearer {self.api_key}"})
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def load(self) -> LoadSnapshot | None:
        """Live load if the backend exposes it (vLLM ``/metrics``); None otherwise."""
        return None

    @property
    def pid(self) -> int | None:
        return None
