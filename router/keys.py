"""API keys: created, listed and revoked; stored as sha256 hashes, looked up through a short cache.

Keys are random 192-bit secrets, so a fast hash is enough (a slow password hash buys nothing and
would sit on every request). Revocation reaches every replica within ``cache_ttl_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from router.errors import InvalidRequestError, NotFoundError
from router.ledger.models import ApiKeyRow

KEY_PREFIX = "emx-"
PROMPT_STORAGE = ("full", "hash", "none")


def hash_key(secret: str) -> str:
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
    def __init__(self, engine: Engine, *, cache_ttl_s: float = 5.0) -> None:
        self.engine = engine
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

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
        secret = KEY_PREFIX + secrets.token_urlsafe(24)
        row = ApiKeyRow(id=secrets.token_hex(8), name=name, key_hash=hash_key(secret), prefix=secret[:10],
                        created_at=datetime.now(UTC), tenant=tenant, rpm_limit=rpm_limit, tpm_limit=tpm_limit,
                        budget_usd_day=budget_usd_day, budget_usd_month=budget_usd_month, prompt_storage=prompt_storage)
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

    async def lookup(self, secret: str) -> ApiKey | None:
        """The key for a secret, or None if unknown or revoked (cached for ``cache_ttl_s``)."""
        digest = hash_key(secret)
        hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[0] < self.cache_ttl_s:
            return hit[1]
        return await asyncio.to_thread(self._load, digest)

    def _load(self, digest: str) -> ApiKey | None:
        now = time.monotonic()
        with Session(self.engine) as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
            key = ApiKey.from_row(row) if row is not None and row.revoked_at is None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, key)
        return key
