"""Offline evaluation of routing policies on routing matrices (``expertmux eval``).

``metrics`` holds the pure metric functions of DESIGN.md §5, ``harness`` fits and sweeps the
policies and assembles the report (a JSON-ready dict), ``report`` prints it as a table and
``plot`` draws it.
"""
