"""FeatureStore: teacher features extracted once, kept on disk in fp16, memory-mapped.

Layout under the cache folder (``$FEATUREFIELD_CACHE``, else ``~/.cache/featurefield/features``)::

    <teacher>-<hash of teacher.settings()>/
        index.json              settings + one entry per feature set (atomic writes)
        <set key>.npy           [N, D, h, w] float16, one row per view, memory-mapped

A *feature set* is keyed by the ordered image fingerprints of the requested views
(``scene.images.fingerprint(i)``, else a hash of the pixels). Its rows are written in **shards**
of ``shard_images`` consecutive rows; a shard counts as done only once its rows are flushed and
its crc32 and size are in the index, so an interrupted extraction resumes at the first unfinished
shard, and a truncated file or a shard whose checksum no longer matches is extracted again.
Rows whose image fingerprint already sits in a finished shard of another set (a different split,
or a scene where one image changed) are copied instead of re-extracted.

Processes sharing a cache take turns per feature set through an advisory lock on ``.lock-<set key>``
(POSIX; elsewhere no lock): of two evaluations asking for the same views, the second finds the first's
shards done, while processes extracting different sets (the ranks of a sharded extraction) run side
by side. Updates of ``index.json`` re-read it under ``.lock`` and change only their own set.

Teacher input is ``scene.image(i)`` (``[H, W, 3]``, RGBA composited on the background) as a
``[1, 3, H, W]`` batch row; the images of a scene share one size.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError
from featurefield.io import atomic_path, atomic_write_json
from featurefield.teachers.base import Teacher

INDEX_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("FEATUREFIELD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "featurefield" / "features"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def image_fingerprint(scene, i: int) -> str:
    """Content fingerprint of view ``i``: the source's own, else sha1 of the pixels."""
    try:
        return str(scene.images.fingerprint(i))
    except (NotImplementedError, AttributeError):
        return hashlib.sha1(scene.image(i).numpy().tobytes()).hexdigest()


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
        """Features of ``views``, extracting only what is not cached.

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
        views = list(range(len(scene))) if views is None else [int(v) for v in views]
        if not views:
            raise FeatureFieldError("FeatureStore: no views requested")
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        teacher.to(device)
        settings = teacher.settings()
        folder = self.teacher_dir(teacher)
        folder.mkdir(parents=True, exist_ok=True)
        fps = [image_fingerprint(scene, v) for v in views]
        key = _digest(fps)[:24]
        with _folder_lock(folder, f".lock-{key}"):
            return self._load_or_extract_locked(scene, teacher, views, fps, key, folder, settings, batch_size, progress)

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
            atomic_write_json(folder / "index.json", index, indent=1)

    def _load_or_extract_locked(self, scene, teacher, views, fps, key, folder, settings, batch_size, progress) -> Tensor:
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
        if todo:
            self._fill(scene, teacher, views, arr, key, entry, todo, index, folder, (H, W), batch_size, progress)
        del arr
        return torch.from_numpy(np.load(path, mmap_mode="c"))

    # ------------------------------------------------------------------ file handling
    def _open(self, path: Path, shape: list[int], entry: dict) -> np.memmap:
        """Open the set's array for writing; (re)create it when missing, truncated or of another shape."""
        expected = None
        if path.is_file():
            try:
                size = path.stat().st_size  # before opening: numpy's r+ mode silently extends a short file
                arr = np.load(path, mmap_mode="r")
                if list(arr.shape) == shape and arr.dtype == np.float16 and size == arr.offset + arr.nbytes:
                    del arr
                    expected = np.load(path, mmap_mode="r+")
            except (ValueError, OSError, EOFError):
                pass  # truncated or broken header: recreate below
        if expected is None:
            entry["shards"] = {}
            with atomic_path(path) as tmp:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=tuple(shape))
                arr.flush()
                del arr
            expected = np.load(path, mmap_mode="r+")
        return expected

    def _rows(self, entry: dict, s: int) -> slice:
        n = entry["shape"][0]
        return slice(s * self.shard_images, min(n, (s + 1) * self.shard_images))

    def _shard_ok(self, arr: np.memmap, entry: dict, s: int) -> bool:
        rec = entry["shards"].get(str(s))
        if rec is None:
            return False
        if not self.verify:
            return True
        return zlib.crc32(np.ascontiguousarray(arr[self._rows(entry, s)]).view(np.uint8)) == rec["crc32"]

    def _reusable(self, folder: Path, index: dict, skip: str) -> dict[str, tuple[str, int]]:
        """fingerprint -> (set key, row) for rows in finished shards of other sets."""
        out: dict[str, tuple[str, int]] = {}
        for key, entry in index["sets"].items():
            if key == skip or not (folder / f"{key}.npy").is_file():
                continue
            per = entry["shard_images"]
            for s in entry["shards"]:
                for row in range(int(s) * per, min(entry["shape"][0], (int(s) + 1) * per)):
                    out.setdefault(entry["fingerprints"][row], (key, row))
        return out

    # ------------------------------------------------------------------ extraction
    def _fill(self, scene, teacher, views, arr, key, entry, todo, index, folder, size, batch_size, progress) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        reuse = self._reusable(folder, index, key)
        others: dict[str, np.ndarray] = {}
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
                need = []
                for row in range(rows.start, rows.stop):
                    hit = reuse.get(entry["fingerprints"][row])
                    if hit is None:
                        need.append(row)
                        continue
                    src = others.get(hit[0])
                    if src is None:
                        src = others[hit[0]] = np.load(folder / f"{hit[0]}.npy", mmap_mode="r")
                    arr[row] = src[hit[1]]
                    bar.advance(task)
                batches = [need[i:i + batch_size] for i in range(0, len(need), batch_size)]
                pending = pool.map(lambda b: torch.stack([load(views[r]) for r in b]), batches)
                for rows_b, images in zip(batches, pending):  # next batch decodes while this one runs
                    feats = teacher.extract(images[None] if images.dim() == 3 else images)
                    arr[rows_b] = feats.to(torch.float16).cpu().numpy()
                    bar.advance(task, len(rows_b))
                arr.flush()
                entry["shards"][str(s)] = {"crc32": zlib.crc32(np.ascontiguousarray(arr[rows]).view(np.uint8)),
                                           "bytes": int(arr[rows].nbytes)}
                self._commit(folder, index["settings"], key, entry)
