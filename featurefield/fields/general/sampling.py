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


def bilinear_bags(points: Tensor, w2c: Tensor, K: Tensor, image_size: tuple[int, int], map_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """:func:`pixel_aligned` as embedding bags: for each point, the map cells of its bilinear corners in every
    view and their weights (bilinear weight / number of views in front), so that
    ``F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")`` over a :func:`map_table` is
    :func:`pixel_aligned` (one kernel gathering channels-last rows, with the view mean folded in).

    Args:
        points: ``[B, P, 3]``; w2c: ``[B, S, 4, 4]``; K: ``[B, S, 3, 3]``; image_size ``(H, W)``; map_size ``(h, w)``.
    Returns:
        ``index [B * P, 4 * S]`` rows of the table (corners outside the map point at its last row, zeros, with
        weight 0) and ``weight [B * P, 4 * S]`` (float32).
    """
    B, P, _ = points.shape
    S = w2c.shape[1]
    H, W = image_size
    h, w = map_size
    uv, z = project(points, w2c, K)  # [B, S, P, 2], [B, S, P]
    # map coordinates of align_corners=False sampling; clamped first so far-off points cannot overflow the index
    x = (uv[..., 0].float() * (w / W) - 0.5).clamp(-2, w + 1)
    y = (uv[..., 1].float() * (h / H) - 0.5).clamp(-2, h + 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    front = (z > 0).float()
    share = front / front.sum(1, keepdim=True).clamp_min(1)  # [B, S, P]
    base = (torch.arange(B, device=points.device)[:, None] * S + torch.arange(S, device=points.device)) * (h * w)  # [B, S]
    zero_row = B * S * h * w
    index, weight = [], []
    for dx, dy, wc in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        cx, cy = (x0 + dx).long(), (y0 + dy).long()
        valid = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        index.append(torch.where(valid, base[..., None] + cy * w + cx, zero_row))
        weight.append(wc * share * valid)
    index = torch.stack(index, -1).permute(0, 2, 1, 3).reshape(B * P, S * 4)  # [B, S, P, 4] -> [B * P, S * 4]
    weight = torch.stack(weight, -1).permute(0, 2, 1, 3).reshape(B * P, S * 4)
    return index, weight


def map_table(maps: Tensor) -> Tensor:
    """Feature maps ``[B, S, C, h, w]`` as embedding rows ``[B * S * h * w + 1, C]`` (channels last; the last row zeros)."""
    C = maps.shape[2]
    rows = maps.permute(0, 1, 3, 4, 2).reshape(-1, C)
    return torch.cat([rows, rows.new_zeros(1, C)])
