"""``python -m router`` runs the expertmux command line."""

from router.cli import main

main()
