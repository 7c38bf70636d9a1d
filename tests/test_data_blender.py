"""Blender / NeRF-synthetic loader: lego, and tiny synthetic scenes written in tmp_path."""

from __future__ import annotations

import json
import math

import pytest
import torch

from featurefield.data import detect_format, load_scene
from tests.toyscenes import write_blender


def test_lego_views_intrinsics_and_centre_rays(lego_dir):
    scene = load_scene(lego_dir)
    assert scene.format == "blender"
    assert len(scene.train) == 100 and len(scene.test) == 200
    cams = scene.cameras
    assert (cams.width == 800).all() and (cams.height == 800).all()
    angle = json.loads((lego_dir / "transforms_train.json").read_text())["camera_angle_x"]
    torch.testing.assert_close(cams.fx, torch.full((300,), 400 / math.tan(angle / 2)))
    torch.testing.assert_close(cams.cx, torch.full((300,), 400.0))
    # The object sits at the origin: every view's centre ray passes close to it.
    o, d = cams.rays_at(torch.arange(len(cams)), torch.stack([cams.cx, cams.cy], -1))
    t = -(o * d).sum(-1)
    assert (t > 0).all(), "the origin must be in front of every camera"
    assert (o + t[:, None] * d).norm(dim=-1).max() < 0.5
    # Images are RGBA and load lazily at the declared size; compositing uses the background.
    rgba = scene.rgba(0)
    assert rgba.shape == (800, 800, 4)
    rgb = scene.image(0)
    corner_alpha = rgba[0, 0, 3]
    assert corner_alpha == 0 and torch.allclose(rgb[0, 0], torch.ones(3))
    assert scene.bounds.tolist() == [[-1.5] * 3, [1.5] * 3]
    torch.testing.assert_close(scene.normalization.center, torch.zeros(3))


def test_lego_downscale(lego_dir):
    scene = load_scene(lego_dir, downscale=4)
    assert int(scene.cameras.width[0]) == 200
    assert scene.rgba(3).shape == (200, 200, 4)
    full = load_scene(lego_dir)
    torch.testing.assert_close(scene.cameras.fx, full.cameras.fx / 4)


def test_synthetic_blender_conventions(tmp_path):
    root = write_blender(tmp_path / "scene", ext=".webp", with_val=True)
    assert detect_format(root) == "blender"
    scene = load_scene(root, background=(0.0, 0.0, 1.0))
    assert scene.split == {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]}
    # OpenGL -> OpenCV: the camera looks along +z towards the origin.
    forward = scene.cameras.c2w[:, :3, 2]
    to_origin = -scene.cameras.centers / scene.cameras.centers.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(forward, to_origin, atol=1e-5, rtol=0)
    # RGBA composited on the chosen (blue) background.
    rgba = scene.rgba(1)
    expected = rgba[..., :3] * rgba[..., 3:] + torch.tensor([0.0, 0.0, 1.0]) * (1 - rgba[..., 3:])
    torch.testing.assert_close(scene.image(1), expected)
    torch.testing.assert_close(scene.alpha(1), rgba[..., 3])
    assert scene.background == (0.0, 0.0, 1.0)


def test_blender_explicit_intrinsics(tmp_path):
    root = write_blender(tmp_path / "scene", drop_ext=False)
    meta = json.loads((root / "transforms_train.json").read_text())
    meta.update(fl_x=20.0, fl_y=21.0, cx=7.0, cy=5.5, w=16, h=12)
    del meta["camera_angle_x"]
    (root / "transforms_train.json").write_text(json.dumps(meta))
    scene = load_scene(root)
    assert scene.cameras.fx[:3].tolist() == [20.0] * 3 and scene.cameras.fy[0] == 21.0
    assert scene.cameras.cx[0] == 7.0 and scene.cameras.cy[0] == 5.5
    # the test split still uses camera_angle_x: 0.5 * 16 / tan(0.345)
    assert scene.cameras.fx[3] == pytest.approx(8 / math.tan(0.345), rel=1e-5)
