"""The NeRF field's empty-space features: a learnt map on the teacher's grid, read where each ray is in its image."""

from __future__ import annotations

import json

import torch

from featurefield.fields.nerf.config import NerfConfig
from featurefield.fields.nerf.model import NerfField
from tests.toynerf import TINY, _step


def looking_away(cameras):
    """The same cameras turned around (camera x and z flipped): from outside the scene's box they see nothing."""
    c2w = cameras.c2w @ torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    return type(cameras)(c2w=c2w, fx=cameras.fx, fy=cameras.fy, cx=cameras.cx, cy=cameras.cy,
                         width=cameras.width, height=cameras.height)


def test_empty_space_shows_the_background_map_where_it_lies_in_the_image(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = NerfField.create(scene, targets, NerfConfig.small(**TINY), device="cpu")
    assert fld.features.background["toy"].shape == (6, 6, 6)  # [D, h, w] on the teacher's grid
    with torch.no_grad():
        fld.features.background["toy"].normal_()
    fld.eval()
    cam = looking_away(scene.canonical_cameras()[:1])
    r = fld.render(cam.scaled(0.25))  # 6 x 6 pixels: one ray through each cell's centre
    assert float(r.alpha.max()) < 1e-6  # nothing but empty space in view
    torch.testing.assert_close(r.features["toy"].permute(2, 0, 1), fld.features.background["toy"].detach())
    mean = fld.features.background_at("toy", None)
    torch.testing.assert_close(mean, fld.features.background["toy"].detach().mean((1, 2)))


def test_a_constant_background_and_runs_from_before_the_map(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = NerfField.create(scene, targets, NerfConfig.small(**TINY, feature_background="constant"), device="cpu")
    with torch.no_grad():
        fld.features.background["toy"].copy_(torch.arange(6.0))
    fld.eval()
    r = fld.render(looking_away(scene.canonical_cameras()[:1]).scaled(0.5))
    torch.testing.assert_close(r.features["toy"], torch.arange(6.0).expand(12, 12, 6))
    cfg = json.loads(json.dumps(fld.config_dict()))
    del cfg["config"]["feature_background"]  # a run folder written before the option existed
    again = NerfField.from_config(cfg, fld.state_dict())
    assert again.config.feature_background == "constant"


def test_the_map_learns_from_rays_through_empty_space(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = NerfField.create(scene, targets, NerfConfig.small(**TINY), max_steps=5, device="cpu")
    before = fld.features.background["toy"].detach().clone()
    gen = torch.Generator().manual_seed(0)
    for s in range(5):
        _step(fld, data, s, gen)
    moved = (fld.features.background["toy"].detach() - before).abs().amax(0)  # [h, w]
    assert (moved > 0).float().mean() > 0.5  # rays reach most cells of the map
