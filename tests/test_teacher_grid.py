"""Reading a render at the teacher's grid: cell centres for fields trained on the grid's bilinear interpolant."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featurefield.fields.nerf.model import NerfField
from featurefield.fields.teacher_grid import sample_at_cell_centres


def _interpolant(teacher: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """What a NeRF field learns: the training lookup of ``teacher [D, h, w]`` at every pixel centre -> [D, H, W]."""
    D, h, w = teacher.shape
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pixels = torch.stack([u.flatten(), v.flatten()], -1).float() + 0.5
    maps = teacher.permute(1, 2, 0)[None]  # [1, h, w, D]
    return NerfField._lookup(maps, torch.zeros(H * W, dtype=torch.long), pixels, H, W).T.reshape(D, H, W)


def test_cell_centres_land_on_pixel_centres_exactly():
    torch.manual_seed(0)
    f = torch.randn(3, 20, 35)  # 5 x 5 pixels per cell: each cell's centre is a pixel centre
    got = sample_at_cell_centres(f, (4, 7))
    torch.testing.assert_close(got, f[:, 2::5, 2::5], atol=1e-6, rtol=1e-6)


def test_a_perfect_nerf_render_gives_back_the_teacher_at_cell_centres_not_when_averaged():
    torch.manual_seed(0)
    teacher = torch.randn(8, 6, 5)
    render = _interpolant(teacher, 75, 62)  # 12.5 x 12.4 pixels per cell, like lego's 800 px on 64 cells
    centre = sample_at_cell_centres(render, (6, 5))
    area = F.interpolate(render[None], size=(6, 5), mode="bilinear", align_corners=False, antialias=True)[0]
    err_centre = (centre - teacher).norm() / teacher.norm()
    err_area = (area - teacher).norm() / teacher.norm()
    assert err_centre < 0.06  # white noise is the worst case: the interpolant kinks at every cell centre
    assert err_area > 8 * err_centre
