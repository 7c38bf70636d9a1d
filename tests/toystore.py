"""A cheap deterministic teacher and a tiny scene for the feature-cache tests."""

from __future__ import annotations

import torch

from featurefield.cameras import Cameras
from featurefield.data.images import ImageArrays
from featurefield.data.scene import Normalization, Scene
from featurefield.teachers.base import Teacher


class Pooled(Teacher):
    """A cheap deterministic teacher: 4x4 average pooling of colour plus a setting-dependent offset."""

    name = "pooled"
    dim = 3

    def __init__(self, offset: float = 0.0, fail_after: int | None = None):
        self.offset = offset
        self.fail_after = fail_after
        self.images_seen = 0
        self.calls = 0

    def feature_grid(self, height, width):
        return height // 4, width // 4

    def extract(self, images):
        self.calls += 1
        if self.fail_after is not None and self.images_seen >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.images_seen += len(images)
        return torch.nn.functional.avg_pool2d(images, 4) + self.offset

    def settings(self):
        return {"name": self.name, "dim": self.dim, "offset": self.offset}


def make_scene(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(16, 12, 3, generator=g) for _ in range(n)]
    c2w = torch.eye(4).repeat(n, 1, 1)
    cams = Cameras(c2w=c2w, fx=10.0, fy=10.0, cx=6.0, cy=8.0, width=12, height=16)
    return Scene(cameras=cams, images=ImageArrays(imgs), split={"train": list(range(n)), "test": []},
                 normalization=Normalization.identity())


def expected(scene, views, offset=0.0):
    x = torch.stack([scene.image(i).permute(2, 0, 1) for i in views])
    return (torch.nn.functional.avg_pool2d(x, 4) + offset).half()
