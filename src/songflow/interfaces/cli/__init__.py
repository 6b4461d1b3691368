"""``songflow`` console script: one parser, one module per group of subcommands."""

from songflow.interfaces.cli.commands import main

__all__ = ["main"]
