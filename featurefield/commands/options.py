"""How options read in ``--help``: their placeholder (metavar) and default, and the options several verbs share.

tyro takes each option's description from the command's docstring; :func:`opt` sets what it cannot guess: a
placeholder that says what to pass (``RUN``, ``FOLDER``, ``DEVICE``) rather than the type (``STR``), and, for a
default of None that means "decided at run time", the words for it instead of ``(default: None)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tyro


def opt(metavar: str | None = None, default: str | None = None, help: str | None = None):
    """tyro's settings of one option: ``metavar`` in the help, ``default`` the words ending its line
    (``"(default: <default>)"``; ``""`` for none), ``help`` its description where the docstring does not give it."""
    hint = None if default is None else (f"(default: {default})" if default else "")
    return tyro.conf.arg(metavar=metavar, help=help, help_behavior_hint=hint)


#: ``--device``: where a command runs
Device = Annotated[str, opt("DEVICE", help="where to run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda "
                                           "or cuda:N.")]

#: ``--weights`` of the commands that read a trained run
RunWeights = Annotated[Path | None, opt("PATH", "where the run recorded them", help=(
    "the teachers' weights file or folder, in place of where the run recorded them (as train's --weights; needed "
    "only where they moved)."))]
