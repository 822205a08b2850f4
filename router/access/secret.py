"""The server secret API keys are hashed with (HMAC-SHA256).

With a keyed hash, a copy of the database is not enough to check guesses against the stored
hashes: the secret lives outside the database. It comes from ``EXPERTMUX_KEY_HASH_SECRET`` or,
when that is unset, from a file in the data directory, generated on first start (32 random
bytes, mode 0600). Replicas sharing one database must share the secret: set the variable on
each (``KeyStore.check_secret`` refuses to start a replica whose secret does not match the keys).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from pydantic import SecretStr

log = logging.getLogger("expertmux.access")

SECRET_FILE = "key-hash.secret"


def key_hash_secret(configured: SecretStr | None, *, data_dir: Path) -> bytes:
    """The configured secret, else the data directory's (created atomically if missing)."""
    if configured is not None:
        value = configured.get_secret_value()
        if not value:
            raise ValueError("EXPERTMUX_KEY_HASH_SECRET is set but empty")
        return value.encode()
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        _create(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); set to 0600", path, mode)
        path.chmod(0o600)
    value = path.read_bytes().strip()
    if len(value) < 32:
        raise ValueError(f"{path} holds a secret of {len(value)} bytes; expected at least 32 (delete it to generate a new one, "
                         "which invalidates every API key)")
    return value


def _create(path: Path) -> None:
    """Write a new secret under a private name, then link it into place: of several processes
    starting at once exactly one secret wins, and nobody reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process got there first: theirs is used
        log.info("generated the API key hash secret in %s (back it up with the database)", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
