"""The policy registry: trained versions of each learned policy, which one serves, and why.

A version is a trained artifact (``var/policies/<name>/vN``, see ``policies.artifacts``) entered
in the ledger's ``policy_versions`` table with its metrics and provenance. Its name is the one
decisions record as ``requests.policy_version`` (``v3-1a2b3c4d``: manifest version and the first
hex digits of the weights' sha256), so ledger rows join to the version that made them.

At most one version per policy is active. ``promote`` makes a candidate active only if it passes
a gate (``router.lifecycle.gate``: by default the metrics both manifests recorded on a common
split); ``force=True`` overrides a refusal and needs a reason. ``rollback`` re-activates the
version that was active before the current one was promoted (or none: the service then serves
the artifact named in the config). Every registration, promotion, refusal and rollback is a
``policy_events`` row (who, when, why, the gate's comparison). Running services poll the active
versions (``router.lifecycle.sync``) and swap artifacts without a restart.

Every function takes ``db`` first: an Engine, a database URL, or a Session (then the caller's
transaction is used and the caller commits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from core.errors import InvalidRequestError, NotFoundError, PolicyError
from router.ledger.models import PolicyEventRow, PolicyVersionRow


@dataclass(frozen=True)
class PolicyVersion:
    policy: str
    version: str
    created_at: datetime
    artifact_path: str | None
    active: bool
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    hyperparameters: dict[str, Any]
    data_fingerprint: str | None
    promoted_at: datetime | None

    @classmethod
    def from_row(cls, r: PolicyVersionRow) -> PolicyVersion:
        return cls(policy=r.policy, version=r.version, created_at=r.created_at, artifact_path=r.artifact_path,
                   active=bool(r.active), metrics=dict(r.metrics or {}), provenance=dict(r.provenance or {}),
                   hyperparameters=dict(r.hyperparameters or {}), data_fingerprint=r.data_fingerprint,
                   promoted_at=r.promoted_at)

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["promoted_at"] = self.promoted_at.isoformat() if self.promoted_at else None
        return out


@dataclass(frozen=True)
class Promotion:
    """The outcome of ``promote`` or ``rollback``."""

    policy: str
    action: str  # promote | refuse | rollback
    version: str | None  # active after the call (refuse: the candidate that was refused)
    previous: str | None  # active before the call
    reason: str
    forced: bool = False
    gate: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return self.action in ("promote", "rollback")


# A gate compares a candidate with the active version (None: nothing active) and says whether it may serve.
Gate = Callable[[PolicyVersion, PolicyVersion | None], Any]


@contextmanager
def _session(db: Engine | Session | str) -> Iterator[Session]:
    if isinstance(db, Session):
        yield db
        db.flush()
        return
    engine = db
    if isinstance(db, str):
        from router.ledger.db import make_engine

        engine = make_engine(db)
    try:
        with Session(engine) as session, session.begin():
            yield session
    finally:
        if isinstance(db, str):
            engine.dispose()


def _now() -> datetime:
    return datetime.now(UTC)


def _event(session: Session, *, policy: str, action: str, version: str | None, previous: str | None = None,
           actor: str | None = None, reason: str | None = None, forced: bool = False,
           gate: dict[str, Any] | None = None) -> None:
    session.add(PolicyEventRow(created_at=_now(), policy=policy, action=action, version=version, previous_version=previous,
                               actor=actor, reason=reason, forced=forced, gate=gate))


def _row(session: Session, policy: str, version: str) -> PolicyVersionRow:
    """The version row; ``v3`` stands for ``v3-<hash>`` when only one version of that number exists."""
    rows = list(session.scalars(select(PolicyVersionRow).where(
        PolicyVersionRow.policy == policy,
        (PolicyVersionRow.version == version) | PolicyVersionRow.version.startswith(f"{version}-", autoescape=True))))
    exact = [r for r in rows if r.version == version]
    if exact or len(rows) == 1:
        return (exact or rows)[0]
    if rows:
        raise InvalidRequestError(f"version {version!r} of policy {policy!r} is ambiguous: {sorted(r.version for r in rows)}",
                                  param="version")
    raise NotFoundError(f"policy {policy!r} has no registered version {version!r}", param="version")


def _active_row(session: Session, policy: str) -> PolicyVersionRow | None:
    return session.scalar(select(PolicyVersionRow).where(PolicyVersionRow.policy == policy, PolicyVersionRow.active))


# ---- registering and reading ------------------------------------------------------------------
def register(db: Engine | Session | str, policy: str, artifact_path: str | Path, metrics: dict[str, Any] | None = None,
             provenance: dict[str, Any] | None = None, *, actor: str | None = None) -> str:
    """Enter a trained artifact as a version of ``policy`` (not active yet); returns the version.

    The artifact is verified first (manifest, sha256 of its weights, the policy it holds).
    ``metrics`` default to the manifest's; ``provenance`` (e.g. ``{"source": "ledger", "since":
    ..., "rows": ...}``; default: the manifest's ``extra.provenance``) is stored next to the
    manifest's data summary. Registering the same artifact again returns its existing version.
    """
    from policies.artifacts import WEIGHTS, verify

    folder, manifest = verify(artifact_path)
    if manifest["policy"] != policy:
        raise PolicyError(f"policy artifact {folder}: holds policy {manifest['policy']!r}, not {policy!r}")
    version = f"{manifest['version']}-{manifest['files'][WEIGHTS]['sha256'][:8]}"
    data = manifest.get("data") or {}
    if provenance is None:  # e.g. a policy trained from the ledger records its slice in the manifest
        provenance = dict(((manifest.get("extra") or {}).get("provenance")) or {})
    with _session(db) as session:
        existing = session.scalar(select(PolicyVersionRow).where(PolicyVersionRow.policy == policy,
                                                                 PolicyVersionRow.version == version))
        if existing is not None:
            return version
        session.add(PolicyVersionRow(
            policy=policy, version=version, created_at=_now(), hyperparameters=manifest.get("hyperparameters") or {},
            data_fingerprint=(data.get("fingerprint") if isinstance(data, dict) else None),
            metrics=metrics if metrics is not None else (manifest.get("metrics") or {}),
            artifact_path=str(Path(folder).resolve()), active=False,
            provenance={"artifact_created_at": manifest.get("created_at"), "data": data, **(provenance or {})}))
        _event(session, policy=policy, action="register", version=version, actor=actor,
               reason=(provenance or {}).get("reason") if isinstance(provenance, dict) else None)
    return version


def list_versions(db: Engine | Session | str, policy: str | None = None) -> list[PolicyVersion]:
    """Registered versions, oldest first (all policies when ``policy`` is None)."""
    with _session(db) as session:
        stmt = select(PolicyVersionRow).order_by(PolicyVersionRow.policy, PolicyVersionRow.id)
        if policy is not None:
            stmt = stmt.where(PolicyVersionRow.policy == policy)
        return [PolicyVersion.from_row(r) for r in session.scalars(stmt)]


def get_version(db: Engine | Session | str, policy: str, version: str) -> PolicyVersion:
    with _session(db) as session:
        return PolicyVersion.from_row(_row(session, policy, version))


def active(db: Engine | Session | str, policy: str) -> PolicyVersion | None:
    """The version of ``policy`` that serves, or None (the service serves the configured artifact)."""
    with _session(db) as session:
        row = _active_row(session, policy)
        return PolicyVersion.from_row(row) if row is not None else None


def active_versions(db: Engine | Session | str) -> dict[str, tuple[str, str | None]]:
    """{policy: (version, artifact_path)} of every active version: the services' cheap poll."""
    with _session(db) as session:
        rows = session.execute(select(PolicyVersionRow.policy, PolicyVersionRow.version, PolicyVersionRow.artifact_path)
                               .where(PolicyVersionRow.active))
        return {p: (v, a) for p, v, a in rows}


