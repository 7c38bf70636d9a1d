"""The Gaussian feature field: training raises PSNR, render shapes, query folding, checkpoints, densification."""

from __future__ import annotations

import math

import torch

from featurefield.cameras import Cameras, look_at
from featurefield.data.images import ImageArrays
from featurefield.data.scene import Normalization, Scene
from featurefield.fields.base import TeacherTarget, TrainData, field_class
from featurefield.fields.splat.config import SplatConfig
from featurefield.fields.splat.model import GaussianField
from featurefield.fields.splat.rasterize_torch import rasterize


def toy_scene(n_views: int = 8, size: int = 32, n_gt: int = 80, dim: int = 6, grid=(8, 8), seed: int = 0):
    """A scene rendered from known Gaussians (RGBA on white) and a feature map per view from their features."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n_gt, 3, generator=g) - 0.5) * 0.8
    scales = 0.07 * (0.5 + torch.rand(n_gt, 3, generator=g))
    quats, opac = torch.randn(n_gt, 4, generator=g), torch.full((n_gt,), 0.9)
    values = torch.cat([torch.rand(n_gt, 3, generator=g), torch.randn(n_gt, dim, generator=g)], -1)
    ang = torch.linspace(0, 2 * math.pi, n_views + 1)[:-1]
    eye = torch.stack([2.5 * torch.cos(ang), 2.5 * torch.sin(ang), 0.8 + 0.3 * torch.sin(3 * ang)], -1)
    cams = Cameras(c2w=look_at(eye, torch.zeros(3)), fx=size * 1.1, fy=size * 1.1, cx=size / 2, cy=size / 2,
                   width=size, height=size)
    imgs, feats = [], []
    for i in range(n_views):
        out, alpha, _ = rasterize(means, quats, scales, opac, values, cams[i].w2c()[0], cams[i].K()[0], size, size,
                                  None, expected_depth=False)
        imgs.append(torch.cat([out[..., :3], alpha], -1).clamp(0, 1))
        feats.append(torch.nn.functional.interpolate(out[..., 3:].permute(2, 0, 1)[None], size=grid, mode="area")[0])
    bounds = torch.tensor([[-0.6] * 3, [0.6] * 3])
    scene = Scene(cameras=cams, images=ImageArrays(imgs), split={"train": list(range(n_views)), "test": [1, 5]},
                  normalization=Normalization.fit(cams, bounds=bounds), bounds=bounds, background=(1.0, 1.0, 1.0),
                  name="toy")
    return scene, torch.stack(feats)


def train_data(scene: Scene, feats: torch.Tensor, name: str = "toy") -> TrainData:
    idx = scene.train
    imgs = torch.stack([scene.image(i) for i in idx])
    alphas = torch.stack([scene.alpha(i) for i in idx])
    return TrainData(cameras=scene.canonical_cameras()[idx], images=(imgs * 255).round().to(torch.uint8),
                     alphas=(alphas * 255).round().to(torch.uint8), features={name: feats[idx].half()},
                     background=torch.tensor(scene.background))


def make_field(scene, feats, steps, **cfg) -> GaussianField:
    targets = [TeacherTarget("toy", feats.shape[1], tuple(feats.shape[-2:]))]
    config = SplatConfig(**({"cpu_max_init": 600, "cpu_max_gaussians": 1200, "sh_degree": 1} | cfg))
    return GaussianField.create(scene, targets, config, max_steps=steps)


def run_steps(field, data, steps, start=0):
    opts, scheds, gen = field.optimizers(), field.schedulers(), torch.Generator().manual_seed(0)
    losses = None
    for step in range(start, start + steps):
        batch = field.sample_batch(data, step, gen)
        losses = field.training_loss(batch, data, step)
        losses["loss"].backward()
        field.after_step(step, batch, losses)
        for o in opts.values():
            o.step()
            o.zero_grad()
        for s in scheds.values():
            s.step()
        field.after_optimizer_step(step)
    return losses


@torch.no_grad()
def mean_psnr(field, scene, views):
    cams = scene.canonical_cameras()
    vals = []
    for i in views:
        r = field.render(cams[i], features=False)
        vals.append(-10 * torch.log10(((r.rgb - scene.image(i)) ** 2).mean()))
    return float(torch.stack(vals).mean())


def test_training_raises_psnr_and_feature_fit():
    torch.manual_seed(0)
    scene, feats = toy_scene()
    data = train_data(scene, feats)
    field = make_field(scene, feats, steps=80)
    before = mean_psnr(field, scene, [0, 3])
    first = run_steps(field, data, 1)
    last = run_steps(field, data, 79, start=1)
    after = mean_psnr(field, scene, [0, 3])
    assert after > before + 5 and after > 20, (before, after)
    assert last["feature/toy"] < 0.8 * first["feature/toy"]
    assert set(last) >= {"loss", "rgb", "ssim", "psnr", "feature/toy"}
    assert field_class("splat") is GaussianField


def test_render_shapes_decode_and_projection_folding():
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=3)
    field = make_field(scene, feats, steps=10)
    with torch.no_grad():
        field.params["embedding"].normal_()  # non-trivial embeddings
    cam = scene.canonical_cameras()[0]
    P, b = torch.randn(6, 3), torch.randn(3)
    r = field.render(cam, projection=("toy", P, b))
    assert r.rgb.shape == (32, 32, 3) and r.depth.shape == (32, 32, 1) and r.alpha.shape == (32, 32, 1)
    assert r.embedding.shape == (32, 32, field.config.embed_dim) and r.projected.shape == (32, 32, 3)
    feats_full = field.decode(r, "toy")  # [D, H, W]
    assert feats_full.shape == (6, 32, 32)
    assert field.decode(r, "toy", grid=(8, 8)).shape == (6, 8, 8)
    expected = feats_full.permute(1, 2, 0) @ P + b
    assert torch.allclose(r.projected, expected, atol=1e-4)
    only = field.render(cam, features=False, projection=("toy", P, b))  # folded: K channels, no embedding
    assert only.embedding is None and torch.allclose(only.projected, expected, atol=1e-4)
    pts = field.points_with_features("toy")
    assert pts["xyz"].shape == (field.num_gaussians, 3) and pts["features"].shape == (field.num_gaussians, 6)


def test_checkpoint_round_trip_and_densification():
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=4)
    data = train_data(scene, feats)
    steps = 60  # schedule scaled to the run: refine from step 1 every 10 steps
    field = make_field(scene, feats, steps=steps, cpu_max_init=300, cpu_max_gaussians=5000)
    n0 = field.num_gaussians
    run_steps(field, data, 25)
    assert field.num_gaussians != n0  # clone/split/prune changed the count
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in field.state_dict().items()}
    opt_states = {k: o.state_dict() for k, o in field.optimizers().items()}
    restored = GaussianField.from_config(field.config_dict(), state)
    assert restored.num_gaussians == field.num_gaussians
    for k, o in restored.optimizers().items():
        o.load_state_dict(opt_states[k])
    cam = scene.canonical_cameras()[1]
    with torch.no_grad():
        a, b = field.render(cam), restored.render(cam)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.embedding, b.embedding)
    assert restored._cursor == field._cursor and torch.equal(restored._perm, field._perm)
