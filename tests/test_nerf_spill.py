"""The NeRF field's teacher-spill model: ray patches one teacher cell apart, compared through a learnt blur."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from featurefield.errors import FeatureFieldError
from featurefield.fields.base import TeacherTarget
from featurefield.fields.nerf.config import NerfConfig
from featurefield.fields.nerf.model import NerfField, patch_offsets
from featurefield.fields.teacher_grid import sample_at_cell_centres
from tests.toynerf import TINY, _step


def spill_field(scene, targets, steps=10, **cfg):
    return NerfField.create(scene, targets, NerfConfig.small(**TINY, feature_spill=3, **cfg), max_steps=steps, device="cpu")


def test_patch_offsets_are_one_cell_apart_in_the_kernels_order():
    du, dv = patch_offsets(3, (4, 5), (40, 50))  # cells of 10 x 10 pixels
    assert du.tolist() == [-10, 0, 10] * 3
    assert dv.tolist() == [-10] * 3 + [0] * 3 + [10] * 3  # row-major: the kernel's [ky, kx] layout
    du, dv = patch_offsets(5, (64, 64), (800, 600))
    assert du.tolist()[:5] == [-19, -9, 0, 9, 19] and dv.tolist()[::5] == [-25, -12, 0, 12, 25]


def test_spill_batches_are_patches_around_their_targets(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = spill_field(scene, targets)
    batch = fld.sample_batch(data, 0, torch.Generator().manual_seed(0))
    M, K2 = TINY["rays_per_batch"] // 9, 9
    H, W = data.images.shape[1:3]
    assert batch["patch"] == 3 and batch["pixels"].shape == (M * K2, 2)
    pix = batch["pixels"].reshape(M, K2, 2)
    images = batch["image"].reshape(M, K2)
    assert (images == images[:, :1]).all()  # one image per patch
    du, dv = patch_offsets(3, targets[0].grid, (H, W))
    centre = pix[:, 4]
    expect = torch.stack([(centre[:, None, 0] + du).clamp(0.5, W - 0.5), (centre[:, None, 1] + dv).clamp(0.5, H - 0.5)], -1)
    assert torch.equal(pix, expect)  # one cell apart, clamped to the image
    u, v = batch["pixels"].long().unbind(-1)
    assert torch.equal(batch["rgb"], data.images[batch["image"], v, u].float() / 255)  # colour at every ray
    maps = data.views.pool(0).features["toy"]  # [N, h, w, D]: every view, channels last
    assert torch.equal(batch["features"]["toy"], NerfField._lookup(maps, images[:, 0], centre, H, W))  # teacher at centres


def test_feature_loss_compares_the_blurred_patch_with_the_teacher(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    torch.manual_seed(0)
    fld = spill_field(scene, targets)
    with torch.no_grad():
        fld.spills["toy"].logits.normal_()
    batch = fld.sample_batch(data, 0, torch.Generator().manual_seed(1))
    seen, render_rays = {}, fld.render_rays
    fld.render_rays = lambda *a, **k: seen.setdefault("out", render_rays(*a, **k))
    losses = fld.training_loss(batch, data, 0)
    feats = seen["out"]["features"]["toy"].reshape(-1, 9, 6)
    blurred = (feats * fld.spills["toy"].kernel().reshape(1, 9, 1)).sum(1)
    torch.testing.assert_close(losses["feature/toy"], F.mse_loss(blurred, batch["features"]["toy"]))
    losses["loss"].backward()
    assert fld.spills["toy"].logits.grad.abs().sum() > 0


def test_nerf_trains_its_spill_and_compares_through_it(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = spill_field(scene, targets, steps=20)
    assert fld.models_teacher_spill("toy")
    assert not NerfField.create(scene, targets, NerfConfig.small(**TINY), device="cpu").models_teacher_spill("toy")
    assert "spills" in fld.optimizers() and "spills" not in fld.schedulers()  # its own constant rate
    before = fld.spills["toy"].logits.detach().clone()
    gen = torch.Generator().manual_seed(0)
    for s in range(20):
        _step(fld, data, s, gen)
    assert not torch.equal(fld.spills["toy"].logits.detach(), before)
    fld.eval()
    with torch.no_grad():
        fld.spills["toy"].logits.zero_()  # a plain 3 x 3 box blur
        r = fld.render(scene.canonical_cameras()[1])
    grid = targets[0].grid
    own = sample_at_cell_centres(r.features["toy"].float().permute(2, 0, 1), grid)  # [D, h, w]
    boxed = F.avg_pool2d(F.pad(own[None], (1, 1, 1, 1), mode="replicate"), 3, 1)[0]
    torch.testing.assert_close(fld.decode(r, "toy", grid, as_teacher=True), boxed)
    torch.testing.assert_close(fld.decode(r, "toy", grid, as_teacher=True, spill=False), own)
    with torch.no_grad():  # rendered at the grid's own size: read as it is, still through the spill
        small = fld.render(scene.canonical_cameras()[1].scaled(0.25))
    own = small.features["toy"].float().permute(2, 0, 1)
    boxed = F.avg_pool2d(F.pad(own[None], (1, 1, 1, 1), mode="replicate"), 3, 1)[0]
    torch.testing.assert_close(fld.decode(small, "toy", grid, as_teacher=True), boxed)
    again = NerfField.from_config(json.loads(json.dumps(fld.config_dict())), fld.state_dict())
    assert torch.equal(again.spills["toy"].logits, fld.spills["toy"].logits)  # checkpoints keep it


def test_spill_settings_that_cannot_work_are_clear_errors(tiny_nerf_scene):
    scene, _, targets = tiny_nerf_scene
    with pytest.raises(FeatureFieldError, match="--nerf.feature-spill must be"):
        NerfField.create(scene, targets, NerfConfig.small(**TINY, feature_spill=2), device="cpu")
    two = targets + [TeacherTarget("other", 4, (3, 3))]
    with pytest.raises(FeatureFieldError, match="one feature grid"):
        NerfField.create(scene, two, NerfConfig.small(**TINY, feature_spill=3), device="cpu")
