"""The policies a running service can use: the active one and any named one.

``policy.options.<name>`` holds a policy's hyperparameters; for a learned policy it also names
the artifact it serves and how the artifact's models map to this deployment's experts::

    policy:
      options:
        knn: {artifact: var/policies/knn/v1, expert_map: {llama-3.1-8b-instruct: smollm2-135m}}

(relative paths resolve against the project root; an artifact root without a version picks the
newest ``vN``). Simple policies are built at start-up from the experts' config; learned ones are
loaded, hash-checked and bound to the experts at start-up too, so the first request pays nothing.
A learned policy whose artifact is missing or broken is reported and left out, unless it is the
active policy, which must work for the service to start. ``reload`` loads a new artifact next
to the one being served and swaps only once it is ready: a bad artifact leaves the previous
policy serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import PolicyConfig
from core.errors import ConfigError, ModelNotFoundError, PolicyError
from core.types import ExpertInfo, RouteRequest
from policies import available_policies, create_policy
from policies.registry import get_policy_class
from router.lifecycle.exploration import Explorer

log = logging.getLogger("expertmux.policies")

RESERVED = ("artifact", "expert_map")  # option keys that are not hyperparameters


@dataclass
class PolicyStatus:
    """What an operator sees per policy: served or not, from which artifact, or why not."""

    name: str
    learned: bool
    servable: bool = False
    version: str | None = None
    artifact: str | None = None
    experts: list[str] = field(default_factory=list)
    error: str | None = None
    manifest: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        out = {"name": self.name, "learned": self.learned, "servable": self.servable, "version": self.version,
               "artifact": self.artifact, "experts": self.experts, "error": self.error}
        if self.manifest:
            m = self.manifest
            out["trained"] = {"created_at": m.get("created_at"), "data": m.get("data"), "models": m.get("models"),
                              "metrics": {k: v for k, v in (m.get("metrics") or {}).items() if k != "learned"}}
        return out


class PolicySet:
    def __init__(self, config: PolicyConfig, experts: list[ExpertInfo], *, root: Path | None = None) -> None:
        from core.settings import PROJECT_ROOT

        self.config = config
        self.experts = experts
        self.root = Path(root) if root is not None else PROJECT_ROOT
        self._policies: dict[str, Any] = {}
        self._status: dict[str, PolicyStatus] = {}
        self._lock = threading.Lock()
        self.explorer = Explorer(config.exploration) if config.exploration is not None else None
        for name in available_policies():
            cls = get_policy_class(name)
            if cls.uses_labels:
                continue  # evaluation-only (the oracle)
            self._status[name] = PolicyStatus(name=name, learned=bool(cls.requires_training))
            try:
                self._policies[name] = self._build(name)
                self._mark_served(name)
            except PolicyError as exc:
                self._status[name].error = exc.message
                if name == config.active:
                    raise ConfigError(f"the active routing policy {name!r} cannot be served: {exc.message}") from None
                if name in self.config.options:  # configured but broken: say so; unconfigured: just not offered
                    log.warning("routing policy %s is not served: %s", name, exc.message)
        if config.active not in self._status:
            raise ConfigError(f"unknown active routing policy {config.active!r}; available: {', '.join(self.names())}")

    # -- the public API used by the service ----------------------------------------------------
    @property
    def active_name(self) -> str:
        return self.config.active

    @property
    def default_lambda(self) -> float:
        return self.config.lambda_

    def names(self) -> list[str]:
        """Policies this deployment can serve (never the oracle; learned ones with a loaded artifact)."""
        return sorted(self._policies)

    def get(self, name: str):
        policy = self._policies.get(name)
        if policy is not None:
            return policy
        status = self._status.get(name)
        if status is None:
            raise ModelNotFoundError(f"unknown routing policy {name!r}; available: {', '.join(self.names())}", param="model")
        why = status.error or "not configured"
        raise ModelNotFoundError(f"routing policy {name!r} cannot be served by this deployment: {why}", param="model")

    def status(self) -> list[dict[str, Any]]:
        return [self._status[n].public() for n in sorted(self._status)]

    def pareto(self, name: str, request: RouteRequest, *, unavailable: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Predicted quality and cost of every candidate for this prompt, and the non-dominated ones."""
        return self.get(name).pareto_front(request, lambda_=self.default_lambda, unavailable=unavailable)

    def tune(self, *, active: str | None = None, lambda_: float | None = None) -> dict[str, Any]:
        """Switch the active policy and/or the default λ of the running service (in memory, at
        once for the next request). An unservable policy or a negative λ changes nothing."""
        if active is not None:
            self.get(active)  # raises ModelNotFoundError naming the servable ones
        if lambda_ is not None and not (lambda_ >= 0 and lambda_ < float("inf")):
            raise PolicyError(f"λ must be a finite number ≥ 0, not {lambda_!r}")
        with self._lock:
            update = {k: v for k, v in (("active", active), ("lambda_", lambda_)) if v is not None}
            self.config = self.config.model_copy(update=update)
        log.info("routing now uses policy %s with λ=%g", self.config.active, self.config.lambda_)
        return {"active": self.config.active, "lambda": self.config.lambda_}

    def reload(self, name: str, artifact: str | Path | None = None) -> dict[str, Any]:
        """Load ``name``'s artifact (the given one, else the configured one), bind it to the experts
        and swap it in. On any failure the policy being served stays, and PolicyError says why."""
        status = self._status.get(name)
        if status is None:
            raise ModelNotFoundError(f"unknown routing policy {name!r}", param="name")
        if not status.learned:
            raise PolicyError(f"routing policy {name!r} learns nothing: there is no artifact to load")
        options = dict(self._options(name))
        if artifact is not None:
            options["artifact"] = str(artifact)
        policy, manifest, path = self._load_learned(name, options)  # raises before anything changes
        with self._lock:
            self._policies[name] = policy
            status.artifact, status.manifest, status.error = str(path), manifest, None
            self._mark_served(name)
        log.info("routing policy %s now serves %s (%s)", name, path, policy.version)
        return status.public()

    # -- building -----------------------------------------------------------------------------
    def _options(self, name: str) -> dict[str, Any]:
        return dict(self.config.options.get(name) or {})

    def _build(self, name: str):
        if self._status[name].learned:
            options = self._options(name)
            if options.get("artifact") is None:
                raise PolicyError(f"policy {name!r} is learned: set policy.options.{name}.artifact "
                                  f"(train one with `expertmux train {name} --data DIR`)")
            policy, manifest, path = self._load_learned(name, options)
            self._status[name].artifact, self._status[name].manifest = str(path), manifest
            return policy
        params = {k: v for k, v in self._options(name).items() if k not in RESERVED}
        return create_policy(name, **params).fit(None, experts=self.experts)

    def _load_learned(self, name: str, options: Mapping[str, Any]):
        from policies.artifacts import load_artifact

        path = Path(str(options["artifact"]))
        if not path.is_absolute():
            path = self.root / path
        loaded = load_artifact(path, policy=name)
        policy = loaded.policy
        extra = sorted(set(options) - set(RESERVED))
        if extra:
            raise PolicyError(f"policy {name!r} serves a trained artifact; hyperparameters {extra} belong to "
                              f"`expertmux train {name}`, not to policy.options")
        expert_map = options.get("expert_map")
        if expert_map is None:
            live = {e.name for e in self.experts}
            if set(policy.expert_names) <= live:  # trained on the deployment's own experts
                expert_map = {m: m for m in policy.expert_names}
            elif name != "graphrouter":
                raise PolicyError(f"policy {name!r}: artifact {loaded.path} scores {policy.expert_names}; set "
                                  f"policy.options.{name}.expert_map to map them to experts {sorted(live)}")
            else:
                expert_map = {}
        bound = policy.for_experts(self.experts, dict(expert_map))
        bound.predict_quality(["warm-up: load the encoder before the first request"])
        return bound, loaded.manifest, loaded.path

    def _mark_served(self, name: str) -> None:
        st = self._status[name]
        policy = self._policies[name]
        st.servable, st.error = True, None
        st.version = policy.version
        st.experts = list(policy.expert_names)
