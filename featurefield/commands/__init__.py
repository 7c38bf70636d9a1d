"""The verbs of the ``featurefield`` command, one module each: parse arguments, call the library, print.

Each ``*_command`` is a typed function that :mod:`featurefield.cli` hands to tyro. Nothing in the library
imports this package: everything a command does is a library call usable from Python.
"""

import contextlib
import functools
import io
import sys


def parses_own_arguments(command):
    """Mark a command that takes ``(args, prog, description)`` and parses them itself (subcommands built at run
    time, e.g. one per field backend), instead of being handed to tyro as a typed function."""
    command.parses_own_arguments = True
    return command


def cli(target, args: list[str], prog: str, description: str):
    """Parse ``args`` for ``target`` (a typed command function, or a type such as a union of subcommands) with tyro,
    set up for readable help: positional arguments named after their parameter (RUN, SCENE), ``INT`` rather
    than ``{None}|INT`` for an option whose default None means "decided at run time" (:mod:`.options`), and each
    parameter's description on one line."""
    import inspect

    import tyro

    if inspect.isfunction(target):
        target = _args_on_one_line(target)
    config = (tyro.conf.PositionalMetavarFromFieldName, tyro.conf.DisallowNone)
    with _one_line_parse_errors(prog) as parsed:
        if not inspect.isfunction(target):
            return tyro.cli(target, args=args, prog=prog, description=description, config=config)
        command = target

        @functools.wraps(command)
        def run(*a, **k):  # tyro calls it once the arguments parsed: from here on, stderr is the command's
            parsed()
            return command(*a, **k)

        return tyro.cli(run, args=args, prog=prog, description=description, config=config)


@contextlib.contextmanager
def _one_line_parse_errors(prog: str):
    """While tyro parses, its error panel (a bad value, an unknown option) is held back and said in one line,
    ``PROG: error: ...; see PROG --help``, with exit code 2. Yields a function to call once parsing is done."""
    real, held = sys.stderr, io.StringIO()
    parsing = [True]

    def parsed() -> None:
        parsing[0] = False
        sys.stderr = real

    sys.stderr = held
    try:
        yield parsed
    except SystemExit as exit_:
        if not parsing[0] or exit_.code in (0, None):
            real.write(held.getvalue())
            raise
        lines = [line.strip(" │╭╮╰╯─\n") for line in held.getvalue().splitlines()]
        first = []
        for line in lines[1:]:
            if not line:
                if first:
                    break
                continue
            first.append(line)
        what = " ".join(first) or "could not parse the arguments"
        print(f"{prog}: error: {' '.join(what.split()).rstrip('.')}; see {prog} --help", file=real)
        raise SystemExit(2) from None
    finally:
        sys.stderr = real


def _args_on_one_line(fn):
    """``fn`` with each entry of its docstring's ``Args:`` put on one line: tyro keeps the line breaks of a
    function's parameter descriptions in the help (a dataclass's it joins), so one wrapped in the source broke
    mid-sentence. The command functions are only called through here, so their ``__doc__`` is rewritten."""
    import inspect

    out, indent, in_args = [], None, False
    for line in inspect.cleandoc(fn.__doc__ or "").splitlines():
        depth = len(line) - len(line.lstrip())
        if line.strip() in ("Args:", "Arguments:"):
            in_args, indent = True, None
        elif in_args and line.strip():
            indent = depth if indent is None else indent
            if depth > indent:
                out[-1] += " " + line.strip()
                continue
            in_args = depth == indent
        out.append(line)
    fn.__doc__ = "\n".join(out)
    return fn
