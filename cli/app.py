"""The Typer apps every command module adds its commands to: the root ``expertmux`` and the
``expertmux train`` group (shared by R2R, Router-R1 and the query-level policies)."""

from __future__ import annotations

import typer

app = typer.Typer(name="expertmux", help="Self-hosted multi-LLM query router.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
train_app = typer.Typer(help="Train learned routing components (labels, fit, versioned artifact).", no_args_is_help=True)
app.add_typer(train_app, name="train")
