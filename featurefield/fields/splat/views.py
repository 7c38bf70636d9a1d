"""Pinhole views as the rasterizers take them, prepared once for all training views.

Indexing a :class:`~featurefield.cameras.Cameras` batch on the GPU and building its matrices costs
a few dozen small kernels and two host synchronisations (the image size); a training step instead
picks a ready :class:`View`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from featurefield.cameras import Cameras


@dataclass(frozen=True)
class View:
    """One pinhole camera.

    Attributes:
        viewmat: world-to-camera matrix ``[4, 4]`` (OpenCV axes).
        K: intrinsics ``[3, 3]``.
        campos: camera centre in world coordinates ``[3]`` (view directions of the SH colours).
        width, height: image size in pixels.
    """

    viewmat: Tensor
    K: Tensor
    campos: Tensor
    width: int
    height: int

    def resized(self, width: int, height: int) -> View:
        """The same camera for an image of ``width x height`` pixels (intrinsics scaled per axis)."""
        if (width, height) == (self.width, self.height):
            return self
        scale = torch.tensor([[width / self.width], [height / self.height], [1.0]], device=self.K.device)
        return View(self.viewmat, self.K * scale, self.campos, int(width), int(height))


def views_of(cameras: Cameras, device: torch.device | str | None = None) -> list[View]:
    """One :class:`View` per camera (pinhole part; distortion is not applied by the rasterizers)."""
    cams = cameras if device is None else cameras.to(device)
    viewmats, Ks, centers = cams.w2c(), cams.K(), cams.centers
    sizes = torch.stack([cams.width, cams.height], -1).tolist()
    return [View(viewmats[i], Ks[i], centers[i], int(w), int(h)) for i, (w, h) in enumerate(sizes)]
