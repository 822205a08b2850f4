"""The ``expertmux`` command line (Typer + rich). Sub-commands live in their own modules."""

from __future__ import annotations

import typer

app = typer.Typer(name="expertmux", help="Self-hosted multi-LLM query router.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


def _register() -> None:
    # Each module adds its commands to `app`; imports stay light (heavy work is inside commands).
    from router.cli import db, eval, experts, keys, policies, serve, train, train_policies  # noqa: F401


def main() -> None:
    _register()
    app()
