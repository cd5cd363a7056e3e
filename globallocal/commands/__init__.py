"""The bodies of the command-line commands (cli.py declares them) and their shared options."""
