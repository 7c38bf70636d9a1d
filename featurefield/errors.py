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
