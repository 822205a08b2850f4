"""``expertmux db``: ledger schema migrations (Alembic)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.app import app
from cli.common import console, load_settings

db_app = typer.Typer(help="Ledger database: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("head"), config: Path = typer.Option(None, "--config", "-c"),
            url: str = typer.Option(None, "--url", help="database URL (default: settings)")) -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from router.ledger import migrate

    target = url or load_settings(config).resolved_database_url
    migrate.upgrade(target, revision)
    console.print(f"ledger at [bold]{_redact(target)}[/] is at revision {migrate.current(target)}")


@db_app.command("downgrade")
def downgrade(revision: str = typer.Argument(...), config: Path = typer.Option(None, "--config", "-c"),
              url: str = typer.Option(None, "--url")) -> None:
    """Revert migrations down to REVISION ('base' = empty)."""
    from router.ledger import migrate

    target = url or load_settings(config).resolved_database_url
    migrate.downgrade(target, revision)
    console.print(f"ledger at [bold]{_redact(target)}[/] is at revision {migrate.current(target)}")


@db_app.command("current")
def current(config: Path = typer.Option(None, "--config", "-c"), url: str = typer.Option(None, "--url")) -> None:
    """Show the ledger's schema revision."""
    from router.ledger import migrate

    target = url or load_settings(config).resolved_database_url
    console.print(migrate.current(target) or "(empty: run `expertmux db upgrade`)")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
