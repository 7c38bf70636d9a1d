"""Lift 2D masks to a 3D selection of Gaussians / points, and act on it.

A point (a Gaussian centre, or a NeRF sample from :meth:`FeatureField.points_with_features`) votes
for a view when it projects inside the image, in front of the camera, and is *visible*: its z-depth
is not behind the field's rendered surface depth at that pixel by more than
``rel_tol * depth + abs_tol`` (pixels where the render is empty see nothing). It is inside when, in addition,
its pixel is in the view's mask.
Across several views, a point is selected when it is inside in at least ``min_votes`` views and in
at least ``min_ratio`` of the views where it is visible (views that cannot see it do not count
against it). A point no view sees (inside an object, or behind it from every view) is selected when
it lies in the masks' visual hull: inside the masks of at least two views and of 3/4 of the views
whose image it falls in. One view cannot cut an object out whole: its back and inside are hidden
there, and stay behind when the selection is deleted; :func:`spread_views` picks further views that
see a clicked point from around it, whose masks (SAM prompted with the same 3D point) complete it.

Operations: :func:`extract_points` / :func:`delete_points` on the point dict, and
:func:`subset_field` / :func:`render_selection` for fields that can keep a subset of their primitives
(the splat field's ``subset(keep)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import FeatureField, Render


def surface_depth(render: Render, min_alpha: float = 0.1) -> Tensor:
    """``[H, W]`` z-depth of the visible surface, ``inf`` where the render is (nearly) empty.

    ``Render.depth`` is already normalized by alpha (the field protocol), so only nearly empty
    pixels need masking.
    """
    out = render.depth[..., 0].float()
    alpha = render.alpha[..., 0].float()
    return torch.where(alpha >= min_alpha, out, torch.full_like(out, float("inf")))


def project_points(xyz: Tensor, camera: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """Project points into one camera.

    Args:
        xyz: ``[M, 3]`` points in the camera's frame (canonical for field cameras).
    Returns:
        uv ``[M, 2]`` pixel positions, z ``[M]`` depth, and ``[M]`` bool "in front and inside the image".
    """
    uv, z = camera.project(xyz.float().to(camera.device), 0)
    W, H = int(camera.width[0]), int(camera.height[0])
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    return uv, z, inside


def _pixels(uv: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    u = uv[:, 0].floor().long().clamp(0, W - 1)
    v = uv[:, 1].floor().long().clamp(0, H - 1)
    return u, v


def visibility(xyz: Tensor, camera: Cameras, depth: Tensor | None, rel_tol: float = 0.03,
               abs_tol: float = 0.01) -> tuple[Tensor, Tensor]:
    """Which points a camera sees.

    Args:
        xyz: ``[M, 3]`` points. depth: ``[H, W]`` surface z-depth (``inf`` = empty; see
            :func:`surface_depth`), or ``None`` to skip the occlusion test.
    Returns:
        uv ``[M, 2]`` and visible ``[M]`` bool.
    """
    uv, z, inside = project_points(xyz, camera)
    if depth is None:
        return uv, inside
    H, W = depth.shape
    u, v = _pixels(uv, H, W)
    d = depth.to(z.device)[v, u]
    finite = torch.isfinite(d)  # nothing rendered there: the point contributes nothing visible
    front = z <= torch.where(finite, d, torch.zeros_like(d)) * (1 + rel_tol) + abs_tol
    return uv, inside & finite & front


def points_in_mask(xyz: Tensor, camera: Cameras, mask: Tensor, depth: Tensor | None = None,
                   rel_tol: float = 0.03, abs_tol: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(inside [M], visible [M])`` bool: visible points whose pixel is in ``mask [H, W]``."""
    H, W = mask.shape
    if (int(camera.height[0]), int(camera.width[0])) != (H, W):
        raise ValueError(f"mask is {H}x{W} but the camera renders {int(camera.height[0])}x{int(camera.width[0])}")
    uv, visible = visibility(xyz, camera, depth, rel_tol, abs_tol)
    u, v = _pixels(uv, H, W)
    inside = visible & mask.to(uv.device)[v, u].bool()
    return inside, visible


@dataclass
class Selection:
    """A 3D selection made from masks at one or more views.

    Attributes:
        keep: ``[M]`` bool over the points it was made from.
        votes: ``[M]`` views in which the point was inside the mask.
        seen: ``[M]`` views in which the point was visible.
    """

    keep: Tensor
    votes: Tensor
    seen: Tensor

    def __len__(self) -> int:
        return int(self.keep.sum())


def vote(inside: Sequence[Tensor], visible: Sequence[Tensor], min_votes: int = 1, min_ratio: float = 0.5,
         hull: Sequence[Tensor] | None = None, framed: Sequence[Tensor] | None = None) -> Selection:
    """Combine per-view ``inside``/``visible`` ``[M]`` bool tensors into a :class:`Selection`.

    ``hull``/``framed``: per view, ``[M]`` bool "projects into the mask" and "projects into the image",
    occlusion ignored; with them, a point no view sees is kept when it is in the masks of at least two
    views and of 3/4 of the views that frame it (the masks' visual hull).
    """
    votes = torch.stack([x.long() for x in inside]).sum(0)
    seen = torch.stack([x.long() for x in visible]).sum(0)
    keep = (votes >= max(1, min_votes)) & (votes.float() >= min_ratio * seen.float())
    if hull is not None and framed is not None:
        in_hull = torch.stack([x.long() for x in hull]).sum(0)
        frames = torch.stack([x.long() for x in framed]).sum(0)
        # 3/4 rather than all: another object may hide part of this one in a view, and so its mask
        keep |= (seen == 0) & (in_hull >= 2) & (in_hull.float() >= 0.75 * frames.float())
    return Selection(keep, votes, seen)


