"""Pixel-aligned features: project 3D points into source views and sample their feature maps there.

Conventions (as everywhere in featurefield): OpenCV cameras, pixel centres at +0.5. A feature map of
any resolution ``h x w`` covers the whole ``H x W`` image, so the point projecting to pixel position
``(u, v)`` reads the map at normalized coordinates ``(2u/W - 1, 2v/H - 1)`` with
``align_corners=False`` (the centre of map cell ``i`` is image position ``(i + 0.5) W / w``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def project(points: Tensor, w2c: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Project points into several views each.

    Args:
        points: ``[B, P, 3]`` world points. w2c: ``[B, S, 4, 4]`` world-to-camera. K: ``[B, S, 3, 3]``.
    Returns:
        ``uv [B, S, P, 2]`` pixel positions (centre convention) and z-depth ``[B, S, P]`` (<= 0 behind).
    """
    pc = torch.einsum("bsij,bpj->bspi", w2c[..., :3, :3], points) + w2c[..., None, :3, 3]
    z = pc[..., 2]
    xy = pc[..., :2] / z[..., None].clamp_min(1e-6)
    uv = torch.einsum("bsij,bspj->bspi", K[..., :2, :2], xy) + K[..., None, :2, 2]
    return uv, z


def sample_features(maps: Tensor, uv: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Bilinear samples of feature maps at pixel positions (zeros outside the image).

    Args:
        maps: ``[B, S, C, h, w]`` feature maps covering images of ``image_size = (H, W)``.
        uv: ``[B, S, P, 2]`` pixel positions.
    Returns:
        ``[B, S, P, C]``.
    """
    B, S, C, h, w = maps.shape
    H, W = image_size
    grid = torch.stack([2 * uv[..., 0] / W - 1, 2 * uv[..., 1] / H - 1], -1)
    out = F.grid_sample(maps.reshape(B * S, C, h, w), grid.reshape(B * S, 1, -1, 2).to(maps.dtype),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(B, S, C, -1).transpose(-1, -2)


def pixel_aligned(points: Tensor, maps: Tensor, w2c: Tensor, K: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Features of world points averaged over the source views that see them in front of the camera.

    Args:
        points: ``[B, P, 3]``; maps: ``[B, S, C, h, w]``; w2c: ``[B, S, 4, 4]``; K: ``[B, S, 3, 3]``.
    Returns:
        ``[B, P, C]``: the mean over views with ``z > 0`` (zeros where none).
    """
    uv, z = project(points, w2c, K)
    feats = sample_features(maps, uv, image_size)  # [B, S, P, C]
    front = (z > 0).to(feats.dtype)[..., None]
    return (feats * front).sum(1) / front.sum(1).clamp_min(1)
