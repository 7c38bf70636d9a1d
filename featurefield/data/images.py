"""Lazy image and per-pixel-array sources, so a 1,000-image scene never holds all pixels in RAM.

An :class:`ImageSource` returns ``[H, W, C]`` float32 tensors in [0, 1] (C = 3, or 4 with alpha).
:class:`ImageFiles` decodes files on demand, resizes by a downscale factor and keeps a small LRU
cache; :class:`ImageArrays` wraps images already in memory (the procedural demo scene).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from featurefield.errors import FeatureFieldError


def read_image(path: Path, downscale: float = 1.0) -> np.ndarray:
    """Decode ``path`` to uint8 ``[H, W, 3|4]``, resized by ``1/downscale`` (area filter).

    Raises:
        FeatureFieldError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureFieldError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            mode = "RGBA" if (im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)) else "RGB"
            im = im.convert(mode)
            if downscale != 1.0:
                size = (int(im.width // downscale), int(im.height // downscale))
                im = im.resize(size, Image.BOX)
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError) as err:
        raise FeatureFieldError(f"{path}: cannot read image ({err}); the file is broken or not an image") from err


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file without decoding its pixels."""
    try:
        with Image.open(path) as im:
            return im.width, im.height
    except FileNotFoundError as err:
        raise FeatureFieldError(f"{path}: image file not found") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise FeatureFieldError(f"{path}: cannot read image ({err}); the file is broken or not an image") from err


class ImageSource:
    """Base class: ``len(src)`` images, ``src.load(i) -> [H, W, C]`` float32 in [0, 1]."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> Tensor:
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> ImageSource:
        raise NotImplementedError

    def fingerprint(self, i: int) -> str:
        """A string that changes when image ``i``'s content changes (used by the feature cache)."""
        raise NotImplementedError


class ImageFiles(ImageSource):
    """Images decoded from files on demand.

    Args:
        paths: one file per view.
        downscale: integer-ish factor to shrink every image by.
        cache_size: how many decoded images to keep (LRU).
        masks: optional per-view mask files; a mask becomes the alpha channel.
    """

    def __init__(self, paths: Sequence[Path], downscale: float = 1.0, cache_size: int = 64,
                 masks: Sequence[Path | None] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.masks = list(masks) if masks is not None else None
        self.downscale = downscale
        self.cache_size = cache_size
        self._cache: OrderedDict[int, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Tensor:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        arr = read_image(self.paths[i], self.downscale)
        img = torch.from_numpy(arr.copy()).to(torch.float32) / 255.0
        if self.masks is not None and self.masks[i] is not None:
            mask = read_image(self.masks[i], self.downscale)
            m = torch.from_numpy(mask[..., 0].copy()).to(torch.float32)[..., None] / 255.0
            if m.shape[:2] != img.shape[:2]:
                raise FeatureFieldError(f"{self.masks[i]}: mask size {tuple(m.shape[:2])} differs from its image {tuple(img.shape[:2])}")
            img = torch.cat([img[..., :3], m], -1)
        if self.cache_size > 0:
            self._cache[i] = img
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return img

    def subset(self, indices: Sequence[int]) -> ImageFiles:
        masks = None if self.masks is None else [self.masks[i] for i in indices]
        return ImageFiles([self.paths[i] for i in indices], self.downscale, self.cache_size, masks)

    def fingerprint(self, i: int) -> str:
        parts = [self.paths[i]] + ([self.masks[i]] if self.masks is not None and self.masks[i] is not None else [])
        out = []
        for path in parts:  # the mask is part of the pixels: it becomes the alpha the image is composited with
            try:
                st = Path(path).stat()
            except OSError as err:
                raise FeatureFieldError(f"{path}: image file not found ({err.strerror})") from err
            out.append(f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}")
        return "+mask:".join(out) + f":{self.downscale}"


class ImageArrays(ImageSource):
    """Images already in memory, ``[H, W, C]`` float32 tensors in [0, 1]."""

    def __init__(self, images: Sequence[Tensor]) -> None:
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Tensor:
        return self.images[i]

    def subset(self, indices: Sequence[int]) -> ImageArrays:
        return ImageArrays([self.images[i] for i in indices])

    def fingerprint(self, i: int) -> str:
        import hashlib

        return hashlib.sha1(self.images[i].numpy().tobytes()).hexdigest()


class ArraySource:
    """Per-view arrays (depth, labels), lazily produced by ``loader(i) -> Tensor [H, W]``.

    ``has(i)`` says whether view ``i`` has an array at all (label maps may cover only some views);
    by default every view has one.
    """

    def __init__(self, count: int, loader: Callable[[int], Tensor], has: Callable[[int], bool] | None = None) -> None:
        self.count = count
        self.loader = loader
        self._has = has

    @staticmethod
    def from_list(arrays: Sequence[Tensor]) -> ArraySource:
        arrays = list(arrays)
        return ArraySource(len(arrays), lambda i: arrays[i])

    def __len__(self) -> int:
        return self.count

    def load(self, i: int) -> Tensor:
        return self.loader(i)

    def has(self, i: int) -> bool:
        return True if self._has is None else bool(self._has(i))

    def subset(self, indices: Sequence[int]) -> ArraySource:
        indices = list(indices)
        return ArraySource(len(indices), lambda j: self.loader(indices[j]), lambda j: self.has(indices[j]))