def spread_views(cameras: Cameras, xyz: Tensor, count: int, start: Tensor | None = None) -> list[int]:
    """Up to ``count`` of ``cameras`` whose image frames the point ``xyz`` ``[3]``, seeing it from directions
    as different as possible (farthest-point sampling of the directions point -> camera, starting from the
    one farthest from ``start`` ``[3]``, a camera centre that already has a view, when given)."""
    candidates = [i for i in range(len(cameras)) if bool(project_points(xyz[None], cameras[i])[2][0])]
    if not candidates:
        return []
    directions = cameras.centers[candidates].float().cpu() - xyz.float().cpu()[None]
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    if start is not None:
        first = (start.float().cpu() - xyz.float().cpu())
        nearest = directions @ (first / first.norm().clamp_min(1e-9))
    else:
        nearest = torch.full((len(candidates),), -2.0)
    chosen: list[int] = []
    while len(chosen) < min(count, len(candidates)):
        k = int(nearest.argmin())  # the direction least like any chosen so far (cosine)
        chosen.append(candidates[k])
        nearest = torch.maximum(nearest, directions @ directions[k])
        nearest[k] = 2.0
    return chosen


@torch.no_grad()
def lift_masks(field: FeatureField, cameras: Cameras | Sequence[Cameras], masks: Sequence[Tensor], points: dict[str, Tensor] | None = None,
               min_votes: int = 1, min_ratio: float = 0.5, occlusion: bool = True, rel_tol: float = 0.03,
               abs_tol: float = 0.01, max_points: int = 1_000_000) -> tuple[Selection, dict[str, Tensor]]:
    """Lift masks ``[H, W]`` at ``cameras`` (one per mask, canonical frame; or a list of one-camera
    :class:`Cameras` of different sizes) to a 3D selection.

    Args:
        points: the field's points (default: ``field.points_with_features(None)``).
        occlusion: test visibility against the field's rendered depth at each view.
    Returns:
        The selection and the points it indexes.
    """
    if len(masks) != len(cameras):
        raise ValueError(f"{len(masks)} masks for {len(cameras)} cameras")
    if points is None:
        points = field.points_with_features(None, max_points=max_points)
    inside, visible, hull, framed = [], [], [], []
    for k, mask in enumerate(masks):
        cam = cameras[k]
        depth = surface_depth(field.render(cam, features=False)) if occlusion else None
        i, v = points_in_mask(points["xyz"], cam, mask, depth, rel_tol, abs_tol)
        inside.append(i)
        visible.append(v)
        if occlusion:
            h, f = points_in_mask(points["xyz"], cam, mask, None)
            hull.append(h)
            framed.append(f)
    return vote(inside, visible, min_votes, min_ratio, hull or None, framed or None), points


def extract_points(points: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """The kept entries of every per-point tensor in ``points``."""
    return {k: v[keep.to(v.device)] for k, v in points.items()}


def delete_points(points: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """Every point except the selected ones."""
    return extract_points(points, ~keep.bool())


def subset_field(field: FeatureField, points: dict[str, Tensor], keep: Tensor, invert: bool = False) -> FeatureField:
    """A field with only the selected primitives (or all but them, ``invert=True``).

    Needs a backend with the ``"subset"`` capability (Gaussians); point samples of a NeRF cannot be
    re-rendered alone.
    """
    if "subset" not in field.capabilities():
        raise FeatureFieldError(f"the {field.kind} field cannot render a subset of itself; extract the selection as "
                                "a point cloud instead (a field made of primitives, e.g. splat, re-renders it)")
    keep = keep.bool()
    return field.subset(points["ids"].to(keep.device)[keep], invert=invert)


def export_cutout(field: FeatureField, path: Path, points: dict[str, Tensor], keep: Tensor, normalization,
                  extra: dict[str, Tensor] | None = None, decoders: bool | str = True) -> list[Path]:
    """Write a 3D selection: a point-cloud PLY at ``path`` (scene's world frame, with colour and opacity),
    and for a field that can subset itself also the selected primitives exported in its own format,
    ``<stem>_gaussians.*`` for Gaussians (a standard 3DGS PLY with its decoders, what splat viewers open;
    :func:`~featurefield.fields.splat.ply.field_from_ply` reads it back). ``decoders``: where that format's
    decoders go (:meth:`~featurefield.fields.base.FeatureField.export`: beside it, ``"shared"`` by the folder's
    cut-outs, or not written). Returns the written paths, the point cloud first."""
    from featurefield.query.text import export_selection_ply

    path = Path(path)
    written = [export_selection_ply(path, points, keep, normalization, extra=extra)]
    if "subset" in field.capabilities():
        written += subset_field(field, points, keep).export(normalization, path.parent, name=f"{path.stem}_gaussians",
                                                            decoders=decoders)
    return written


@torch.no_grad()
def render_selection(field: FeatureField, camera: Cameras, points: dict[str, Tensor], keep: Tensor,
                     invert: bool = False, background: Tensor | None = None, features: bool = False) -> Render:
    """Render only the selection (``invert=False``) or the scene with it deleted (``invert=True``)."""
    return subset_field(field, points, keep, invert).render(camera, background=background, features=features)
