"""Bilinear resampling of feature maps as two small matrix products.

Bilinear interpolation (anti-aliased when shrinking, as ``F.interpolate(..., antialias=True)``) is
separable: resampling ``[H, W]`` to ``[h, w]`` is ``Ry^T @ X @ Rx`` with fixed ``Ry [H, h]`` and
``Rx [W, w]``. The matrices are made once per size pair by resampling an identity with
``F.interpolate`` itself, so the result is the same up to rounding; the products are a fraction of
the cost of the anti-aliased kernel's backward pass, and channels-last maps need no transpose.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=64)
def resample_matrix(n_in: int, n_out: int, device: str = "cpu") -> Tensor:
    """``[n_in, n_out]`` weights: output sample ``j`` is ``sum_i M[i, j] * input[i]`` (float32)."""
    eye = torch.eye(n_in, dtype=torch.float32)[None, None]  # rows kept (scale 1 is exact), columns resampled
    m = F.interpolate(eye, size=(n_in, n_out), mode="bilinear", align_corners=False, antialias=n_out < n_in)
    return m[0, 0].to(device)


def resample_hwc(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resample channels-last maps ``[H, W, C]`` to ``[h, w, C]`` (``grid = (h, w)``)."""
    H, W, C = maps.shape
    h, w = int(grid[0]), int(grid[1])
    if (H, W) == (h, w):
        return maps
    dev = str(maps.device)
    ry = resample_matrix(H, h, dev).to(maps.dtype)
    rx = resample_matrix(W, w, dev).to(maps.dtype)
    rows = (ry.T @ maps.reshape(H, W * C)).reshape(h, W, C)  # [h, W, C]
    # one matrix product over all rows ([w, W] @ [W, h * C]), not a batch of h thin ones: a batched
    # product with a few channels runs as h matrix-vector products, several times slower
    cols = rx.T @ rows.transpose(0, 1).reshape(W, h * C)  # [w, h * C]
    return cols.reshape(w, h, C).transpose(0, 1)  # [h, w, C] (a view)


def resample(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resample channels-first maps ``[C, H, W]`` to ``[C, h, w]``."""
    if tuple(maps.shape[-2:]) == tuple(int(g) for g in grid):
        return maps
    return resample_hwc(maps.permute(1, 2, 0), grid).permute(2, 0, 1)
