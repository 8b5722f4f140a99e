"""`python -m supervisor`: the `corral` command line."""

from supervisor.cli import main

main()
