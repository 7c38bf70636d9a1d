"""The Scene: posed images, split, optional points, depth and labels, and the recorded normalization.

A :class:`Scene` is what every loader returns and what every later stage consumes. Cameras and
points are kept in the scene's **original world frame**; :class:`Normalization` maps that frame into
the canonical box that fields train in, and back, so every export and 3D answer can be given in the
original frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.data.images import ArraySource, ImageSource
from featurefield.errors import FeatureFieldError


@dataclass
class Normalization:
    """A similarity ``canonical = (world - center) * scale`` (no rotation).

    Attributes:
        center: ``[3]`` world-space centre.
        scale: world-to-canonical scale factor.
    """

    center: Tensor
    scale: float

    @staticmethod
    def identity() -> Normalization:
        return Normalization(torch.zeros(3), 1.0)

    @staticmethod
    def fit(cameras: Cameras, points: Tensor | None = None, bounds: Tensor | None = None) -> Normalization:
        """Centre and scale so the cameras lie within the unit sphere.

        The centre is the middle of ``bounds`` when given (bounded synthetic scenes), else the mean of
        camera centres. The scale puts the farthest camera at distance 1.
        """
        centers = cameras.centers
        if bounds is not None:
            center = bounds.mean(0)
        else:
            center = centers.mean(0)
        radius = float((centers - center).norm(dim=-1).max())
        if not np.isfinite(radius) or radius <= 0:
            radius = 1.0
        return Normalization(center.to(torch.float32), 1.0 / radius)

    def to_canonical(self, points: Tensor) -> Tensor:
        """World ``[..., 3]`` -> canonical ``[..., 3]``."""
        return (points - self.center.to(points)) * self.scale

    def to_world(self, points: Tensor) -> Tensor:
        """Canonical ``[..., 3]`` -> world ``[..., 3]``."""
        return points / self.scale + self.center.to(points)

    def cameras_to_canonical(self, cameras: Cameras) -> Cameras:
        c2w = cameras.c2w.clone()
        c2w[:, :3, 3] = self.to_canonical(c2w[:, :3, 3])
        return cameras.with_poses(c2w)

    def cameras_to_world(self, cameras: Cameras) -> Cameras:
        c2w = cameras.c2w.clone()
        c2w[:, :3, 3] = self.to_world(c2w[:, :3, 3])
        return cameras.with_poses(c2w)

    def matrix(self) -> Tensor:
        """World-to-canonical as a ``[4, 4]`` homogeneous matrix."""
        m = torch.eye(4) * self.scale
        m[3, 3] = 1.0
        m[:3, 3] = -self.center * self.scale
        return m

    def to_dict(self) -> dict:
        return {"center": [float(x) for x in self.center], "scale": float(self.scale)}

    @staticmethod
    def from_dict(d: dict) -> Normalization:
        return Normalization(torch.tensor(d["center"], dtype=torch.float32), float(d["scale"]))


@dataclass
class PointCloud:
    """Sparse points in world coordinates: ``xyz [P, 3]`` float32, ``rgb [P, 3]`` float32 in [0, 1]."""

    xyz: Tensor
    rgb: Tensor


@dataclass
class Scene:
    """Posed images of one scene.

    Attributes:
        cameras: ``N`` cameras in the original world frame (OpenCV convention).
        images: lazy source of ``[H, W, 3|4]`` float32 images in [0, 1] (RGBA where alpha is given).
        split: view indices per split, at least ``"train"`` and ``"test"``.
        normalization: world -> canonical transform recorded with every run.
        points: optional sparse points (SfM, or sampled from a mesh for synthetic scenes).
        depths: optional ``[H, W]`` z-depth maps (world units; 0 or inf where unknown).
        semantics, instances: optional ``[H, W]`` int64 label maps; -1 marks unlabelled pixels (left out of
            every metric), and ``semantics.has(i)`` says whether view ``i`` is labelled at all
            (:mod:`featurefield.data.labels` reads them from files).
        class_names: names of semantic classes, index = label value.
        background_instances: instance ids that are not objects (no prompt is drawn from them).
        bounds: optional ``[2, 3]`` world AABB of the content (bounded synthetic scenes).
        background: RGB in [0, 1] used to composite RGBA images (None: images are opaque).
        name, format, source: for messages and run records.
    """

    cameras: Cameras
    images: ImageSource
    split: dict[str, list[int]]
    normalization: Normalization
    points: PointCloud | None = None
    depths: ArraySource | None = None
    semantics: ArraySource | None = None
    instances: ArraySource | None = None
    class_names: list[str] | None = None
    background_instances: tuple[int, ...] = (0,)
    bounds: Tensor | None = None
    background: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    name: str = "scene"
    format: str = "unknown"
    source: Path | None = None
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cameras)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.cameras):
            raise FeatureFieldError(
                f"{self.source or self.name}: {len(self.images)} images but {len(self.cameras)} cameras"
            )
        if len(self.cameras) < 2:
            raise FeatureFieldError(f"{self.source or self.name}: needs at least two views, found {len(self.cameras)}")

    @property
    def train(self) -> list[int]:
        return self.split["train"]

    @property
    def test(self) -> list[int]:
        return self.split["test"]

    def rgba(self, i: int) -> Tensor:
        """Raw image ``i`` as stored: ``[H, W, 3]`` or ``[H, W, 4]`` float32 in [0, 1]."""
        return self.images.load(i)

    def image(self, i: int) -> Tensor:
        """Image ``i`` as ``[H, W, 3]`` float32 in [0, 1], RGBA composited on :attr:`background`."""
        img = self.images.load(i)
        if img.shape[-1] == 4:
            rgb, a = img[..., :3], img[..., 3:]
            bg = torch.tensor(self.background if self.background is not None else (1.0, 1.0, 1.0))
            return rgb * a + bg * (1 - a)
        return img

    def alpha(self, i: int) -> Tensor | None:
        """Alpha mask ``[H, W]`` in [0, 1], or ``None`` where images are opaque."""
        img = self.images.load(i)
        return img[..., 3] if img.shape[-1] == 4 else None

    def depth(self, i: int) -> Tensor | None:
        return None if self.depths is None else self.depths.load(i)

    def semantic(self, i: int) -> Tensor | None:
        """Semantic labels ``[H, W]`` int64 of view ``i`` (-1: unlabelled), or ``None`` where the view has none."""
        return None if self.semantics is None or not self.semantics.has(i) else self.semantics.load(i)

    def instance(self, i: int) -> Tensor | None:
        """Instance ids ``[H, W]`` int64 of view ``i`` (-1: unlabelled), or ``None`` where the view has none."""
        return None if self.instances is None or not self.instances.has(i) else self.instances.load(i)

    def labelled_views(self, views: list[int]) -> list[int]:
        """Those of ``views`` that have a semantic label map (without decoding any)."""
        return [] if self.semantics is None else [v for v in views if self.semantics.has(v)]

    def canonical_cameras(self) -> Cameras:
        """Cameras in the canonical (normalized) frame that fields train in."""
        return self.normalization.cameras_to_canonical(self.cameras)

    def canonical_bounds(self) -> Tensor | None:
        return None if self.bounds is None else self.normalization.to_canonical(self.bounds)

    def canonical_points(self) -> PointCloud | None:
        if self.points is None:
            return None
        return PointCloud(self.normalization.to_canonical(self.points.xyz), self.points.rgb)

    def subset(self, indices: list[int]) -> Scene:
        """A scene of the given views only (split re-indexed; indices outside the split are dropped)."""
        remap = {old: new for new, old in enumerate(indices)}
        return Scene(
            cameras=self.cameras[list(indices)],
            images=self.images.subset(indices),
            split={k: [remap[i] for i in v if i in remap] for k, v in self.split.items()},
            normalization=self.normalization,
            points=self.points,
            depths=None if self.depths is None else self.depths.subset(indices),
            semantics=None if self.semantics is None else self.semantics.subset(indices),
            instances=None if self.instances is None else self.instances.subset(indices),
            class_names=self.class_names, background_instances=self.background_instances, bounds=self.bounds,
            background=self.background,
            name=self.name, format=self.format, source=self.source, metadata=dict(self.metadata),
        )
