"""The ``expertmux`` command line (Typer + rich): the composition root at the top of the layers.

It wires settings, services and the HTTP app (``expertmux serve``); nothing else imports it.
Sub-commands live in their own modules and register on ``cli.app`` when ``_register`` imports them.
"""

from __future__ import annotations

from cli.app import app

__all__ = ["app", "main"]


def _register() -> None:
    # Each module adds its commands to `app`; imports stay light (heavy work is inside commands).
    from cli import calibrate, db, docs, eval, experts, keys, policies, serve, train, train_policies, train_router_r1  # noqa: F401


def main() -> None:
    _register()
    app()
