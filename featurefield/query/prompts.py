"""SAM prompt queries on rendered views: point and box prompts, and "segment everything".

The field renders the ``sam`` teacher's features at any camera, decoded on the SAM grid of that
view's size (``[256, h, w]``, the valid part of SAM's 64x64 embedding, see
:func:`featurefield.teachers.sam.valid_grid`); the SAM prompt encoder + mask decoder
(:class:`featurefield.teachers.sam_decoder.SamPromptDecoder`) turns them and a prompt into a mask
at the render's full resolution, exactly as it would for the real image's features.

"Segment everything" prompts a regular grid of single foreground points, drops low-score and tiny
masks, and removes duplicates by mask-IoU non-maximum suppression (best score first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import FeatureField, Render
from featurefield.teachers import DEFAULT_TEACHER


class PromptDecoder(Protocol):
    """What :mod:`featurefield.teachers.sam_decoder` provides."""

    def predict(self, embedding: Tensor, image_size: tuple[int, int], points: Tensor | None = None,
                labels: Tensor | None = None, box: Tensor | None = None) -> tuple[Tensor, float]: ...


def sam_grid(height: int, width: int) -> tuple[int, int]:
    """SAM feature grid ``(h, w)`` of a ``height x width`` image."""
    from featurefield.teachers.sam import valid_grid

    return valid_grid(height, width)


def check_points(points: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``[P, 2]`` float (x, y) pixel positions; outside the image is a user error."""
    pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
    H, W = image_size
    bad = (pts[:, 0] < 0) | (pts[:, 0] > W) | (pts[:, 1] < 0) | (pts[:, 1] > H) | ~torch.isfinite(pts).all(1)
    if bad.any():
        x, y = pts[bad][0].tolist()
        raise FeatureFieldError(f"point prompt ({x:g}, {y:g}) is outside the {W}x{H} image; "
                                f"use pixel coordinates with 0 <= x <= {W} and 0 <= y <= {H}")
    return pts