def history(db: Engine | Session | str, policy: str | None = None, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest registry events first: action, version, previous version, who, when, why, gate."""
    with _session(db) as session:
        stmt = select(PolicyEventRow).order_by(PolicyEventRow.id.desc()).limit(limit)
        if policy is not None:
            stmt = stmt.where(PolicyEventRow.policy == policy)
        return [{"id": e.id, "created_at": e.created_at.isoformat(), "policy": e.policy, "action": e.action,
                 "version": e.version, "previous_version": e.previous_version, "actor": e.actor, "reason": e.reason,
                 "forced": e.forced, "gate": e.gate} for e in session.scalars(stmt)]


# ---- promotion and rollback --------------------------------------------------------------------
def _activate(session: Session, policy: str, row: PolicyVersionRow | None) -> None:
    session.execute(update(PolicyVersionRow).where(PolicyVersionRow.policy == policy, PolicyVersionRow.active)
                    .values(active=False))
    if row is not None:
        row.active, row.promoted_at = True, _now()


def promote(db: Engine | Session | str, policy: str, version: str, *, gate: Gate | None = None, force: bool = False,
            reason: str | None = None, actor: str | None = None) -> Promotion:
    """Make ``version`` the active version of ``policy`` if it passes ``gate``.

    ``gate(candidate, active_or_None)`` returns a ``router.lifecycle.gate.GateResult``; the default is
    ``policy_gate.manifest_gate`` (metrics both manifests recorded on a common split). A refusal
    is recorded and returned (``action == "refuse"``), nothing changes. ``force=True`` promotes
    anyway and needs a ``reason``; it is recorded with the gate's comparison.
    """
    from router.lifecycle.gate import manifest_gate

    if force and not (reason and reason.strip()):
        raise InvalidRequestError("a forced promotion needs a reason", param="reason")
    candidate = get_version(db, policy, version)
    version = candidate.version
    incumbent = active(db, policy)
    if incumbent is not None and incumbent.version == version:
        raise InvalidRequestError(f"version {version!r} of policy {policy!r} is already active", param="version")
    result = (gate or manifest_gate)(candidate, incumbent)
    verdict = result.as_dict()
    previous = incumbent.version if incumbent else None
    with _session(db) as session:
        if not result.passed and not force:
            _event(session, policy=policy, action="refuse", version=version, previous=previous, actor=actor,
                   reason=result.reason, gate=verdict)
            return Promotion(policy, "refuse", version, previous, result.reason, gate=verdict)
        why = reason or result.reason
        if not result.passed:
            why = f"{reason} (the gate refused: {result.reason})"
        _activate(session, policy, _row(session, policy, version))
        _event(session, policy=policy, action="promote", version=version, previous=previous, actor=actor, reason=why,
               forced=force and not result.passed, gate=verdict)
    return Promotion(policy, "promote", version, previous, why, forced=force and not result.passed, gate=verdict)


def rollback(db: Engine | Session | str, policy: str, *, reason: str | None = None, actor: str | None = None) -> Promotion:
    """Re-activate the version that was active before the current one was promoted.

    Repeated rollbacks walk back through the promotions. Rolling back the first promoted version
    leaves no version active: the service then serves the artifact its config names.
    """
    with _session(db) as session:
        current = _active_row(session, policy)
        if current is None:
            raise PolicyError(f"policy {policy!r} has no active registered version to roll back")
        promoted = session.scalar(select(PolicyEventRow).where(
            PolicyEventRow.policy == policy, PolicyEventRow.action == "promote",
            PolicyEventRow.version == current.version).order_by(PolicyEventRow.id.desc()).limit(1))
        target_version = promoted.previous_version if promoted is not None else None
        target = _row(session, policy, target_version) if target_version else None
        _activate(session, policy, target)
        why = reason or f"rolled back from {current.version}"
        _event(session, policy=policy, action="rollback", version=target_version, previous=current.version, actor=actor,
               reason=why)
        return Promotion(policy, "rollback", target_version, current.version, why)
