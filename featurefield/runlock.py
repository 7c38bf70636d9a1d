"""One writer per run folder: an advisory lock that a training holds on ``RUN/.lock`` while it writes.

The lock is ``flock`` on an open file, so the kernel drops it when its process ends in any way (a crash,
SIGKILL, a lost node): a ``.lock`` file left behind by a dead process is simply taken over, never
"stale". The file holds the holder's pid and host, for the message a second writer gets. Where
``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featurefield.errors import FeatureFieldError

LOCK = ".lock"


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder's lock for the block, or raise a one-line error naming the process holding it.

    Raises:
        FeatureFieldError: another process writes the folder, or the folder cannot be written.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(run_dir) / LOCK
    try:
        f = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    except OSError as err:
        raise FeatureFieldError(f"{run_dir}: the run folder is not writable ({err.strerror}); copy the run somewhere "
                                "writable, or pass another --output") from err
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise FeatureFieldError(f"{run_dir}: another training ({holder}) is writing this run folder; wait for it "
                                    "to finish or choose another --output") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()