def check_box(box: Sequence[float] | Tensor, image_size: tuple[int, int]) -> Tensor:
    """``[4]`` float xyxy box inside the image with ``x0 < x1`` and ``y0 < y1``."""
    b = torch.as_tensor(box, dtype=torch.float32).reshape(-1)
    if b.numel() != 4:
        raise FeatureFieldError(f"a box prompt needs 4 numbers x0 y0 x1 y1, got {b.numel()}")
    H, W = image_size
    x0, y0, x1, y1 = b.tolist()
    if not (x0 < x1 and y0 < y1):
        raise FeatureFieldError(f"box prompt ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty; give x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
        raise FeatureFieldError(f"box prompt ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside the {W}x{H} image")
    return b


@torch.no_grad()
def render_sam_features(field: FeatureField, camera: Cameras, teacher: str = DEFAULT_TEACHER,
                        background: Tensor | None = None, colour: bool = True) -> tuple[Tensor, Render]:
    """The field's ``sam`` features ``[256, h, w]`` at ``camera`` on SAM's grid for that size, and the render
    (with colour and depth unless ``colour=False``, the fast path when only the mask is wanted)."""
    H, W = int(camera.height[0]), int(camera.width[0])
    r = field.render(camera, background=background, features=True, colour=colour)
    return field.decode(r, teacher, sam_grid(H, W)).float(), r


@torch.no_grad()
def prompt_mask(decoder: PromptDecoder, features: Tensor, image_size: tuple[int, int], points: Tensor | None = None,
                labels: Tensor | None = None, box: Sequence[float] | Tensor | None = None) -> tuple[Tensor, float]:
    """A mask ``[H, W]`` bool and its predicted IoU score from SAM features ``[256, h, w]`` and a prompt.

    Args:
        points: ``[P, 2]`` (x, y) pixels; labels: ``[P]`` 1 foreground / 0 background (default all 1).
        box: ``[4]`` xyxy pixels.
    """
    if points is None and box is None:
        raise FeatureFieldError("give a point or a box prompt")
    pts = lab = bx = None
    if points is not None:
        pts = check_points(points, image_size)
        lab = torch.ones(len(pts), dtype=torch.float32) if labels is None else torch.as_tensor(labels, dtype=torch.float32).reshape(-1)
        if len(lab) != len(pts):
            raise FeatureFieldError(f"{len(pts)} points but {len(lab)} labels")
    if box is not None:
        bx = check_box(box, image_size)
    mask, score = decoder.predict(features, tuple(image_size), pts, lab, bx)
    return mask.bool(), float(score)


@torch.no_grad()
def prompt_view(field: FeatureField, camera: Cameras, decoder: PromptDecoder, points: Tensor | None = None,
                labels: Tensor | None = None, box: Sequence[float] | Tensor | None = None, teacher: str = DEFAULT_TEACHER,
                background: Tensor | None = None) -> tuple[Tensor, float, Render]:
    """Render ``camera``, decode its SAM features and prompt them: ``(mask [H, W], score, render)``."""
    size = (int(camera.height[0]), int(camera.width[0]))
    if points is not None:
        check_points(points, size)
    if box is not None:
        check_box(box, size)
    feats, r = render_sam_features(field, camera, teacher, background)
    mask, score = prompt_mask(decoder, feats, size, points, labels, box)
    return mask, score, r


def box_from_mask(mask: Tensor, margin: float = 0.0) -> Tensor | None:
    """Tight xyxy box ``[4]`` (pixel edges) around a ``[H, W]`` mask, grown by ``margin`` pixels; None if empty."""
    ys, xs = torch.nonzero(mask.bool(), as_tuple=True)
    if len(xs) == 0:
        return None
    H, W = mask.shape
    return torch.tensor([max(0.0, float(xs.min()) - margin), max(0.0, float(ys.min()) - margin),
                         min(float(W), float(xs.max()) + 1 + margin), min(float(H), float(ys.max()) + 1 + margin)])


def mask_nms(masks: Sequence[Tensor], scores: Sequence[float], iou_threshold: float = 0.7) -> list[int]:
    """Indices of masks kept by non-maximum suppression on mask IoU (highest score first)."""
    order = sorted(range(len(masks)), key=lambda i: -scores[i])
    kept: list[int] = []
    flat = [m.flatten().bool() for m in masks]
    for i in order:
        ok = True
        for j in kept:
            inter = (flat[i] & flat[j]).sum()
            union = (flat[i] | flat[j]).sum()
            if union > 0 and float(inter) / float(union) > iou_threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


@dataclass
class Segment:
    """One mask of "segment everything": ``mask [H, W]`` bool, predicted IoU ``score``, prompt ``point``."""

    mask: Tensor
    score: float
    point: tuple[float, float]


@torch.no_grad()
def segment_everything(decoder: PromptDecoder, features: Tensor, image_size: tuple[int, int], points_per_side: int = 16,
                       min_score: float = 0.7, min_area: int = 16, iou_threshold: float = 0.7,
                       valid: Tensor | None = None) -> list[Segment]:
    """Masks of everything in a view from a grid of point prompts.

    Args:
        features: ``[256, h, w]`` SAM features. image_size: ``(H, W)``.
        points_per_side: the grid is ``points_per_side x points_per_side`` pixel positions.
        valid: optional ``[H, W]`` bool: only prompt points that fall in it (e.g. rendered alpha > 0.5).
    Returns:
        Segments sorted by score, without duplicates.
    """
    H, W = image_size
    step_x, step_y = W / points_per_side, H / points_per_side
    segments: list[Segment] = []
    for gy in range(points_per_side):
        for gx in range(points_per_side):
            x, y = (gx + 0.5) * step_x, (gy + 0.5) * step_y
            if valid is not None and not bool(valid[min(int(y), H - 1), min(int(x), W - 1)]):
                continue
            mask, score = decoder.predict(features, (H, W), torch.tensor([[x, y]]), torch.ones(1), None)
            mask = mask.bool()
            if score >= min_score and int(mask.sum()) >= min_area:
                segments.append(Segment(mask, float(score), (x, y)))
    keep = mask_nms([s.mask for s in segments], [s.score for s in segments], iou_threshold)
    return [segments[i] for i in keep]
