"""A small synthetic scene for the Gaussian field's tests: random coloured Gaussians seen by a ring of cameras,
with per-view toy teacher features, and helpers to build and train a field on it."""

from __future__ import annotations

import math

import torch

from featurefield.cameras import Cameras, look_at
from featurefield.data.images import ImageArrays
from featurefield.data.scene import Normalization, Scene
from featurefield.fields.base import TeacherTarget, TrainData
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
