"""The on-disk format of a generated category, read lazily: shards of instances, memory-mapped.

Layout::

    OUT/index.json              format, category, parts, keypoints, views, size, seed, split, shards
    OUT/shard-00000/rgb.npy     uint8   [n, V, H, W, 3]
    OUT/shard-00000/depth.npy   float16 [n, V, H, W]     z-depth, 0 on background
    OUT/shard-00000/parts.npy   uint8   [n, V, H, W]     part labels, 0 background
    OUT/shard-00000/c2w.npy     float32 [n, V, 4, 4]     OpenCV camera-to-world
    OUT/shard-00000/intrinsics.npy  float32 [n, V, 4]    fx, fy, cx, cy (pixels, centres at +0.5)
    OUT/shard-00000/keypoints.npy   float32 [n, K, 3]    named keypoints in the object frame
    OUT/shard-00000/visible.npy     bool    [n, V, K]    keypoint visible in the view (depth test)
    OUT/shard-00000/uv.npy          float32 [n, V, K, 2] keypoint projections

A shard is written to a temporary folder and renamed when complete, and ``index.json`` last, so an
interrupted generation leaves only whole shards and is resumed by running it again. Readers open a
shard's arrays with ``np.load(mmap_mode="r")``: only the views a batch uses are read from disk.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError

FORMAT = "featurefield-category-v1"
INDEX = "index.json"
ARRAYS = ("rgb", "depth", "parts", "c2w", "intrinsics", "keypoints", "visible", "uv")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def write_shard(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write one shard's arrays to ``folder`` atomically (a temporary folder renamed when complete)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in ARRAYS:
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, arrays[name])
                f.flush()
                os.fsync(f.fileno())
        if folder.exists():  # a stale shard of an older generation: replaced whole
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class CategoryData:
    """A generated category folder (see module doc), opened lazily.

    Attributes:
        path: the folder; index: the parsed ``index.json``; count: instances; views, size: per instance;
        parts: part names (0 = background); keypoint_names, keypoint_parts: per keypoint.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.is_file():
            raise FeatureFieldError(f"{self.path}: not a generated category (no {INDEX}); "
                                    "make one with `featurefield make-category mugs OUT`")
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as err:
            raise FeatureFieldError(f"{index_path}: broken JSON ({err}); generate the category again") from err
        if self.index.get("format") != FORMAT:
            raise FeatureFieldError(f"{index_path}: format {self.index.get('format')!r} is not {FORMAT!r}; "
                                    "generate the category again with this featurefield")
        self.count = int(self.index["instances"])
        self.views = int(self.index["views"])
        self.size = int(self.index["size"])
        self.parts = list(self.index["parts"])
        self.keypoint_names = list(self.index["keypoints"])
        self.keypoint_parts = list(self.index["keypoint_parts"])
        self.shard_size = int(self.index["shard_size"])
        self.background = tuple(self.index["background"])
        self._shards: dict[int, dict[str, np.ndarray]] = {}

    @property
    def category(self) -> str:
        return self.index["category"]

    def split(self, name: str) -> list[int]:
        """Instance ids of ``"train"``, ``"test"`` or ``"all"``."""
        if name == "all":
            return list(range(self.count))
        if name not in self.index["split"]:
            raise FeatureFieldError(f"{self.path}: no split {name!r}; splits are train, test, all")
        lo, hi = self.index["split"][name]
        return list(range(lo, hi))

    def shard(self, k: int) -> dict[str, np.ndarray]:
        """Shard ``k``'s arrays, memory-mapped (read-only)."""
        if k not in self._shards:
            folder = self.path / shard_name(k)
            try:
                self._shards[k] = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
            except (OSError, ValueError) as err:
                raise FeatureFieldError(f"{folder}: missing or broken shard ({err}); run the generation again "
                                        "with the same arguments to complete it") from err
        return self._shards[k]

    def locate(self, i: int) -> tuple[dict[str, np.ndarray], int]:
        if not 0 <= i < self.count:
            raise FeatureFieldError(f"{self.path}: no instance {i}; it has {self.count} (0..{self.count - 1})")
        return self.shard(i // self.shard_size), i % self.shard_size

    def instance(self, i: int, views: list[int] | None = None) -> dict[str, Tensor]:
        """Instance ``i`` (optionally some views only) as tensors: ``rgb [V, H, W, 3]`` float in [0, 1],
        ``depth [V, H, W]``, ``parts [V, H, W]`` int64, ``keypoints [K, 3]``, ``visible [V, K]``, ``uv [V, K, 2]``
        and ``cameras`` (:class:`Cameras` of those views)."""
        arrays, j = self.locate(i)
        sel = list(range(self.views)) if views is None else list(views)
        out = {
            "rgb": torch.from_numpy(np.array(arrays["rgb"][j, sel])).float() / 255.0,
            "depth": torch.from_numpy(np.asarray(arrays["depth"][j, sel], dtype=np.float32)),
            "parts": torch.from_numpy(np.asarray(arrays["parts"][j, sel], dtype=np.int64)),
            "keypoints": torch.from_numpy(np.array(arrays["keypoints"][j])),
            "visible": torch.from_numpy(np.array(arrays["visible"][j, sel])),
            "uv": torch.from_numpy(np.array(arrays["uv"][j, sel])),
        }
        out["cameras"] = cameras_from_arrays(np.asarray(arrays["c2w"][j, sel]), np.asarray(arrays["intrinsics"][j, sel]),
                                             self.size)
        return out


def cameras_from_arrays(c2w: np.ndarray, intrinsics: np.ndarray, size: int) -> Cameras:
    """:class:`Cameras` from ``c2w [V, 4, 4]`` and ``intrinsics [V, 4]`` (fx, fy, cx, cy) of ``size``-pixel squares."""
    intr = torch.from_numpy(np.array(intrinsics, dtype=np.float32))
    return Cameras(c2w=torch.from_numpy(np.array(c2w, dtype=np.float32)), fx=intr[:, 0], fy=intr[:, 1],
                   cx=intr[:, 2], cy=intr[:, 3], width=size, height=size)


class InstanceStream(IterableDataset):
    """An endless stream of training samples over a category's instances, read lazily from the shards.

    Each sample is one instance with ``sources`` source views and one target view, chosen at random:
    ``src_rgb [S, H, W, 3]`` uint8, ``src_c2w [S, 4, 4]``, ``src_intr [S, 4]``, ``tgt_rgb [H, W, 3]`` uint8,
    ``tgt_c2w [4, 4]``, ``tgt_intr [4]``, ``tgt_mask [H, W]`` bool (the object's pixels), ``instance`` int,
    ``src_views [S]`` and ``tgt_view`` (view indices).

    Shards are visited in a random order per pass and split between DataLoader workers, so each worker
    keeps only its own shards mapped; within a shard instances come in a random order. ``seed`` and
    ``start`` (samples already drawn, e.g. the resumed step x batch) decide the order.
    """

    def __init__(self, path: str | Path, split: str = "train", sources: int = 1, seed: int = 0, start: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.split = split
        self.sources = int(sources)
        self.seed = int(seed)
        self.start = int(start)
        data = CategoryData(self.path)
        if data.views < self.sources + 1:
            raise FeatureFieldError(f"{self.path}: {data.views} views per instance; {self.sources} source views and a "
                                    "target need more (generate with more --views)")
        if not data.split(split):
            raise FeatureFieldError(f"{self.path}: the {split!r} split is empty")

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        data = CategoryData(self.path)
        info = get_worker_info()
        wid, nworkers = (0, 1) if info is None else (info.id, info.num_workers)
        ids = set(data.split(self.split))
        shards = [k for k in range(math.ceil(data.count / data.shard_size))
                  if any(k * data.shard_size + j in ids for j in range(data.shard_size))]
        mine = shards[wid::nworkers] or shards  # more workers than shards: some workers share
        rng = np.random.default_rng([self.seed, self.start, wid])
        while True:
            for k in rng.permutation(mine):
                arrays = data.shard(int(k))
                members = [j for j in range(arrays["rgb"].shape[0]) if k * data.shard_size + j in ids]
                for j in rng.permutation(members):
                    views = rng.choice(data.views, size=self.sources + 1, replace=False)
                    src, tgt = np.sort(views[:-1]), int(views[-1])
                    yield {
                        "src_rgb": torch.from_numpy(np.array(arrays["rgb"][j, src])),
                        "src_c2w": torch.from_numpy(np.array(arrays["c2w"][j, src])),
                        "src_intr": torch.from_numpy(np.array(arrays["intrinsics"][j, src])),
                        "tgt_rgb": torch.from_numpy(np.array(arrays["rgb"][j, tgt])),
                        "tgt_c2w": torch.from_numpy(np.array(arrays["c2w"][j, tgt])),
                        "tgt_intr": torch.from_numpy(np.array(arrays["intrinsics"][j, tgt])),
                        "tgt_mask": torch.from_numpy(np.asarray(arrays["depth"][j, tgt]) > 0),
                        "instance": int(k) * data.shard_size + int(j),
                        "src_views": torch.from_numpy(src.astype(np.int64)),
                        "tgt_view": tgt,
                    }
