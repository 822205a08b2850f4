"""API keys at rest: an HMAC-SHA256 under a server secret, and keys made before it stay valid.

The issue: keys were stored as unsalted SHA-256, so whoever reads the database can test guesses
offline. With a keyed hash the database alone is not enough: the secret lives outside it
(``EXPERTMUX_KEY_HASH_SECRET``, else a 0600 file in the data directory).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import stat
import threading
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from core.errors import ConfigError
from router.access.keys import KeyStore
from router.access.secret import SECRET_FILE, key_hash_secret
from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.models import ApiKeyRow

SECRET = b"server-secret-for-tests"


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _row(engine, key_id: str) -> ApiKeyRow:
    with Session(engine) as s:
        return s.get(ApiKeyRow, key_id)


def test_keys_are_stored_as_a_keyed_hash(engine):
    store = KeyStore(engine, secret=SECRET, cache_ttl_s=0)
    key, plain = store.create(name="a")
    row = _row(engine, key.id)
    assert row.key_hash == hmac.new(SECRET, plain.encode(), hashlib.sha256).hexdigest()
    assert row.key_hash != hashlib.sha256(plain.encode()).hexdigest()
    assert row.hash_scheme.startswith("hmac-sha256:")
    assert plain not in repr(row.__dict__) and len(plain) >= 40  # 256 random bits; the prefix shows 6 of them
    assert asyncio.run(store.lookup(plain)).id == key.id
    # the database alone is not enough: a store with another secret cannot verify the key
    assert asyncio.run(KeyStore(engine, secret=b"another", cache_ttl_s=0).lookup(plain)) is None
    assert asyncio.run(store.lookup(plain + "x")) is None


def test_migration_keeps_legacy_sha256_keys_valid_and_rehashes_them_on_first_use(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0006_ledger_rollups")  # the schema before keyed hashes
    engine = make_engine(url)
    plain = "emx-" + "legacy-key-made-by-an-older-release-0123"
    with engine.begin() as conn:  # a key as the old release stored it
        conn.exec_driver_sql(
            "INSERT INTO api_keys (id, name, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)",
            ("old1", "legacy", hashlib.sha256(plain.encode()).hexdigest(), plain[:10], datetime.now(UTC).isoformat()))
    engine.dispose()
    migrate.upgrade(url)
    engine = make_engine(url)
    assert _row(engine, "old1").hash_scheme == "sha256"
    store = KeyStore(engine, secret=SECRET, cache_ttl_s=0)
    assert asyncio.run(store.lookup(plain)).id == "old1"
    row = _row(engine, "old1")
    assert row.hash_scheme.startswith("hmac-sha256:") and row.key_hash == hmac.new(SECRET, plain.encode(), hashlib.sha256).hexdigest()
    assert asyncio.run(store.lookup(plain)).id == "old1"  # and it keeps working under the new hash
    # a legacy digest cannot be used against a row that already moved to the keyed hash
    with engine.begin() as conn:
        conn.execute(insert(ApiKeyRow).values(id="x", name="x", key_hash=hashlib.sha256(b"guess").hexdigest(), prefix="emx-",
                                              created_at=datetime.now(UTC), hash_scheme=row.hash_scheme))
    assert asyncio.run(store.lookup("guess")) is None
    engine.dispose()


def test_secret_file_is_generated_once_private_and_shared_by_concurrent_starters(tmp_path):
    results: list[bytes] = []

    def start():
        results.append(key_hash_secret(None, data_dir=tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results[0]) >= 32
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key_hash_secret(None, data_dir=tmp_path) == results[0]  # a restart reads the same secret
    assert key_hash_secret(SecretStr("from-settings"), data_dir=tmp_path) == b"from-settings"


def test_a_replica_with_another_secret_refuses_to_start(engine):
    KeyStore(engine, secret=SECRET).create(name="a")
    KeyStore(engine, secret=SECRET).check_secret()  # same secret: fine
    with pytest.raises(ConfigError, match="EXPERTMUX_KEY_HASH_SECRET"):
        KeyStore(engine, secret=b"different").check_secret()


def test_cache_is_keyed_by_the_hash_not_the_key(engine):
    store = KeyStore(engine, secret=SECRET, cache_ttl_s=60)
    key, plain = store.create(name="a")
    assert asyncio.run(store.lookup(plain)).id == key.id
    assert all(plain not in k for k in store._cache)
    with Session(engine) as s:
        assert s.scalar(select(ApiKeyRow.prefix).where(ApiKeyRow.id == key.id)) == plain[:10]
