"""The verbs of the ``featurefield`` command, one module each: parse arguments, call the library, print.

Each ``*_command`` is a typed function that :mod:`featurefield.cli` hands to tyro. Nothing in the library
imports this package: everything a command does is a library call usable from Python.
"""
