"""Shared helpers of the CLI commands: settings with command-line overrides, the console."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from core.errors import ExpertmuxError
from core.settings import Settings

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


@contextmanager
def stage_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress display with one bar per stage; yields the ``progress(stage, done, total)``
    callback that training reports to (``policies.progress``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=max(total, 1))
            progress.update(tasks[stage], completed=done if total else 1, total=max(total, 1))

        yield on_progress


def save_outputs(json_out: Path | None, report: object, markdown_out: Path | None, markdown_text: str) -> None:
    """Write the report as JSON and its tables as Markdown where the command was asked to."""
    import json

    for path, text, label in ((json_out, json.dumps(report, indent=1), "report"), (markdown_out, markdown_text, "tables")):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            console.print(f"{label}: {path}")
