"""Subcommands of the `cryoem` console script: each module defines `register(subparsers)`.

A subcommand sets `handler=<function(args) -> int>` with `parser.set_defaults`.
"""
