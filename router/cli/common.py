"""Shared helpers of the CLI commands: settings with command-line overrides, the console."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from router.errors import ExpertmuxError
from router.settings import Settings

console = Console()
err_console = Console(stderr=True)


def load_settings(config: Path | None = None, **overrides) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if config is not None:
        values["config"] = config
    return Settings(**values)


def fail(exc: ExpertmuxError | str, code: int = 1):
    import typer

    err_console.print(f"[bold red]error:[/] {exc.message if isinstance(exc, ExpertmuxError) else exc}")
    raise typer.Exit(code)
