"""The one error type for user mistakes.

A :class:`FeatureFieldError` means the user can fix it (a bad path, a broken file, a wrong format,
missing weights). Its message names the file and the fix; the CLI prints it on one line and exits 2.
Anything else escaping the library is a bug and keeps its traceback.
"""

from __future__ import annotations


class FeatureFieldError(Exception):
    """A user-fixable problem. ``str(err)`` is a single line naming the file and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class FeatureFieldWarning(UserWarning):
    """Something the user should know that does not stop the work (a fallback taken, a file trusted as given).

    From Python it is an ordinary warning (filter it with :mod:`warnings`); the CLI prints it on one line,
    ``featurefield COMMAND: warning: ...``, and hides other libraries' warnings.
    """


def warn(message: str) -> None:
    """Issue ``message`` (made one line) as a :class:`FeatureFieldWarning`, attributed to the line calling this."""
    import warnings

    warnings.warn(" ".join(str(message).split()), FeatureFieldWarning, stacklevel=2)
