"""Files and devices: the atomic writes every output goes through, and device resolution.

A write that matters (checkpoints, caches, exports, pictures, reports) goes to a temporary file in the
destination's folder and is renamed over the destination only once complete, so a crash or a full disk
never leaves a half-written file where a good one was (:func:`atomic_path`, and the helpers built on it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from featurefield.errors import FeatureFieldError

_umask_lock = threading.Lock()


def default_mode() -> int:
    """The permission bits ``open()`` gives a new file: ``0o666`` less the umask (``0o644`` under ``022``)."""
    with _umask_lock:  # the umask can only be read by setting it; put it straight back
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def share(path: str | Path) -> None:
    """Give ``path`` (a fresh temporary file) the mode of a plainly written file (:func:`default_mode`)."""
    os.chmod(path, default_mode())


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it to ``path``.

    The temporary file exists (empty) when the block starts; on an error it is removed and ``path`` is left
    as it was. ``suffix`` (default ``path``'s own) lets writers that pick a format by extension work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        share(tmp)  # mkstemp makes owner-only (0600) files; renamed, they would keep that
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename); returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (one trailing newline) to ``path`` atomically; returns ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_save_numpy(path: str | Path, array) -> Path:
    """``numpy.save(array)`` to ``path`` (a ``.npy`` file) atomically; returns ``path``."""
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
    return Path(path)


def megabytes(n: float) -> str:
    """``n`` bytes for a message: ``"3.2 MiB"``, ``"840 KiB"`` (never ``"0 MiB"`` for a small file)."""
    if n >= 10 * 2**20:
        return f"{n / 2**20:.0f} MiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{max(n, 0) / 2**10:.0f} KiB"


def free_bytes(path: str | Path) -> int:
    """Bytes free to this user on the disk holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def jsonable(obj: Any) -> Any:
    """``obj`` made strict JSON, recursively: NaN/inf floats become ``None``; tensors and numpy scalars or
    arrays become numbers or lists; dict keys become strings."""
    if torch.is_tensor(obj) or type(obj).__module__ == "numpy":
        obj = obj.item() if getattr(obj, "ndim", 0) == 0 else obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The device a command runs on.

    ``"auto"`` picks CUDA when present (``cuda:LOCAL_RANK`` modulo the GPU count, for one process per GPU
    under torchrun), else CPU; anything else is taken as written, after checking that CUDA exists when asked.
    """
    if str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}" if local_rank else "cuda")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise FeatureFieldError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FeatureFieldError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device
