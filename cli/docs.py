"""``expertmux docs``: pages generated from the code (the configuration reference)."""

from __future__ import annotations

import typer

from cli.app import app

docs_app = typer.Typer(help="Documentation generated from the code.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")


@docs_app.command("config")
def config_reference() -> None:
    """Print the configuration reference (every YAML key and environment variable) as Markdown."""
    from core.config_reference import render

    typer.echo(render(), nl=False)
