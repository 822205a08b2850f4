"""API keys: created, listed and revoked; stored as a keyed hash, looked up through a short cache.

A key is 256 random bits, so no slow password hash is needed (it would sit on every request);
but a plain SHA-256 of it would let anyone holding a copy of the database test guesses offline.
Keys are stored as HMAC-SHA256 under a server secret that lives outside the database
(``router.access.secret``). Keys stored by older releases as plain SHA-256 (``hash_scheme``
``sha256``) stay valid: the first time one is used it is verified that way and re-hashed.

Each row records the fingerprint of the secret its hash was made with, so a replica started with
another secret is refused at start (``check_secret``) instead of rejecting every key.
Revocation reaches every replica within ``cache_ttl_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from core.errors import ConfigError, InvalidRequestError, NotFoundError
from router.ledger.models import ApiKeyRow

KEY_PREFIX = "emx-"
PROMPT_STORAGE = ("full", "hash", "none")
LEGACY_SCHEME = "sha256"


def legacy_hash(secret: str) -> str:
    """How releases before keyed hashes stored a key (verified once, then re-hashed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    tenant: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    budget_usd_day: float | None = None
    budget_usd_month: float | None = None
    prompt_storage: str | None = None

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm_limit, self.tpm_limit, self.budget_usd_day, self.budget_usd_month))

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKey:
        return cls(id=row.id, name=row.name, prefix=row.prefix, created_at=row.created_at, revoked_at=row.revoked_at,
                   tenant=row.tenant, rpm_limit=row.rpm_limit, tpm_limit=row.tpm_limit, budget_usd_day=row.budget_usd_day,
                   budget_usd_month=row.budget_usd_month, prompt_storage=row.prompt_storage)

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "prefix": self.prefix, "created_at": self.created_at.isoformat(),
                "revoked": self.revoked_at is not None, "tenant": self.tenant, "rpm_limit": self.rpm_limit,
                "tpm_limit": self.tpm_limit, "budget_usd_day": self.budget_usd_day, "budget_usd_month": self.budget_usd_month,
                "prompt_storage": self.prompt_storage}


class KeyStore:
    def __init__(self, engine: Engine, *, secret: bytes, cache_ttl_s: float = 5.0) -> None:
        if not secret:
            raise ValueError("KeyStore needs the server secret keys are hashed with")
        self.engine = engine
        self.cache_ttl_s = cache_ttl_s
        self._secret = secret
        self.scheme = "hmac-sha256:" + hmac.new(secret, b"expertmux key hash secret fingerprint", hashlib.sha256).hexdigest()[:12]
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def hash(self, secret: str) -> str:
        return hmac.new(self._secret, secret.encode(), hashlib.sha256).hexdigest()

    def create(self, *, name: str, tenant: str | None = None, rpm_limit: int | None = None, tpm_limit: int | None = None,
               budget_usd_day: float | None = None, budget_usd_month: float | None = None,
               prompt_storage: str | None = None) -> tuple[ApiKey, str]:
        """Returns the key and its secret; the secret is shown once and never stored."""
        if not name.strip():
            raise InvalidRequestError("a key needs a non-empty name", param="name")
        if prompt_storage is not None and prompt_storage not in PROMPT_STORAGE:
            raise InvalidRequestError(f"prompt_storage must be one of {PROMPT_STORAGE}", param="prompt_storage")
        for field, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit), ("budget_usd_day", budget_usd_day),
                             ("budget_usd_month", budget_usd_month)):
            if value is not None and value <= 0:
                raise InvalidRequestError(f"{field} must be positive", param=field)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits; the listed prefix shows 36 of them
        row = ApiKeyRow(id=secrets.token_hex(8), name=name, key_hash=self.hash(secret), hash_scheme=self.scheme,
                        prefix=secret[:10], created_at=datetime.now(UTC), tenant=tenant, rpm_limit=rpm_limit,
                        tpm_limit=tpm_limit, budget_usd_day=budget_usd_day, budget_usd_month=budget_usd_month,
                        prompt_storage=prompt_storage)
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            key = ApiKey.from_row(row)
        return key, secret

    def list(self) -> list[ApiKey]:
        with Session(self.engine) as session:
            return [ApiKey.from_row(r) for r in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))]

    def revoke(self, *, key_id: str) -> ApiKey:
        with Session(self.engine) as session, session.begin():
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"no API key with id {key_id!r}", param="key_id")
            row.revoked_at = row.revoked_at or datetime.now(UTC)
            key = ApiKey.from_row(row)
        with self._lock:
            self._cache.clear()
        return key

    def check_secret(self) -> None:
        """Refuse to serve with a secret other than the one the keys were hashed with: every key
        would be rejected (typically a replica that generated its own secret)."""
        with Session(self.engine) as session:
            foreign = session.scalar(select(func.count()).select_from(ApiKeyRow).where(
                ApiKeyRow.hash_scheme.like("hmac-sha256:%"), ApiKeyRow.hash_scheme != self.scheme))
            own = session.scalar(select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.hash_scheme == self.scheme))
        if foreign and not own:
            raise ConfigError(f"{foreign} API keys were hashed with another server secret than this process's "
                              f"({self.scheme}): give every replica sharing this database the same EXPERTMUX_KEY_HASH_SECRET "
                              "(or copy the key-hash.secret file of the data directory they were created with)")

    async def lookup(self, secret: str) -> ApiKey | None:
        """The key for a secret, or None if unknown or revoked (cached for ``cache_ttl_s``)."""
        digest = self.hash(secret)
        hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[0] < self.cache_ttl_s:
            return hit[1]
        return await asyncio.to_thread(self._load, digest, secret)

    def _load(self, digest: str, secret: str) -> ApiKey | None:
        now = time.monotonic()
        legacy = legacy_hash(secret)
        with Session(self.engine) as session, session.begin():
            row = None
            for candidate in session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash.in_((digest, legacy)))):
                if candidate.hash_scheme == LEGACY_SCHEME:
                    if hmac.compare_digest(candidate.key_hash, legacy):
                        row = self._rehash(session, candidate, digest, legacy)
                elif hmac.compare_digest(candidate.key_hash, digest):
                    row = candidate
            key = ApiKey.from_row(row) if row is not None and row.revoked_at is None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, key)
        return key

    def _rehash(self, session: Session, row: ApiKeyRow, digest: str, legacy: str) -> ApiKeyRow:
        """A key from before keyed hashes, just verified: store its keyed hash instead (conditional,
        so two replicas doing it at once agree)."""
        session.execute(update(ApiKeyRow).where(ApiKeyRow.id == row.id, ApiKeyRow.key_hash == legacy)
                        .values(key_hash=digest, hash_scheme=self.scheme))
        session.refresh(row)
        return row


def key_store(settings, engine: Engine | None = None) -> KeyStore:
    """The key store of a deployment (its database and key hash secret, from ``Settings``)."""
    from router.access.secret import key_hash_secret
    from router.ledger.db import make_engine

    secret = key_hash_secret(settings.key_hash_secret, data_dir=Path(settings.data_dir))
    return KeyStore(engine or make_engine(settings.resolved_database_url), secret=secret, cache_ttl_s=settings.key_cache_ttl_s)
