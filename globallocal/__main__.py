"""``python -m globallocal``: the command line, as the installed ``globallocal`` script runs it."""

from globallocal.cli import main

main()
