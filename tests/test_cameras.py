"""Unit tests of featurefield.cameras: projection and rays agree, with and without distortion."""

from __future__ import annotations

import math

import pytest
import torch

from featurefield.cameras import OPENGL_TO_OPENCV, Cameras, look_at
from featurefield.errors import FeatureFieldError


def _ring(n: int = 4, model: str = "pinhole", distortion=None, width=64, height=48) -> Cameras:
    ang = torch.arange(n) * (2 * math.pi / n)
    eye = torch.stack([3 * torch.cos(ang), 3 * torch.sin(ang), torch.full((n,), 1.0)], -1)
    c2w = look_at(eye, torch.zeros(3))
    return Cameras(c2w=c2w, fx=50.0, fy=55.0, cx=width / 2 + 1.5, cy=height / 2 - 2.0, width=width, height=height,
                   model=model, distortion=distortion)


DISTORTIONS = {
    "pinhole": None,
    "opencv": torch.tensor([-0.12, 0.03, 0.004, 0.0, 0.001, -0.002]),
    "fisheye": torch.tensor([0.05, -0.01, 0.002, -0.0005, 0.0, 0.0]),
}


@pytest.mark.parametrize("model", list(DISTORTIONS))
def test_project_inverts_rays(model):
    cams = _ring(n=2, model=model, distortion=DISTORTIONS[model], width=24, height=16)
    for i in range(len(cams)):
        o, d = cams.rays(i)
        depth = torch.linspace(1.0, 4.0, o.shape[0] * o.shape[1]).reshape(o.shape[:2])
        pts = (o + d * depth[..., None]).reshape(-1, 3)
        uv, z = cams.project(pts, i)
        assert (z > 0).all()
        torch.testing.assert_close(uv, cams.pixel_grid(i).reshape(-1, 2), atol=2e-3, rtol=0)


@pytest.mark.parametrize("model", ["opencv", "fisheye"])
def test_distortion_changes_projection_and_undistort_inverts_it(model):
    cams = _ring(model=model, distortion=DISTORTIONS[model])
    xy = torch.rand(len(cams), 50, 2) * 0.8 - 0.4
    xd = cams.distort(xy)
    assert (xd - xy).abs().max() > 1e-3  # the model really distorts
    torch.testing.assert_close(cams.undistort(xd), xy, atol=1e-5, rtol=0)


def test_centre_pixel_ray_is_optical_axis_and_looks_at_target():
    cams = _ring()
    centre = torch.stack([cams.cx, cams.cy], -1)
    o, d = cams.rays_at(torch.arange(len(cams)), centre)
    torch.testing.assert_close(d, cams.c2w[:, :3, 2])
    # look_at points z at the target (origin): the ray passes through it.
    t = -(o * d).sum(-1)
    assert (o + t[:, None] * d).norm(dim=-1).max() < 1e-5


def test_pixel_centre_convention():
    cams = _ring(n=1)
    grid = cams.pixel_grid(0)
    assert grid.shape == (48, 64, 2)
    torch.testing.assert_close(grid[0, 0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(grid[-1, -1], torch.tensor([63.5, 47.5]))


def test_scaled_keeps_rays_through_corresponding_points():
    cams = _ring(width=64, height=48)
    half = cams.scaled(0.5)
    assert int(half.width[0]) == 32 and int(half.height[0]) == 24
    # Image corners map to image corners: pixel (u, v) at full size is (u/2, v/2) at half size.
    uv = torch.tensor([[0.0, 0.0], [64.0, 48.0], [10.25, 30.5]])
    idx = torch.zeros(3, dtype=torch.int64)
    _, d_full = cams.rays_at(idx, uv)
    _, d_half = half.rays_at(idx, uv / 2)
    torch.testing.assert_close(d_full, d_half)


def test_w2c_inverts_c2w():
    cams = _ring()
    eye = torch.eye(4).expand(len(cams), 4, 4)
    torch.testing.assert_close(cams.w2c() @ cams.c2w, eye, atol=1e-6, rtol=0)


def test_opengl_flip_is_its_own_inverse_and_flips_view_direction():
    c2w = look_at(torch.tensor([[0.0, -3.0, 0.0]]), torch.zeros(3))
    gl = c2w @ OPENGL_TO_OPENCV
    torch.testing.assert_close(gl @ OPENGL_TO_OPENCV, c2w)
    # OpenGL cameras look along -z.
    torch.testing.assert_close(-gl[0, :3, 2], c2w[0, :3, 2])


def test_indexing_and_len():
    cams = _ring(n=5, model="opencv", distortion=DISTORTIONS["opencv"])
    sub = cams[[1, 3]]
    assert len(sub) == 2 and sub.model == "opencv"
    torch.testing.assert_close(sub.c2w, cams.c2w[[1, 3]])
    assert len(cams[2]) == 1


@pytest.mark.parametrize("breaker, message", [
    (lambda c: c.c2w.__setitem__((1, 0, 3), float("nan")), "NaN"),
    (lambda c: c.c2w.__setitem__((2, 0, 0), 2.0), "rigid"),
    (lambda c: c.fx.__setitem__(0, 0.0), "intrinsics"),
    (lambda c: c.fy.__setitem__(0, float("inf")), "intrinsics"),
    (lambda c: c.width.__setitem__(0, 0), "width"),
])
def test_validate_rejects_bad_cameras(breaker, message):
    cams = _ring()
    cams.validate()
    breaker(cams)
    with pytest.raises(FeatureFieldError, match=message):
        cams.validate("poses.json")


def test_unknown_model_is_an_error():
    with pytest.raises(FeatureFieldError, match="unknown camera model"):
        _ring(model="equirect")


@pytest.mark.parametrize("model", list(DISTORTIONS))
def test_pixel_rays_are_the_rays_of_rays_at(model):
    from featurefield.cameras import PixelRays

    cams = _ring(n=3, model=model, distortion=DISTORTIONS[model], width=20, height=14)
    rays = PixelRays(cams)
    assert (rays.table is not None) == (model != "pinhole")  # distorted views are solved once, in the table
    g = torch.Generator().manual_seed(0)
    index, u, v = torch.randint(3, (200,), generator=g), torch.randint(20, (200,), generator=g), torch.randint(14, (200,), generator=g)
    o, d = rays(index, u, v)
    o_ref, d_ref = cams.rays_at(index, torch.stack([u, v], -1).float() + 0.5)
    torch.testing.assert_close(o, o_ref, atol=0, rtol=0)
    torch.testing.assert_close(d, d_ref, atol=1e-7, rtol=0)


def test_pixel_rays_without_room_for_a_table_solve_each_ray():
    from featurefield.cameras import PixelRays

    cams = _ring(n=2, model="opencv", distortion=DISTORTIONS["opencv"], width=8, height=6)
    rays = PixelRays(cams, max_bytes=100)  # the table would take 2 * 6 * 8 * 2 * 4 bytes
    assert rays.table is None
    index, u, v = torch.tensor([0, 1]), torch.tensor([7, 0]), torch.tensor([5, 2])
    o, d = rays(index, u, v)
    o_ref, d_ref = cams.rays_at(index, torch.tensor([[7.5, 5.5], [0.5, 2.5]]))
    torch.testing.assert_close(d, d_ref, atol=0, rtol=0)
