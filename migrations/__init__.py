"""Alembic environment and versions of the ledger schema (run with ``expertmux db upgrade``)."""
