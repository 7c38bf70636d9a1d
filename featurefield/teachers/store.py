"""FeatureStore: teacher features extracted once, kept on disk in fp16, memory-mapped.

Layout under the cache folder (``$FEATUREFIELD_CACHE``, else ``~/.cache/featurefield/features``)::

    <teacher>-<hash of teacher.settings()>/
        index.json              settings + one entry per feature set (atomic writes)
        <set key>.npy           [N, D, h, w] float16, one row per view, memory-mapped

A *feature set* is keyed by the ordered fingerprints of the teacher's input for the requested views:
the image source's fingerprint (file, size, mtime, downscale, mask file, undistortion; else a hash of
the pixels) together with the background RGBA images are composited on (:func:`image_fingerprint`);
the teacher's settings (model, weights hash, resolution, precision) name the folder, and the feature
grid's shape is part of the set. Its rows are written in **shards** of ``shard_images`` consecutive
rows; a shard counts as done only once its rows are flushed and its crc32 (and one crc32 per row) and
size are in the index, so an interrupted extraction resumes at the first unfinished shard, and a
truncated file or a shard whose checksum no longer matches is extracted again.
Rows whose fingerprint already sits in a finished shard of another set (a different split, or a scene
where one image changed) are copied instead of re-extracted, but only after the source row's own crc32
is checked: a corrupt source row is extracted afresh (and its shard dropped from the source's set), and a
source file that is truncated or unreadable is skipped with a one-line warning and rebuilt when its set
is next asked for. The file is preallocated on disk before it is memory-mapped, so a full disk is a
one-line error up front instead of a SIGBUS mid-way.

Processes sharing a cache take turns per feature set through an advisory lock on ``.lock-<set key>``
(POSIX; elsewhere no lock): of two evaluations asking for the same views, the second finds the first's
shards done, while processes extracting different sets (the ranks of a sharded extraction) run side
by side. Updates of ``index.json`` re-read it under ``.lock`` and change only their own set.

Teacher input is ``scene.image(i)`` (``[H, W, 3]``, RGBA composited on the background) as a
``[1, 3, H, W]`` batch row; the images of a scene share one size.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError, warn
from featurefield.io import atomic_path, atomic_write_json, megabytes
from featurefield.npyrows import NpyRows
from featurefield.teachers.base import Teacher

INDEX_VERSION = 2  # 2: per-row crc32, fingerprints cover the background


def default_cache_dir() -> Path:
    env = os.environ.get("FEATUREFIELD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "featurefield" / "features"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def image_fingerprint(scene, i: int) -> str:
    """Fingerprint of the teacher's input for view ``i`` (what :meth:`Scene.image` returns).

    The source's own fingerprint (else sha1 of the raw pixels) plus the background that RGBA pixels are
    composited on: the same photo with masks over black or over white is a different teacher input.
    """
    try:
        source = str(scene.images.fingerprint(i))
    except (NotImplementedError, AttributeError):
        source = hashlib.sha1(scene.rgba(i).numpy().tobytes()).hexdigest()
    bg = scene.background
    return source if bg is None else f"{source}|bg={','.join(f'{float(c):.6g}' for c in bg)}"


def _crc(rows: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(rows).view(np.uint8))


def _npy_ok(path: Path, shape: list[int] | None = None) -> bool:
    """Whether ``path`` is a complete float16 ``.npy`` (of ``shape`` when given), from its header and size."""
    try:
        size = path.stat().st_size  # before mapping: numpy's r+ mode silently extends a short file
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            arr_shape, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError):
        return False
    nbytes = int(np.prod(arr_shape)) * dtype.itemsize
    return (dtype == np.float16 and not fortran and size == offset + nbytes
            and (shape is None or list(arr_shape) == list(shape)))


def _preallocate(path: Path, what: str) -> None:
    """Reserve ``path``'s blocks on disk, so writes through a memory map cannot hit ENOSPC (a SIGBUS)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as err:
        raise FeatureFieldError(f"{path}: cannot open the feature cache ({err.strerror}); use --cache-dir "
                                "on a writable disk") from err
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FeatureFieldError(f"{path.parent}: not enough disk space for {what}; free space there or "
                                    "use --cache-dir on a larger disk") from err
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise FeatureFieldError(f"{path}: cannot write the feature cache ({err.strerror})") from err
    finally:
        os.close(fd)


