"""``expertmux experts up|down|status``: manage the local expert servers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.app import app
from cli.common import console, fail, load_settings
from core.errors import ExpertmuxError

experts_app = typer.Typer(help="Local expert servers (llama.cpp, vLLM).", no_args_is_help=True)
app.add_typer(experts_app, name="experts")


def _registry(config: Path | None):
    from experts.registry import ExpertRegistry

    settings = load_settings(config)
    cfg = settings.app_config
    return ExpertRegistry(cfg.experts, data_dir=settings.data_dir,
                          secrets={e.name: settings.secret(e.api_key_env) for e in cfg.experts})


@experts_app.command("up")
def up(names: list[str] = typer.Argument(None, help="experts to start (default: every local one)"),
       config: Path = typer.Option(None, "--config", "-c")) -> None:
    """Start local experts in the background; `expertmux serve` reuses them."""
    try:
        registry = _registry(config)
        with console.status("starting experts …"):
            results = registry.start_local(names or None)
    except ExpertmuxError as exc:
        fail(exc)
    for name, status in results.items():
        console.print(f"[green]✓[/] {name}: {status}")
    # These servers outlive this command: forget ownership so nothing stops them at exit.
    for e in registry:
        e.owned = False


@experts_app.command("down")
def down(names: list[str] = typer.Argument(None), config: Path = typer.Option(None, "--config", "-c")) -> None:
    """Stop local experts started by `experts up` or `serve`."""
    try:
        stopped = _registry(config).stop_local(only_owned=False, names=names or None)
    except ExpertmuxError as exc:
        fail(exc)
    console.print(f"stopped: {', '.join(stopped) or '(none running)'}")


@experts_app.command("status")
def status(config: Path = typer.Option(None, "--config", "-c")) -> None:
    """Show each expert's backend, endpoint and health."""
    try:
        rows = _registry(config).status()
    except ExpertmuxError as exc:
        fail(exc)
    table = Table("expert", "backend", "model", "endpoint", "pid", "health")
    for name, s in rows.items():
        table.add_row(name, s["backend"], s["model"], s["api_base"] or "-", str(s["pid"] or "-"),
                      "[green]up[/]" if s["healthy"] else "[red]down[/]")
    console.print(table)
