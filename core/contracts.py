"""The two contracts the layers meet at: what a routing policy offers the request path, and what
an expert's server offers the registry. ``policies.base.Policy`` and ``experts.backends.Backend``
implement them; the request path and the lifecycle code are written against them, so neither
``policies`` nor ``experts`` needs to know the other exists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from core.types import Decision, ExpertInfo, RouteRequest


@runtime_checkable
class QueryPolicy(Protocol):
    """A query-level routing policy (scikit-learn estimator rules: hyperparameters in the
    constructor, ``fit`` returns self, learned state ends in ``_``).

    ``predict_quality`` returns one row per prompt and one column per expert of
    ``expert_names``; ``decide`` turns it into a decision under λ (quality points one is willing
    to pay 1 USD for) and the request's constraints, with every candidate's propensity.
    """

    name: str
    version: str

    def get_params(self, deep: bool = False) -> dict[str, Any]: ...

    def fit(self, train: Any = None, *, experts: Sequence[ExpertInfo] | None = None) -> QueryPolicy: ...

    @property
    def expert_names(self) -> list[str]: ...

    def predict_quality(self, prompts: Sequence[str]) -> Any: ...

    def decide(self, request: RouteRequest, *, lambda_: float = 0.0,
               unavailable: frozenset[str] = frozenset()) -> Decision: ...

    def for_experts(self, experts: Sequence[ExpertInfo], expert_map: Mapping[str, str]) -> QueryPolicy: ...


@dataclass(slots=True)
class LoadSnapshot:
    """Live load of one expert server (what the load-aware request path reads)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float | None = None


@runtime_checkable
class ExpertServer(Protocol):
    """One expert's OpenAI-compatible server: local (a subprocess it owns) or remote (a URL)."""

    litellm_provider: str

    @property
    def api_base(self) -> str | None: ...

    @property
    def model_id(self) -> str: ...

    @property
    def is_local(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self, timeout: float = 2.0) -> bool: ...

    def load(self) -> LoadSnapshot | None: ...
