"""``python -m cli`` runs the expertmux command line."""

from cli import main

main()
