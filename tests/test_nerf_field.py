"""The NeRF feature field end to end on a tiny demo scene: training, detached features, chunked
rendering, persistence."""

from __future__ import annotations

import json

import torch

from featurefield.fields.nerf.config import NerfConfig
from featurefield.fields.nerf.model import NerfField
from featurefield.fields.registry import field_spec
from featurefield.fields.teacher_grid import sample_at_cell_centres
from tests.toynerf import TINY, _step


def test_registered_and_preset_resolution():
    assert field_spec("nerf").field_class() is NerfField
    assert NerfConfig().resolved("cpu").preset == "small"
    assert NerfConfig().resolved("cpu").num_levels < 16
    assert NerfConfig().resolved("cuda").num_levels == 16
    assert NerfConfig(num_levels=5).resolved("cpu").num_levels == 5  # explicit settings win
    assert NerfConfig(**json.loads(json.dumps(NerfConfig().__dict__))) == NerfConfig()  # JSON lists -> tuples


def test_training_raises_psnr_and_lowers_feature_loss(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    torch.manual_seed(0)
    fld = NerfField.create(scene, targets, NerfConfig.small(**TINY), max_steps=80, device="cpu")
    assert fld.contraction_kind == "aabb"  # the demo scene has bounds
    gen = torch.Generator().manual_seed(0)
    hist = [_step(fld, data, s, gen) for s in range(80)]
    first = sum(h["psnr"] for h in hist[:10]) / 10
    last = sum(h["psnr"] for h in hist[-10:]) / 10
    f_first = sum(h["feature/toy"] for h in hist[:10]) / 10
    f_last = sum(h["feature/toy"] for h in hist[-10:]) / 10
    assert last > first + 2.5, (first, last)
    assert f_last < 0.6 * f_first, (f_first, f_last)
    assert {"loss", "rgb", "psnr", "feature/toy", "interlevel", "distortion"} <= set(hist[-1])


def test_feature_loss_does_not_reach_geometry(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = NerfField.create(scene, targets, NerfConfig.small(**TINY), max_steps=10, device="cpu")
    gen = torch.Generator().manual_seed(0)
    batch = fld.sample_batch(data, 0, gen)
    out = fld.render_rays(batch["origins"], batch["directions"], batch["image"], step=0,
                          background=data.background, teachers=["toy"])
    loss = torch.nn.functional.mse_loss(out["features"]["toy"], batch["features"]["toy"])
    loss.backward()
    for p in list(fld.field.parameters()) + list(fld.proposals.parameters()):
        assert p.grad is None or float(p.grad.abs().max()) == 0.0
    assert float(fld.features.grid.table.grad.abs().max()) > 0


def test_chunked_render_equals_unchunked_and_shapes(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = NerfField.create(scene, targets, NerfConfig.small(**TINY), max_steps=10, device="cpu")
    gen = torch.Generator().manual_seed(0)
    for s in range(3):
        _step(fld, data, s, gen)
    fld.eval()
    cam = scene.canonical_cameras()[scene.test[0]].scaled(0.5)
    fld.config.render_chunk = 100_000
    a = fld.render(cam, background=data.background, projection=("toy", torch.randn(6, 2), torch.ones(2)))
    fld.config.render_chunk = 7
    b = fld.render(cam, background=data.background, projection=("toy", torch.randn(6, 2), torch.ones(2)))
    H, W = int(cam.height[0]), int(cam.width[0])
    assert a.rgb.shape == (H, W, 3) and a.depth.shape == (H, W, 1) and a.alpha.shape == (H, W, 1)
    assert a.features["toy"].shape == (H, W, 6) and a.projected.shape == (H, W, 2)
    for x, y in [(a.rgb, b.rgb), (a.depth, b.depth), (a.alpha, b.alpha), (a.features["toy"], b.features["toy"])]:
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    assert fld.decode(a, "toy", (3, 2)).shape == (6, 3, 2)
    # compared with the teacher, the render is read at the grid's cell centres (trained on bilinear lookups)
    full = a.features["toy"].float().permute(2, 0, 1)
    torch.testing.assert_close(fld.decode(a, "toy", (3, 2), as_teacher=True), sample_at_cell_centres(full, (3, 2)))
    assert not torch.allclose(fld.decode(a, "toy", (3, 2), as_teacher=True), fld.decode(a, "toy", (3, 2)))
    assert fld.decode(a, "toy").shape == (6, H, W)
    c = fld.render(cam, features=False)
    assert c.features == {}


def test_from_config_round_trip(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = NerfField.create(scene, targets, NerfConfig.small(**TINY), max_steps=10, device="cpu")
    gen = torch.Generator().manual_seed(0)
    for s in range(2):
        _step(fld, data, s, gen)
    cfg = json.loads(json.dumps(fld.config_dict()))
    state = {k: v.clone() for k, v in fld.state_dict().items()}
    back = NerfField.from_config(cfg, state)
    fld.eval(), back.eval()
    cam = scene.canonical_cameras()[0].scaled(0.5)
    a, b = fld.render(cam), back.render(cam)
    torch.testing.assert_close(a.rgb, b.rgb)
    torch.testing.assert_close(a.features["toy"], b.features["toy"])
    assert set(back.optimizers()) == {"proposal_networks", "fields", "feature_field"}
    for k, opt in fld.optimizers().items():  # optimizer state of the trained field loads into the rebuilt one
        back.optimizers()[k].load_state_dict(opt.state_dict())


def test_bilinear_teacher_lookup():
    maps = torch.arange(4.0)[None, None, :, None].expand(1, 3, 4, 2).half()  # [N=1, h=3, w=4, D=2]: value = x
    pix = torch.tensor([[0.5 * 8 / 4 + 0.0, 1.0], [8.0 * 0.5, 2.0], [8.0, 3.0]])  # W=8 image over w=4 grid
    out = NerfField._lookup(maps, torch.zeros(3, dtype=torch.int64), pix, H=6, W=8)
    # x_grid = u / W * w - 0.5 -> 0.0, 1.5, 3.5 (clamped to 3)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 1.5, 3.0]))


def test_points_with_features(tiny_nerf_scene):
    scene, data, targets = tiny_nerf_scene
    fld = NerfField.create(scene, targets, NerfConfig.small(**TINY), max_steps=10, device="cpu")
    with torch.no_grad():
        fld.field.base[-1].bias[0] = 8.0  # dense everywhere: every grid point is content
    pts = fld.points_with_features("toy", max_points=500)
    assert pts["xyz"].shape == (500, 3) and pts["features"].shape == (500, 6) and pts["rgb"].shape == (500, 3)
    lo, hi = fld.contraction.aabb
    assert ((pts["xyz"] >= lo - 1e-5) & (pts["xyz"] <= hi + 1e-5)).all()
    assert (pts["opacity"] > fld.config.point_threshold).all()
