"""Training images decoded once into a uint8 ``.npy`` file, so streaming them never pays a JPEG/PNG decode per step.

Layout under the cache folder (the feature cache's, ``--cache-dir``)::

    images/<key>.npy      [N, H, W, C] uint8: RGB composited on the background, and alpha as a 4th channel
                          when the scene has one; one row per view

The key digests the views' fingerprints (:func:`~featurefield.teachers.store.image_fingerprint`: the file,
its size and time, the downscale, masks and the background), so a changed photo or another background is
another file. The file is written once, whole, to a temporary name and renamed when complete; a file
whose size does not match its header is written again. Rows are read with positioned reads
(:class:`~featurefield.npyrows.NpyRows`), never mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from featurefield.errors import FeatureFieldError
from featurefield.io import atomic_path
from featurefield.npyrows import NpyRows, write_npy_header


def view_uint8(scene, i: int) -> np.ndarray:
    """View ``i`` as the trainer sees it: ``[H, W, 3]`` RGB composited on the background, or ``[H, W, 4]`` with
    alpha, uint8 (rounded from the loader's float image)."""
    rgb = (scene.image(i) * 255).round().to(torch.uint8)
    alpha = scene.alpha(i)
    if alpha is not None:
        rgb = torch.cat([rgb, (alpha * 255).round().to(torch.uint8)[..., None]], -1)
    return rgb.numpy()


def cached_images(scene, views: list[int], cache_dir: Path, progress: bool = True) -> NpyRows:
    """The uint8 images of ``views`` (:func:`view_uint8`) as rows ``[H, W, C]`` of the image cache, written first
    when missing.

    Raises:
        FeatureFieldError: the cache folder cannot be written or lacks the space; views differ in size.
    """
    from featurefield.teachers.store import image_fingerprint

    views = [int(v) for v in views]
    first = view_uint8(scene, views[0])
    shape = (len(views), *first.shape)
    fps = [image_fingerprint(scene, v) for v in views]
    key = hashlib.sha256(json.dumps({"fingerprints": fps, "shape": shape}).encode()).hexdigest()[:24]
    path = Path(cache_dir) / "images" / f"{key}.npy"
    if path.is_file():
        try:
            rows = NpyRows(path)
            if rows.shape == shape and rows.dtype == np.uint8:
                return rows
        except FeatureFieldError:
            pass  # truncated or broken: written again
    _write(scene, views, path, shape, progress)
    return NpyRows(path)


def _write(scene, views: list[int], path: Path, shape: tuple[int, ...], progress: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    need = int(np.prod(shape)) + 4096
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path.parent).free
    except OSError as err:
        raise FeatureFieldError(f"{path.parent}: cannot create the image cache ({err.strerror}); use --cache-dir "
                                "on a writable disk") from err
    if free < need:
        raise FeatureFieldError(f"{path.parent}: the image cache needs {need / 2**20:.0f} MiB for {shape[0]} views but "
                                f"{free / 2**20:.0f} MiB are free; free space there or use --cache-dir on a larger disk")

    def load(i: int) -> np.ndarray:
        img = view_uint8(scene, i)
        if img.shape != shape[1:]:
            raise FeatureFieldError(f"{scene.source or scene.name}: view {i} is {img.shape[:2]} with {img.shape[2]} "
                                    f"channels, others are {shape[1:3]} with {shape[3]}; images of one scene must share a "
                                    "size and alpha")
        return img

    columns = [TextColumn("[bold]images[/] decoded once"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f, ThreadPoolExecutor(4) as pool, \
                Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("decode", total=len(views))
            write_npy_header(f, shape, np.uint8)
            for start in range(0, len(views), 16):  # a few decoded at a time, written in order
                for img in pool.map(load, views[start:start + 16]):
                    f.write(img.tobytes())
                    bar.advance(task)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise FeatureFieldError(f"{path}: cannot write the image cache ({err.strerror}); free disk space or use "
                                "--cache-dir on a writable disk") from err
