"""Resample a scene with lens distortion to pinhole cameras (for backends that need pinhole).

The pinhole cameras keep each view's ``K`` and size. Output pixel ``(u, v)`` looks along the ray
of the pinhole camera; that ray meets the distorted image at
``distort((u - cx) / fx, (v - cy) / fy) * f + c``, where the source image is sampled
(bilinear for colour and alpha, nearest for depth and labels). Pixels whose source lies outside
the original image are black (and transparent where the image has alpha), of unknown depth (0) and
unlabelled (-1). Images are resampled lazily, view by view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.data.images import ArraySource, ImageSource
from featurefield.data.scene import Scene


def undistort_grid(cameras: Cameras, i: int) -> Tensor:
    """Sampling grid for :func:`torch.nn.functional.grid_sample` (``align_corners=False``).

    Returns:
        ``[1, H, W, 2]`` positions in the distorted image of view ``i``, in [-1, 1] units.
    """
    grid = cameras.pixel_grid(i)  # [H, W, 2] pixel centres
    fx, fy, cx, cy = cameras.fx[i], cameras.fy[i], cameras.cx[i], cameras.cy[i]
    xy = torch.stack([(grid[..., 0] - cx) / fx, (grid[..., 1] - cy) / fy], -1)
    H, W = grid.shape[:2]
    xy_d = cameras[i].distort(xy.reshape(1, -1, 2)).reshape(H, W, 2)
    u = xy_d[..., 0] * fx + cx
    v = xy_d[..., 1] * fy + cy
    # align_corners=False: -1 is the left edge of pixel 0 (u = 0), +1 the right edge of the last (u = W).
    return torch.stack([2 * u / W - 1, 2 * v / H - 1], -1)[None]


def _sample(image: Tensor, grid: Tensor, mode: str) -> Tensor:
    """Sample ``image`` ``[H, W]`` or ``[H, W, C]`` at ``grid`` ``[1, H', W', 2]``."""
    squeeze = image.ndim == 2
    x = image[..., None] if squeeze else image
    dtype = x.dtype
    out = F.grid_sample(x.permute(2, 0, 1)[None].to(torch.float32), grid.to(x.device), mode=mode,
                        padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0)
    out = out.to(dtype) if not dtype.is_floating_point else out
    return out[..., 0] if squeeze else out


class UndistortedImages(ImageSource):
    """Lazily resampled view of another :class:`ImageSource` (see module docstring)."""

    def __init__(self, source: ImageSource, cameras: Cameras, mode: str = "bilinear") -> None:
        self.source = source
        self.cameras = cameras
        self.mode = mode

    def __len__(self) -> int:
        return len(self.source)

    def load(self, i: int) -> Tensor:
        return _sample(self.source.load(i), undistort_grid(self.cameras, i), self.mode)

    def subset(self, indices: Sequence[int]) -> UndistortedImages:
        return UndistortedImages(self.source.subset(indices), self.cameras[list(indices)], self.mode)

    def fingerprint(self, i: int) -> str:
        d = ",".join(f"{float(x):.9g}" for x in self.cameras.distortion[i])
        return f"{self.source.fingerprint(i)}:undistorted[{self.cameras.model}:{d}]"


def _undistort_arrays(source: ArraySource | None, cameras: Cameras, labels: bool = False) -> ArraySource | None:
    """Nearest resampling of per-view arrays; outside the original image depth is 0 (unknown) and labels are
    -1 (unlabelled, so no class is claimed for pixels the camera never saw)."""
    if source is None:
        return None
    shift = 1 if labels else 0  # zero padding lands on -1 after the shift back

    def load(i: int) -> Tensor:
        return _sample(source.load(i) + shift, undistort_grid(cameras, i), "nearest") - shift

    return ArraySource(len(source), load, source.has)


def undistort_scene(scene: Scene) -> Scene:
    """The same scene seen through pinhole cameras with the same intrinsics.

    Args:
        scene: any scene; a pinhole scene is returned unchanged.

    Returns:
        A :class:`Scene` whose cameras have ``model == "pinhole"``, with images (and depth and
        label maps) resampled on load; poses, split, points and normalization are kept.
    """
    if not scene.cameras.is_distorted:
        return scene
    cams = scene.cameras
    pinhole = replace(cams, model="pinhole", distortion=torch.zeros_like(cams.distortion), c2w=cams.c2w.clone())
    out = replace(
        scene,
        cameras=pinhole,
        images=UndistortedImages(scene.images, cams),
        depths=_undistort_arrays(scene.depths, cams),
        semantics=_undistort_arrays(scene.semantics, cams, labels=True),
        instances=_undistort_arrays(scene.instances, cams, labels=True),
        metadata={**scene.metadata, "undistorted_from": cams.model},
    )
    return out
