"""Rows of a ``.npy`` file read and written with positioned reads and writes, not through a memory map.

The feature and image caches are plain ``.npy`` files of one row per view (``[N, ...]``). Reading a row
through ``np.load(mmap_mode=...)`` maps the file and leaves every page it touched in the process's
resident set until the map is closed, so a process that streams a thousand views ends up "holding" all of
them. :class:`NpyRows` reads (``os.preadv``) into a buffer the caller owns and writes with ``os.pwrite``:
the process holds only the rows in flight, while the OS page cache still keeps hot rows in memory.
Reads and writes of distinct rows are safe from several threads.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

from featurefield.errors import FeatureFieldError


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a C-order ``.npy`` file, from its header.

    Raises:
        ValueError, OSError, EOFError: not a readable ``.npy`` header (or a Fortran-order array).
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError("a Fortran-order array")
        return tuple(int(n) for n in shape), dtype, f.tell()


def write_npy_header(f, shape: tuple[int, ...], dtype) -> None:
    """Write the header of a C-order ``.npy`` array of ``shape`` and ``dtype`` at ``f``'s position."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(f, header)


class NpyRows:
    """Row ``i`` of an ``[N, ...]`` ``.npy`` file as ``read(i) -> ndarray [...]``.

    Args:
        path: the file; its header gives the shape and dtype.
        writable: also allow :meth:`write`.

    Raises:
        FeatureFieldError: the file is missing, not a ``.npy`` array, or shorter than its header says.
    """

    def __init__(self, path: str | Path, writable: bool = False) -> None:
        self.path = Path(path)
        try:
            self.shape, self.dtype, self.offset = npy_layout(self.path)
            size = self.path.stat().st_size
        except (OSError, ValueError, EOFError) as err:
            raise FeatureFieldError(f"{self.path}: cannot read the cached array ({err}); delete it to rebuild it") from err
        if not self.shape:
            raise FeatureFieldError(f"{self.path}: the cached array has no rows; delete it to rebuild it")
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        if size < self.offset + self.shape[0] * self.row_bytes:
            raise FeatureFieldError(f"{self.path}: the cached array is truncated; delete it to rebuild it")
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Row ``i`` (a copy), read into ``out`` when given (C-contiguous, of the row's shape and dtype)."""
        return self.read_rows(i, 1, None if out is None else out.reshape(1, *self.row_shape))[0]

    def read_rows(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start .. start + count`` ``[count, ...]`` (a copy, into ``out`` when given)."""
        if not (0 <= start and count >= 0 and start + count <= len(self)):
            raise IndexError(f"rows {start}..{start + count} of {len(self)} in {self.path}")
        if out is None:
            out = np.empty((count, *self.row_shape), dtype=self.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        pos, want, done = self.offset + start * self.row_bytes, count * self.row_bytes, 0
        while done < want:  # a positioned read may return less than asked (signals, large reads)
            got = os.preadv(self._fd, [buf[done:want]], pos + done) if hasattr(os, "preadv") else \
                _pread_into(self._fd, buf[done:want], pos + done)
            if got <= 0:
                raise FeatureFieldError(f"{self.path}: the cached array ends early; delete it to rebuild it")
            done += got
        return out

    def write(self, i: int, rows: np.ndarray) -> None:
        """Write ``rows`` (``[k, ...]`` or one row ``[...]``) from row ``i`` on."""
        data = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1)
        if data.size % max(1, self.row_bytes // self.dtype.itemsize) or i + data.nbytes // self.row_bytes > len(self):
            raise IndexError(f"{data.nbytes} bytes at row {i} of {len(self)} in {self.path}")
        buf, pos, done = memoryview(data.view(np.uint8)), self.offset + i * self.row_bytes, 0
        while done < len(buf):
            done += os.pwrite(self._fd, buf[done:], pos + done)

    def sync(self) -> None:
        """Flush written rows to the disk."""
        os.fsync(self._fd)

    def close(self) -> None:
        self._closer()


def _pread_into(fd: int, buf: memoryview, pos: int) -> int:
    data = os.pread(fd, len(buf), pos)
    buf[:len(data)] = data
    return len(data)
