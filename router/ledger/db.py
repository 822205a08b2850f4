"""Engine creation for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")  # psycopg 3 driver
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            # WAL: the dashboard and CLI can read while the proxy writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def sqlite_file_identity(engine: Engine) -> tuple[int, int] | None:
    """(device, inode) of a SQLite engine's database file; None if it has no file or the file is
    gone. Connections opened before the file was deleted keep writing into the deleted inode, so a
    changed identity means rows would vanish: the writer reconnects and recreates the schema."""
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return None
    try:
        st = os.stat(engine.url.database)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
