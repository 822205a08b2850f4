"""Name → policy class, imported lazily so unused policies cost nothing at start-up."""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import PolicyError

# name -> "module:Class". Add a policy by adding a line; the module is imported on first use.
_POLICIES: dict[str, str] = {
    "fixed": "policies.simple:FixedPolicy",
    "random": "policies.simple:RandomPolicy",
    "cheapest": "policies.simple:CheapestPolicy",
    "strongest": "policies.simple:StrongestPolicy",
    "prior": "policies.simple:PriorPolicy",
    "best_single": "policies.simple:BestSinglePolicy",
    "oracle": "policies.oracle:OraclePolicy",
    "knn": "policies.knn:KNNPolicy",
    "mlp": "policies.mlp:MLPPolicy",
    "mf": "policies.mf:MFPolicy",
    "coe": "policies.coe:ClassifierCoEPolicy",
    "coe_cluster": "policies.coe:ClusterCoEPolicy",
    "tryage": "policies.tryage:TryagePolicy",
    "graphrouter": "policies.graphrouter:GraphRouterPolicy",
    "cascade": "policies.cascade:CascadePolicy",
    "cascade_route": "policies.cascade:CascadeRoutePolicy",
    "cascade_threshold": "policies.cascade:CascadeThresholdPolicy",
    "probe": "policies.probe:ProbePolicy",
    "irt": "policies.irt:IRTPolicy",
    "rank": "policies.rank:RankPolicy",
}

# What `expertmux eval` runs when no --policies are given (the baselines every comparison has).
BASELINES: tuple[str, ...] = ("random", "cheapest", "best_single", "oracle", "knn", "mlp", "mf")
# The seed policies of the papers (DESIGN.md §4), compared against the baselines.
SEED_POLICIES: tuple[str, ...] = ("coe", "coe_cluster", "tryage", "graphrouter")


def available_policies() -> list[str]:
    return sorted(_POLICIES)


def register_policy(name: str, target: str) -> None:
    """Register an extra policy as ``"module:Class"`` (plugins, tests)."""
    _POLICIES[name] = target


def get_policy_class(name: str) -> type:
    try:
        target = _POLICIES[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; available: {', '.join(available_policies())}") from None
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def create_policy(name: str, **params: Any):
    cls = get_policy_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise PolicyError(f"bad parameters for policy {name!r}: {exc}") from exc
