"""The policies a running service can use: the active one and any named one, built on demand."""

from __future__ import annotations

import threading

from policies import available_policies, create_policy
from router.config import PolicyConfig
from router.errors import ModelNotFoundError, PolicyError
from router.types import ExpertInfo


class PolicySet:
    def __init__(self, config: PolicyConfig, experts: list[ExpertInfo]) -> None:
        self.config = config
        self.experts = experts
        self._policies: dict = {}
        self._lock = threading.Lock()
        self.get(config.active)  # fail at start-up, not on the first request, if misconfigured

    @property
    def active_name(self) -> str:
        return self.config.active

    @property
    def default_lambda(self) -> float:
        return self.config.lambda_

    def names(self) -> list[str]:
        return available_policies()

    def get(self, name: str):
        policy = self._policies.get(name)
        if policy is not None:
            return policy
        if name not in available_policies():
            raise ModelNotFoundError(f"unknown routing policy {name!r}; available: {', '.join(available_policies())}",
                                     param="model")
        with self._lock:
            if name not in self._policies:
                params = self.config.options.get(name, {})
                try:
                    self._policies[name] = create_policy(name, **params).fit(None, experts=self.experts)
                except PolicyError as exc:
                    raise ModelNotFoundError(f"routing policy {name!r} cannot be served by this deployment: {exc.message}",
                                             param="model") from exc
            return self._policies[name]
