"""Keypoint transfer between views by rendered features (FeatureNeRF), and its evaluation.

Views may come from two runs (two instances of an object, distilled from the same teacher): their
features live in the teacher's space, so a keypoint on one finds its counterpart on the other.

For a pixel of view A, the match in view B is the pixel of B whose L2-normalized feature has the
highest cosine similarity with A's feature at that pixel. Features are rendered and decoded at a
reduced resolution (the longest side at most ``match_side`` pixels, intrinsics scaled about the
image corner so pixel positions map back exactly).

Ground truth comes from geometry: unproject A's pixel with A's z-depth, project the 3D point into B
(:meth:`Cameras.project`), and keep it when it lands inside B, in front of it, and (when B's depth is
known) not occluded there. PCK counts matches within ``alpha * max(H, W)`` of the truth for
``alpha`` in 1%, 2%, 5%.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.fields.base import FeatureField
from featurefield.metrics import pck


def sample_features(features: Tensor, uv: Tensor) -> Tensor:
    """Bilinear features ``[M, D]`` at pixel positions ``uv [M, 2]`` of a ``[D, H, W]`` map."""
    D, H, W = features.shape
    gx = uv[:, 0] / W * 2 - 1
    gy = uv[:, 1] / H * 2 - 1
    grid = torch.stack([gx, gy], -1).to(features)[None, None]  # [1, 1, M, 2]
    out = F.grid_sample(features[None].float(), grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T


def match_features(feat_a: Tensor, uv_a: Tensor, feat_b: Tensor, valid_b: Tensor | None = None,
                   chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Nearest neighbours in B of A's features at ``uv_a``.

    Args:
        feat_a: ``[D, Ha, Wa]``; feat_b: ``[D, Hb, Wb]``; uv_a: ``[M, 2]`` pixel positions in A.
        valid_b: ``[Hb, Wb]`` bool: candidate pixels of B (default: all).
    Returns:
        uv_b ``[M, 2]`` (pixel centres) and cosine score ``[M]``.
    """
    q = F.normalize(sample_features(feat_a, uv_a), dim=-1)  # [M, D]
    D, Hb, Wb = feat_b.shape
    keys = F.normalize(feat_b.float().flatten(1), dim=0)  # [D, Hb*Wb]
    if valid_b is not None:
        mask = valid_b.flatten().to(keys.device)
        if not mask.any():
            mask = torch.ones_like(mask)
    best_s, best_i = [], []
    for i in range(0, q.shape[0], chunk):
        s = q[i:i + chunk].to(keys) @ keys
        if valid_b is not None:
            s = s.masked_fill(~mask, -2.0)
        v, j = s.max(1)
        best_s.append(v)
        best_i.append(j)
    score, idx = torch.cat(best_s), torch.cat(best_i)
    uv_b = torch.stack([idx % Wb, idx // Wb], -1).float() + 0.5
    return uv_b, score


def unproject(camera: Cameras, uv: Tensor, depth: Tensor) -> Tensor:
    """3D points ``[M, 3]`` (camera's world frame) at pixel positions ``uv [M, 2]`` with z-depth ``[M]``."""
    index = torch.zeros(uv.shape[0], dtype=torch.int64, device=camera.device)
    o, d = camera.rays_at(index, uv.to(camera.device).float())
    forward = camera.c2w[0, :3, 2]
    t = depth.to(d) / (d @ forward).clamp_min(1e-9)
    return o + d * t[:, None]


def lookup(image: Tensor, uv: Tensor) -> Tensor:
    """Nearest-pixel values ``[M]`` of an ``[H, W]`` map at ``uv [M, 2]`` (clamped to the image)."""
    H, W = image.shape
    u = uv[:, 0].floor().long().clamp(0, W - 1)
    v = uv[:, 1].floor().long().clamp(0, H - 1)
    return image.to(uv.device)[v, u]


def geometric_truth(cam_a: Cameras, depth_a: Tensor, uv_a: Tensor, cam_b: Cameras, depth_b: Tensor | None = None,
                    rel_tol: float = 0.03) -> tuple[Tensor, Tensor]:
    """Where A's pixels land in B according to depth and poses.

    Args:
        depth_a: ``[Ha, Wa]`` z-depth of A (0 or inf where unknown). depth_b: ``[Hb, Wb]`` or ``None``.
    Returns:
        uv_b ``[M, 2]`` and valid ``[M]`` bool (known depth, in front of B, inside B, not occluded).
    """
    d = lookup(depth_a, uv_a.to(depth_a.device)).float()
    known = torch.isfinite(d) & (d > 0)
    pts = unproject(cam_a, uv_a, torch.where(known, d, torch.ones_like(d)))
    uv_b, z = cam_b.project(pts, 0)
    Wb, Hb = int(cam_b.width[0]), int(cam_b.height[0])
    valid = known.to(z.device) & (z > 0) & (uv_b[:, 0] >= 0) & (uv_b[:, 0] < Wb) & (uv_b[:, 1] >= 0) & (uv_b[:, 1] < Hb)
    if depth_b is not None:
        db = lookup(depth_b, uv_b).float().to(z.device)
        valid &= torch.isfinite(db) & (db > 0) & ((z - db).abs() <= rel_tol * db)
    return uv_b, valid


def _match_scale(camera: Cameras, match_side: int) -> float:
    side = max(int(camera.width[0]), int(camera.height[0]))
    return min(1.0, match_side / side)


@torch.no_grad()
def rendered_features(field: FeatureField, camera: Cameras, teacher: str, match_side: int = 128,
                      background: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Decoded features ``[D, h, w]`` at reduced resolution, the ``(sx, sy)`` scale ``[2]`` from full-size
    pixels to them, and the low-res alpha ``[h, w]``."""
    s = _match_scale(camera, match_side)
    cam = camera.scaled(s) if s < 1 else camera
    scale = torch.stack([cam.width[0] / camera.width[0], cam.height[0] / camera.height[0]]).float().to(camera.device)
    r = field.render(cam, background=background, features=True)
    return field.decode(r, teacher).float(), scale, r.alpha[..., 0]


@torch.no_grad()
def transfer_keypoints(field: FeatureField, cam_a: Cameras, cam_b: Cameras, uv_a: Tensor, teacher: str,
                       match_side: int = 128, background: Tensor | None = None,
                       foreground_only: bool = True, field_b: FeatureField | None = None,
                       background_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """For pixels ``uv_a [M, 2]`` of view A, the matching pixels ``[M, 2]`` of view B and their scores ``[M]``.

    Args:
        foreground_only: only match onto rendered content of B (alpha > 0.5), when there is any.
        field_b: B's field when B is a view of another scene (e.g. another instance of the object, trained
            with the same teacher); default ``field``. background_b: its background colour.
    """
    field_b = field if field_b is None else field_b
    background_b = background if field_b is field else background_b
    fa, sa, _ = rendered_features(field, cam_a, teacher, match_side, background)
    fb, sb, alpha_b = rendered_features(field_b, cam_b, teacher, match_side, background_b)
    valid_b = alpha_b > 0.5 if foreground_only else None
    uv_b, score = match_features(fa, uv_a.to(fa.device).float() * sa.to(fa.device), fb, valid_b)
    return uv_b / sb.to(uv_b.device), score


def sample_keypoints(valid: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """Up to ``count`` random pixel centres ``[M, 2]`` where ``valid [H, W]`` is True."""
    v, u = torch.nonzero(valid.cpu(), as_tuple=True)
    if len(u) == 0:
        return torch.zeros(0, 2)
    pick = torch.randperm(len(u), generator=generator)[:count]
    return torch.stack([u[pick], v[pick]], -1).float() + 0.5


@torch.no_grad()
def evaluate_pair(field: FeatureField, cam_a: Cameras, cam_b: Cameras, teacher: str, depth_a: Tensor,
                  depth_b: Tensor | None, count: int = 256, match_side: int = 128, background: Tensor | None = None,
                  generator: torch.Generator | None = None,
                  thresholds: tuple[float, ...] = (0.01, 0.02, 0.05)) -> tuple[dict[str, float], int]:
    """PCK of keypoint transfer from A to B for random pixels of A with valid ground truth.

    Returns:
        ``({"pck@0.01": ..}, number of keypoints evaluated)``.
    """
    cand = sample_keypoints(torch.isfinite(depth_a) & (depth_a > 0), count * 4, generator).to(cam_a.device)
    if len(cand) == 0:
        return {f"pck@{a:g}": float("nan") for a in thresholds}, 0
    true_b, valid = geometric_truth(cam_a, depth_a, cand, cam_b, depth_b)
    uv_a, true_b = cand[valid][:count], true_b[valid][:count]
    if len(uv_a) == 0:
        return {f"pck@{a:g}": float("nan") for a in thresholds}, 0
    pred_b, _ = transfer_keypoints(field, cam_a, cam_b, uv_a, teacher, match_side, background)
    size = (int(cam_b.height[0]), int(cam_b.width[0]))
    return pck(pred_b, true_b, size, thresholds), len(uv_a)