@contextmanager
def _folder_lock(folder: Path, name: str = ".lock"):
    """Exclusive advisory lock on ``folder/name`` for the duration of the block (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per cache, as before
        yield
        return
    with open(folder / name, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class FeatureStore:
    """On-disk cache of teacher features (see the module doc).

    Args:
        cache_dir: root folder (default :func:`default_cache_dir`).
        shard_images: rows per shard (the unit of resume and of corruption recovery).
        verify: check each finished shard's crc32 on load (``False``: size and header only).
    """

    def __init__(self, cache_dir: str | Path | None = None, shard_images: int = 16, verify: bool = True) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.shard_images = max(1, int(shard_images))
        self.verify = verify

    # ------------------------------------------------------------------ paths and index
    def teacher_dir(self, teacher: Teacher) -> Path:
        return self.cache_dir / f"{teacher.name}-{_digest(teacher.settings())[:16]}"

    def _read_index(self, folder: Path, settings: dict) -> dict:
        path = folder / "index.json"
        if path.is_file():
            try:
                index = json.loads(path.read_text())
                if index.get("version") == INDEX_VERSION and index.get("settings") == json.loads(json.dumps(settings, default=str)):
                    return index
            except (OSError, ValueError):
                pass  # a broken index only costs a re-extraction
        return {"version": INDEX_VERSION, "settings": settings, "sets": {}}

    # ------------------------------------------------------------------ the main entry
    def load_or_extract(self, scene, teacher: Teacher, views: list[int] | None = None, device=None,
                        batch_size: int = 8, progress: bool = True) -> Tensor:
        """Features of ``views``, extracting only what is not cached (all of them at once; :meth:`rows` reads
        one view at a time).

        Args:
            scene: a :class:`~featurefield.data.scene.Scene`.
            teacher: the teacher (moved to ``device``).
            views: view indices (default: all).
            device: where the teacher runs (default: CUDA when present).
            batch_size: images per teacher call.
            progress: show a rich progress bar.
        Returns:
            ``[len(views), D, h, w]`` float16 CPU tensor, memory-mapped from the cache file.
        """
        return torch.from_numpy(np.load(self.ensure(scene, teacher, views, device, batch_size, progress), mmap_mode="c"))

    def rows(self, scene, teacher: Teacher, views: list[int] | None = None, device=None, batch_size: int = 8,
             progress: bool = True) -> NpyRows:
        """As :meth:`load_or_extract`, but the features come as a reader: ``rows.read(k) -> [D, h, w]`` float16
        (numpy) of ``views[k]``, read from the file when asked; nothing stays in the process's memory."""
        return NpyRows(self.ensure(scene, teacher, views, device, batch_size, progress))

    def ensure(self, scene, teacher: Teacher, views: list[int] | None = None, device=None, batch_size: int = 8,
               progress: bool = True) -> Path:
        """Extract what is not cached of ``views`` (default: all); returns the set's ``.npy`` file ``[N, D, h, w]``.

        Extraction and checking go through positioned reads and writes, so the process never holds more
        than a batch of images and a shard of features, however many views the set has.
        """
        views = list(range(len(scene))) if views is None else [int(v) for v in views]
        if not views:
            raise FeatureFieldError("FeatureStore: no views requested")
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        teacher.to(device)
        settings = teacher.settings()
        folder = self.teacher_dir(teacher)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FeatureFieldError(f"{folder}: cannot create the feature cache ({err.strerror}); use --cache-dir "
                                    "(or $FEATUREFIELD_CACHE) on a writable disk") from err
        if not os.access(folder, os.W_OK):
            raise FeatureFieldError(f"{folder}: the feature cache is not writable; use --cache-dir "
                                    "(or $FEATUREFIELD_CACHE) on a writable disk")
        fps = [image_fingerprint(scene, v) for v in views]
        key = _digest(fps)[:24]
        with _folder_lock(folder, f".lock-{key}"):
            return self._load_or_extract_locked(scene, teacher, views, fps, key, folder, settings, batch_size, progress)

    def is_cached(self, scene, teacher: Teacher, views: list[int]) -> bool:
        """Whether the set of exactly ``views`` is cached whole (every shard finished, the file complete), from
        the index and the file's header alone; :meth:`load_or_extract` still checks the rows when it reads them."""
        folder = self.teacher_dir(teacher)
        key = _digest([image_fingerprint(scene, int(v)) for v in views])[:24]
        entry = self._read_index(folder, teacher.settings())["sets"].get(key)
        if entry is None or entry.get("shard_images") != self.shard_images:
            return False
        n_shards = (len(views) + self.shard_images - 1) // self.shard_images
        return len(entry.get("shards", {})) == n_shards and _npy_ok(folder / f"{key}.npy", entry.get("shape"))

    def discard(self, scene, teacher: Teacher, views: list[int]) -> None:
        """Drop the cached set of exactly ``views`` (its file and index entry), e.g. a shard's after merging."""
        folder = self.teacher_dir(teacher)
        key = _digest([image_fingerprint(scene, int(v)) for v in views])[:24]
        with _folder_lock(folder, f".lock-{key}"), _folder_lock(folder):
            index = self._read_index(folder, teacher.settings())
            if index["sets"].pop(key, None) is not None:
                atomic_write_json(folder / "index.json", index, indent=1)
            (folder / f"{key}.npy").unlink(missing_ok=True)

    def _commit(self, folder: Path, settings: dict, key: str, entry: dict) -> None:
        """Write ``entry`` as set ``key`` into the index on disk, keeping what other processes wrote."""
        with _folder_lock(folder):
            index = self._read_index(folder, settings)
            index["sets"][key] = entry
            self._write_index(folder, index)

    @staticmethod
    def _write_index(folder: Path, index: dict) -> None:
        try:
            atomic_write_json(folder / "index.json", index, indent=1)
        except OSError as err:
            raise FeatureFieldError(f"{folder / 'index.json'}: cannot write the feature cache index ({err.strerror}); "
                                    "free disk space or use --cache-dir on a writable disk") from err

    def _drop_shard(self, folder: Path, settings: dict, key: str, shard: str) -> None:
        """Forget one finished shard of set ``key`` (its rows failed their checksum): it is extracted again."""
        with _folder_lock(folder):
            index = self._read_index(folder, settings)
            entry = index["sets"].get(key)
            if entry is not None and entry["shards"].pop(shard, None) is not None:
                self._write_index(folder, index)

    def _drop_set(self, folder: Path, settings: dict, key: str) -> None:
        with _folder_lock(folder):
            index = self._read_index(folder, settings)
            if index["sets"].pop(key, None) is not None:
                self._write_index(folder, index)

    def _load_or_extract_locked(self, scene, teacher, views, fps, key, folder, settings, batch_size, progress) -> Path:
        with _folder_lock(folder):
            index = self._read_index(folder, settings)
        H, W = int(scene.cameras.height[views[0]]), int(scene.cameras.width[views[0]])
        h, w = teacher.feature_grid(H, W)
        shape = [len(views), int(teacher.dim), int(h), int(w)]
        path = folder / f"{key}.npy"
        entry = index["sets"].get(key)
        if entry is None or entry.get("shape") != shape or entry.get("shard_images") != self.shard_images:
            entry = {"shape": shape, "shard_images": self.shard_images, "fingerprints": fps, "shards": {}}
        arr = self._open(path, shape, entry)

        n_shards = (len(views) + self.shard_images - 1) // self.shard_images
        todo = [s for s in range(n_shards) if not self._shard_ok(arr, entry, s)]
        for s in todo:
            entry["shards"].pop(str(s), None)
        try:
            if todo:
                self._fill(scene, teacher, views, arr, key, entry, todo, index, folder, (H, W), batch_size, progress)
        finally:
            arr.close()
        return path

    # ------------------------------------------------------------------ file handling
    def _open(self, path: Path, shape: list[int], entry: dict) -> NpyRows:
        """Open the set's array for writing; (re)create it when missing, truncated or of another shape."""
        what = f"{megabytes(np.prod(shape) * 2)} of features {shape}"
        if not _npy_ok(path, shape):  # missing, truncated, broken header or another shape: recreate
            entry["shards"] = {}
            need = int(np.prod(shape)) * 2 + 4096
            free = shutil.disk_usage(path.parent).free
            if free < need:
                raise FeatureFieldError(f"{path.parent}: the feature cache needs {megabytes(need)} for "
                                        f"{shape} features but {megabytes(free)} are free; free space there "
                                        "or use --cache-dir on a larger disk")
            try:
                with atomic_path(path) as tmp:
                    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=tuple(shape))
                    del arr
                    _preallocate(tmp, what)
            except OSError as err:
                raise FeatureFieldError(f"{path}: cannot write the feature cache ({err.strerror}); free disk space "
                                        "or use --cache-dir on a writable disk") from err
        else:
            _preallocate(path, what)  # a file written sparse by an older version
        try:
            return NpyRows(path, writable=True)
        except OSError as err:
            raise FeatureFieldError(f"{path}: cannot open the feature cache for writing ({err.strerror}); use "
                                    "--cache-dir on a writable disk") from err

    def _rows(self, entry: dict, s: int) -> slice:
        n = entry["shape"][0]
        return slice(s * self.shard_images, min(n, (s + 1) * self.shard_images))

    def _shard_ok(self, arr: NpyRows, entry: dict, s: int) -> bool:
        rec = entry["shards"].get(str(s))
        if rec is None:
            return False
        if not self.verify:
            return True
        rows = self._rows(entry, s)
        return _crc(arr.read_rows(rows.start, rows.stop - rows.start)) == rec["crc32"]

    def _reusable(self, folder: Path, index: dict, skip: str) -> dict[str, tuple[str, int, int, str]]:
        """fingerprint -> (set key, row, the row's crc32, shard) for rows in finished shards of other sets."""
        out: dict[str, tuple[str, int, int, str]] = {}
        for key, entry in index["sets"].items():
            if key == skip or not (folder / f"{key}.npy").is_file():
                continue
            per = entry["shard_images"]
            for s, rec in entry["shards"].items():
                start = int(s) * per
                for row, crc in enumerate(rec.get("rows", []), start):
                    out.setdefault(entry["fingerprints"][row], (key, row, int(crc), s))
        return out

    def _source(self, folder: Path, key: str, index: dict, cache: dict) -> NpyRows | None:
        """Set ``key``'s array, read-only, or ``None`` (with a one-line warning) when its file is broken."""
        if key not in cache:
            path = folder / f"{key}.npy"
            cache[key] = NpyRows(path) if _npy_ok(path, index["sets"][key]["shape"]) else None
            if cache[key] is None:
                warn(f"{path}: cached features are truncated or unreadable; extracting instead, and rebuilding "
                     "that set when it is next used")
                self._drop_set(folder, index["settings"], key)
        return cache[key]

    # ------------------------------------------------------------------ extraction
    def _fill(self, scene, teacher, views, arr, key, entry, todo, index, folder, size, batch_size, progress) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        reuse = self._reusable(folder, index, key)
        others: dict[str, NpyRows] = {}
        total = sum(self._rows(entry, s).stop - self._rows(entry, s).start for s in todo)

        def load(i: int) -> Tensor:
            img = scene.image(i)
            if tuple(img.shape[:2]) != size:
                raise FeatureFieldError(f"{scene.source or scene.name}: view {i} is {tuple(img.shape[:2])}, "
                                        f"others are {size}; images of one scene must share a size")
            return img.permute(2, 0, 1)

        columns = [TextColumn(f"[bold]{teacher.name}[/] features"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, disable=not progress, transient=True) as bar, ThreadPoolExecutor(4) as pool:
            task = bar.add_task("extract", total=total)
            for s in todo:
                rows = self._rows(entry, s)
                need, crcs = [], {}
                for row in range(rows.start, rows.stop):
                    hit = reuse.get(entry["fingerprints"][row])
                    src = None if hit is None else self._source(folder, hit[0], index, others)
                    if src is not None:
                        data = src.read(hit[1])  # one read: the bytes checked are the bytes copied
                        if _crc(data) == hit[2]:
                            arr.write(row, data)
                            crcs[row] = hit[2]
                            bar.advance(task)
                            continue
                        warn(f"{folder / hit[0]}.npy: a cached row fails its checksum; extracting it again")
                        self._drop_shard(folder, index["settings"], hit[0], hit[3])
                        reuse = {fp: h for fp, h in reuse.items() if h[0] != hit[0] or h[3] != hit[3]}
                    need.append(row)
                batches = [need[i:i + batch_size] for i in range(0, len(need), batch_size)]
                pending = pool.map(lambda b: torch.stack([load(views[r]) for r in b]), batches)
                for rows_b, images in zip(batches, pending):  # next batch decodes while this one runs
                    feats = teacher.extract(images[None] if images.dim() == 3 else images).to(torch.float16).cpu().numpy()
                    for r, f in zip(rows_b, feats):
                        arr.write(r, f)
                        crcs[r] = _crc(f)
                    bar.advance(task, len(rows_b))
                arr.sync()
                row_crcs = [crcs[r] for r in range(rows.start, rows.stop)]
                written = arr.read_rows(rows.start, rows.stop - rows.start)  # read back: what the disk holds
                entry["shards"][str(s)] = {"crc32": _crc(written), "rows": row_crcs, "bytes": int(written.nbytes)}
                if any(_crc(w) != c for w, c in zip(written, row_crcs)):
                    raise FeatureFieldError(f"{folder / key}.npy: features changed while being written "
                                            "(another process or a failing disk); run the command again")
                self._commit(folder, index["settings"], key, entry)
