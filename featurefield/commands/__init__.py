"""The verbs of the ``featurefield`` command, one module each: parse arguments, call the library, print.

Each ``*_command`` is a typed function that :mod:`featurefield.cli` hands to tyro. Nothing in the library
imports this package: everything a command does is a library call usable from Python.
"""


def parses_own_arguments(command):
    """Mark a command that takes ``(args, prog, description)`` and parses them itself (subcommands built at run
    time, e.g. one per field backend), instead of being handed to tyro as a typed function."""
    command.parses_own_arguments = True
    return command
