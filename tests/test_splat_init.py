"""Gaussians for scenes with poses but no points: frustum sampling, triangulation from known poses, bounds checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from featurefield.cli import main
from featurefield.data import load_scene
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import TrainData
from featurefield.fields.splat.config import SplatConfig
from featurefield.fields.splat.frustum import estimate_bounds, frustum_points
from featurefield.fields.splat.model import GaussianField
from featurefield.train import _images_uint8, optimization_step
from tests.toyscenes import write_llff


@pytest.fixture(scope="module")
def forward_scene():
    return load_scene("demo", size=64, views=24, rig="forward")


def test_frustum_points_lie_in_their_view_between_near_and_far():
    scene = load_scene("demo", size=32, views=8, supersample=1)
    cams = scene.cameras
    near = torch.linspace(1.0, 2.0, len(cams))
    far = near * 3
    gen = torch.Generator().manual_seed(0)
    xyz, rgb = frustum_points(cams, near, far, 800, scene.image, gen)
    assert xyz.shape == (800, 3) and rgb.shape == (800, 3)
    per_view = 100  # shared evenly, in camera order
    for i in range(len(cams)):
        uv, z = cams.project(xyz[i * per_view:(i + 1) * per_view], i)
        assert bool((uv >= 0).all() and (uv[:, 0] <= 32).all() and (uv[:, 1] <= 32).all())
        assert bool((z >= near[i] * (1 - 1e-4)).all() and (z <= far[i] * (1 + 1e-4)).all())
        # colour is the pixel's the point was drawn through
        img = scene.image(i)
        px = uv.clamp(0, 31.999).long()
        assert torch.allclose(rgb[i * per_view:(i + 1) * per_view], img[px[:, 1], px[:, 0]], atol=1e-5)
    # spread in inverse depth: as many points in the near half of 1/z as in the far half
    uv, z = cams.project(xyz[:per_view], 0)
    mid = 2 / (1 / near[0] + 1 / far[0])
    assert 0.3 < float((z < mid).float().mean()) < 0.7


def test_estimated_bounds_hold_the_look_at_point(forward_scene):
    ring = load_scene("demo", size=16, views=8, supersample=1)
    near, far = estimate_bounds(ring.cameras)
    _, z = ring.cameras.project(torch.zeros(1, 3))  # the table centre all cameras look at
    assert bool((near < z[:, 0]).all() and (z[:, 0] < far).all())
    near, far = estimate_bounds(forward_scene.cameras)  # parallel axes: a wide range around the rig
    depth = forward_scene.depth(0)
    assert float(near[0]) < float(depth[depth > 0].min()) and float(depth.max()) < float(far[0])


def test_triangulation_from_known_poses_recovers_the_surface():
    pytest.importorskip("pycolmap")
    from featurefield.data.triangulate import triangulate_scene

    scene = load_scene("demo", size=128)
    cloud = triangulate_scene(scene)
    assert len(cloud.xyz) >= 50
    errors = []
    for i in scene.train:
        uv, z = scene.cameras.project(cloud.xyz, i)
        inside = (z > 0) & (uv >= 0).all(-1) & (uv < 128).all(-1)
        gt = scene.depth(i)[uv[inside, 1].long(), uv[inside, 0].long()]
        seen = gt > 0
        errors.append((z[inside][seen] - gt[seen]).abs() / gt[seen])
    err = torch.cat(errors)
    # points lie on the surface where they are not hidden from that view
    assert float(err.median()) < 0.02
    assert float((err < 0.05).float().mean()) > 0.6


def _train_psnr(scene, steps: int = 300) -> float:
    torch.manual_seed(0)
    fld = GaussianField.create(scene, [], SplatConfig(sh_degree=1), max_steps=steps, device="cpu")
    images, _ = _images_uint8(scene, scene.train, torch.device("cpu"))
    bg = torch.tensor(scene.background)
    data = TrainData(cameras=scene.canonical_cameras()[scene.train], images=images, alphas=None, features={},
                     background=bg)
    fld.train()
    fld.optimizers(), fld.schedulers()
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        optimization_step(fld, data, step, gen)
    cams = scene.canonical_cameras()
    with torch.no_grad():
        mse = [((fld.render(cams[[i]], background=bg, features=False).rgb.clamp(0, 1) - scene.image(i)) ** 2).mean()
               for i in scene.test]
    return float(-10 * torch.log10(torch.stack(mse).mean()))


def test_forward_facing_scene_without_points_trains_close_to_with_points(forward_scene):
    pytest.importorskip("pycolmap")
    with_points = _train_psnr(forward_scene)
    without = _train_psnr(dataclasses.replace(forward_scene, points=None, bounds=None))
    assert with_points > 27
    assert without > with_points - 3.5, (without, with_points)


@pytest.mark.parametrize("near,far,words", [(0.0, 10.0, "0 < near < far"), (5.0, 2.0, "0 < near < far"),
                                             (float("nan"), 3.0, "NaN")])
def test_bad_bounds_one_line_exit_2(tmp_path, capsys, near, far, words):
    root = write_llff(tmp_path / "scene")
    arr = np.load(root / "poses_bounds.npy")
    arr[3, 15:17] = (near, far)
    np.save(root / "poses_bounds.npy", arr)
    code = main(["train", str(root), "--output", str(tmp_path / "run"), "--steps", "1", "--no-features",
                 "--device", "cpu", "--splat.init", "frustum"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "poses_bounds.npy" in err[0], err


def test_bounds_checked_in_the_init_path(tmp_path):
    root = write_llff(tmp_path / "scene")
    scene = load_scene(root)
    scene.metadata["far"][2] = scene.metadata["near"][2]
    with pytest.raises(FeatureFieldError, match="view 2 are inverted or empty"):
        GaussianField.create(scene, [], SplatConfig(init="frustum"), max_steps=10)
