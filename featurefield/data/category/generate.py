"""Generating a category: ``generate_category("mugs", 1000, "data/mugs")`` renders instances into shards.

Instance ``i`` of a generation depends only on ``(seed, i)`` (its shape, texture, lighting and cameras
come from ``np.random.default_rng([seed, i])``), so any shard can be rendered alone, in any order, by
any number of processes, and re-running an interrupted generation completes it with identical data.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from featurefield.data.category.render import Lighting, random_cameras, render_instance
from featurefield.data.category.shapes import CATEGORIES
from featurefield.data.category.shards import FORMAT, INDEX, shard_name, write_shard
from featurefield.errors import FeatureFieldError


def render_instance_arrays(category: str, i: int, seed: int, views: int, size: int, supersample: int = 2,
                           background=(1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """Build and render instance ``i`` of a generation; arrays as stored in a shard (without the leading ``n``)."""
    cat = CATEGORIES[category]
    rng = np.random.default_rng([int(seed), int(i)])
    inst = cat.build(rng)
    cams = random_cameras(views, size, rng)
    light = Lighting.random(rng)
    out = render_instance(inst, cams, light, background=background, supersample=supersample)
    intr = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], -1)
    return {
        "rgb": (out["rgb"] * 255).round().clamp(0, 255).to(torch.uint8).numpy(),
        "depth": out["depth"].numpy().astype(np.float16),
        "parts": out["parts"].numpy().astype(np.uint8),
        "c2w": cams.c2w.numpy(),
        "intrinsics": intr.numpy(),
        "keypoints": torch.stack([k.position for k in inst.keypoints]).numpy(),
        "visible": out["keypoints_visible"].numpy(),
        "uv": out["keypoints_uv"].numpy().astype(np.float32),
    }


def _render_shard(job: tuple) -> int:
    out, k, lo, hi, category, seed, views, size, supersample, background = job
    torch.set_num_threads(1)  # many small elementwise ops: one thread per process is fastest
    items = [render_instance_arrays(category, i, seed, views, size, supersample, background) for i in range(lo, hi)]
    write_shard(Path(out) / shard_name(k), {name: np.stack([it[name] for it in items]) for name in items[0]})
    return hi - lo


def generate_category(category: str, n: int, out: str | Path, views: int = 16, size: int = 128, seed: int = 0,
                      shard_size: int = 64, test_instances: int | None = None, supersample: int = 2,
                      workers: int | None = None, background=(1.0, 1.0, 1.0), progress: bool = True) -> Path:
    """Render ``n`` random instances of ``category`` into shards under ``out`` (see :mod:`.shards`).

    Args:
        category: a key of :data:`~featurefield.data.category.shapes.CATEGORIES` (``mugs``, ``chairs``).
        n: instances; views: views per instance (random azimuth and elevation); size: square image side.
        seed: the generation's seed (instance ``i`` depends only on ``seed`` and ``i``).
        shard_size: instances per shard file. test_instances: the last ones held out (default 10%, >= 1).
        supersample: RGB rays per pixel along each axis. workers: processes (default: the CPU count).
        background: RGB in [0, 1] where rays miss. progress: show a progress bar.
    Returns:
        ``out``. Shards already complete (from an interrupted run with the same arguments) are kept.
    """
    if category not in CATEGORIES:
        raise FeatureFieldError(f"unknown category {category!r}; available: {', '.join(CATEGORIES)}")
    n, views, size, shard_size = int(n), int(views), int(size), int(shard_size)
    if n < 2:
        raise FeatureFieldError(f"make-category: needs at least 2 instances, got {n}")
    if views < 2 or size < 16 or shard_size < 1 or supersample < 1:
        raise FeatureFieldError(f"make-category: needs views >= 2, size >= 16, shard size >= 1 and supersample >= 1 "
                                f"(got {views}, {size}, {shard_size}, {supersample})")
    test = max(1, n // 10) if test_instances is None else int(test_instances)
    if not 1 <= test < n:
        raise FeatureFieldError(f"make-category: test instances must be between 1 and {n - 1}, got {test}")
    out = Path(out)
    cat = CATEGORIES[category]
    settings = {"format": FORMAT, "category": category, "instances": n, "views": views, "size": size, "seed": int(seed),
                "shard_size": shard_size, "supersample": int(supersample), "background": [float(c) for c in background]}
    index_path = out / INDEX
    if index_path.is_file():
        old = json.loads(index_path.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise FeatureFieldError(f"{out}: holds another generation ({old.get('category')}, {old.get('instances')} "
                                    "instances, ...); choose a new folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(n / shard_size)
    jobs = [(str(out), k, k * shard_size, min(n, (k + 1) * shard_size), category, int(seed), views, size,
             int(supersample), tuple(background)) for k in range(shards) if not (out / shard_name(k) / "uv.npy").is_file()]
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"render {category}", total=n, completed=n - sum(j[3] - j[2] for j in jobs))
        if workers == 1:
            for job in jobs:
                bar.advance(task, _render_shard(job))
        elif jobs:
            with ProcessPoolExecutor(workers) as pool:
                for done in pool.map(_render_shard, jobs):
                    bar.advance(task, done)
    index = {**settings, "parts": list(cat.parts), "keypoints": list(cat.keypoints),
             "keypoint_parts": [int(p) for p in _keypoint_parts(category, seed)],
             "split": {"train": [0, n - test], "test": [n - test, n]},
             "shards": [{"name": shard_name(k), "instances": min(n, (k + 1) * shard_size) - k * shard_size}
                        for k in range(shards)],
             "arrays": {"rgb": "uint8 [n,V,H,W,3]", "depth": "float16 [n,V,H,W] z-depth", "parts": "uint8 [n,V,H,W]",
                        "c2w": "float32 [n,V,4,4] OpenCV", "intrinsics": "float32 [n,V,4] fx fy cx cy",
                        "keypoints": "float32 [n,K,3]", "visible": "bool [n,V,K]", "uv": "float32 [n,V,K,2]"}}
    from featurefield.io import atomic_write_json

    atomic_write_json(index_path, index)
    return out


def _keypoint_parts(category: str, seed: int) -> list[int]:
    """The part label of each keypoint (the same on every instance of a category)."""
    inst = CATEGORIES[category].build(np.random.default_rng([int(seed), 0]))
    return [k.part for k in inst.keypoints]
