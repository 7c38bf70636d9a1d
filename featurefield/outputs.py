"""Where a command may write: checked before any work, with a one-line error that says where to write instead.

A run copied to a read-only place (a shared archive, a mounted dataset) can still be rendered, evaluated,
queried and exported: the default output inside the run is refused in one line that names ``--output``.
"""

from __future__ import annotations

import os
from pathlib import Path

from featurefield.errors import FeatureFieldError


def read_only_fs(path: Path) -> bool:
    """Whether ``path`` lies on a read-only mount (root ignores permission bits, so ``os.access`` says yes there)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):
        return False


def writable(path: Path) -> bool:
    """Whether ``path`` (or its nearest existing parent) can be written."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK) and not read_only_fs(probe)


def check_output_dir(path: Path, flag: str = "--output", default: bool = False) -> None:
    """``path`` is (or can be made) a writable folder.

    Args:
        path: the folder a command will write into.
        flag: the option that sets it, for the message.
        default: ``path`` is the command's default inside a run (the message then says to pass ``flag``).
    Raises:
        FeatureFieldError: a file is there, or the place is read-only.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FeatureFieldError(f"{path}: {flag} names an existing file, not a folder; choose another {flag}")
    if not writable(path):
        hint = f"pass {flag} with a writable folder" if default else f"choose another {flag}"
        raise FeatureFieldError(f"{path}: is not writable (a read-only run or folder); {hint}")


def check_output_file(path: Path, flag: str = "--output", default: bool = False) -> None:
    """``path`` can be written as a file: not a folder, in a writable place."""
    path = Path(path)
    if path.is_dir():
        raise FeatureFieldError(f"{path}: {flag} names a folder; give a file name (e.g. {path / 'metrics.json'})")
    if not writable(path.parent if not path.exists() else path):
        hint = f"pass {flag} with a writable file" if default else f"choose another {flag}"
        raise FeatureFieldError(f"{path}: is not writable (a read-only run or folder); {hint}")


def at_least(flag: str, value: int | None, low: int = 1, none_ok: bool = True) -> None:
    """A count given on the command line is at least ``low`` (``None``: the default, when allowed)."""
    if value is None and none_ok:
        return
    if value is None or isinstance(value, bool) or value < low:
        raise FeatureFieldError(f"{flag} must be at least {low}, got {value}")
