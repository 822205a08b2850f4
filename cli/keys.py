"""``expertmux keys create|list|revoke``: API keys, straight in the ledger database."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.app import app
from cli.common import console, fail, load_settings
from core.errors import ExpertmuxError

keys_app = typer.Typer(help="API keys: limits, budgets, prompt storage.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _store(config: Path | None):
    from router.access.keys import key_store

    return key_store(load_settings(config))  # the server's key hash secret: keys made here verify there


@keys_app.command("create")
def create(name: str = typer.Argument(..., help="who or what uses the key"),
           tenant: str = typer.Option(None, help="tenant recorded with each request"),
           rpm: int = typer.Option(None, help="requests per minute"),
           tpm: int = typer.Option(None, help="tokens per minute"),
           budget_day: float = typer.Option(None, help="USD per day"),
           budget_month: float = typer.Option(None, help="USD per month"),
           prompt_storage: str = typer.Option(None, help="full | hash | none (default: the deployment's)"),
           config: Path = typer.Option(None, "--config", "-c")) -> None:
    """Create a key; its secret is printed once."""
    try:
        key, secret = _store(config).create(name=name, tenant=tenant, rpm_limit=rpm, tpm_limit=tpm, budget_usd_day=budget_day,
                                            budget_usd_month=budget_month, prompt_storage=prompt_storage)
    except ExpertmuxError as exc:
        fail(exc)
    console.print(f"created key [bold]{key.id}[/] ({key.name}); the secret is shown only now:")
    print(secret)


@keys_app.command("list")
def list_keys(config: Path = typer.Option(None, "--config", "-c")) -> None:
    """List keys (never their secrets)."""
    table = Table("id", "name", "prefix", "tenant", "rpm", "tpm", "$/day", "$/month", "prompts", "state")
    for k in _store(config).list():
        table.add_row(k.id, k.name, k.prefix + "…", k.tenant or "-", *(str(v) if v is not None else "-" for v in (
            k.rpm_limit, k.tpm_limit, k.budget_usd_day, k.budget_usd_month)), k.prompt_storage or "default",
            "[red]revoked[/]" if k.revoked_at else "[green]active[/]")
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: str, config: Path = typer.Option(None, "--config", "-c")) -> None:
    """Revoke a key (replicas stop accepting it within the key cache TTL)."""
    try:
        key = _store(config).revoke(key_id=key_id)
    except ExpertmuxError as exc:
        fail(exc)
    console.print(f"revoked {key.id} ({key.name})")
