"""Reading a full-resolution feature map at a teacher's coarser grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_at_cell_centres(features: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bilinear samples of ``features [D, H, W]`` at the centres of an ``h x w`` grid's cells -> ``[D, h, w]``.

    Cell ``(i, j)`` covers pixels ``[j W/w, (j+1) W/w) x [i H/h, (i+1) H/h)``; its centre is read with
    pixel centres at half-integers, as the NeRF field's training targets are looked up.
    """
    h, w = grid
    dev = features.device
    # normalized coordinates (align_corners=False): the cell centre (j + 0.5) / w of the image width
    xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w * 2 - 1
    ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    where = torch.stack([xx, yy], -1)[None]  # [1, h, w, 2] as (x, y)
    return F.grid_sample(features[None].float(), where, mode="bilinear", align_corners=False)[0]
