"""The candidate policy the shadow runs: a registry version, or the policy as this deployment serves it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from core.errors import PolicyError
from core.types import ExpertInfo
from router.ledger.models import PolicyVersionRow


def registered_artifact(engine: Engine, policy: str, version: str | None) -> tuple[str, str] | None:
    """(version, artifact path) of ``policy``'s registered ``version`` — the newest one registered
    when ``version`` is None — or None when the registry holds none."""
    q = select(PolicyVersionRow.version, PolicyVersionRow.artifact_path).where(PolicyVersionRow.policy == policy)
    q = q.where(PolicyVersionRow.version == version) if version else q.order_by(PolicyVersionRow.id.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None or not row.artifact_path:
        if version:
            raise PolicyError(f"shadow: policy {policy!r} has no registered version {version!r} with an artifact")
        return None
    return row.version, row.artifact_path


def load_candidate(engine: Engine, *, policy: str, version: str | None, experts: Sequence[ExpertInfo],
                   options: Mapping[str, Any], root: Path, served: Callable[[str], Any]):
    """The candidate, bound to the live experts: the registered version's artifact (mapped to the
    experts through ``policy.options.<policy>.expert_map`` when it was trained on other models),
    else ``served(policy)`` — the policy as the deployment's policy set builds it."""
    found = registered_artifact(engine, policy, version)
    if found is None:
        return served(policy)
    from policies.artifacts import load_artifact

    path = Path(found[1]) if Path(found[1]).is_absolute() else root / found[1]
    loaded = load_artifact(path, policy=policy).policy
    live = {e.name for e in experts}
    expert_map = options.get("expert_map")
    if expert_map is None:
        if not set(loaded.expert_names) <= live:
            raise PolicyError(f"shadow: {policy} {found[0]} scores {loaded.expert_names}; set policy.options.{policy}.expert_map")
        expert_map = {m: m for m in loaded.expert_names}
    return loaded.for_experts(list(experts), dict(expert_map))
