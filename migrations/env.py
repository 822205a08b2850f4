"""Alembic environment: the URL comes from expertmux Settings (or the caller's config)."""

from __future__ import annotations

from alembic import context

from router.ledger.db import make_engine
from router.ledger.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    from core.settings import Settings

    url = Settings().resolved_database_url

target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        # batch mode: SQLite can only ALTER tables by copying them
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
