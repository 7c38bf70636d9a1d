"""Per-image appearance compensation and camera pose refinement of the Gaussian field (CPU torch rasterizer)."""

from __future__ import annotations

import dataclasses

import torch

from featurefield.data import load_scene
from featurefield.data.images import ImageArrays
from featurefield.fields.base import TrainData
from featurefield.fields.splat.capture import AppearanceCompensation, PoseRefinement, _skew, se3_exp
from featurefield.fields.splat.config import SplatConfig
from featurefield.fields.splat.model import GaussianField
from featurefield.fields.splat.views import views_of
from featurefield.train import _images_uint8, optimization_step


def test_appearance_recovers_per_image_exposure_up_to_the_mean():
    gen = torch.Generator().manual_seed(0)
    renders = torch.rand(6, 8, 8, 3, generator=gen)
    gains = torch.tensor([0.6, 0.8, 1.0, 1.2, 1.4, 1.0])  # mean 1: the fixed renders hold the mean
    model = AppearanceCompensation(6)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(300):
        loss = sum(((model(renders[i], i) - gains[i] * renders[i]) ** 2).mean() for i in range(6))
        opt.zero_grad()
        loss.backward()
        opt.step()
    learnt = torch.stack([model.transform(i)[0].diagonal() for i in range(6)])  # [6, 3]
    assert torch.allclose(learnt, gains[:, None].expand(-1, 3), atol=0.03), learnt
    # the mean transform over the images is the identity, whatever the parameters hold
    mean = torch.stack([model.transform(i)[0] for i in range(6)]).mean(0)
    assert torch.allclose(mean, torch.eye(3), atol=1e-5)


def test_field_with_appearance_learns_the_exposure_of_each_training_image():
    scene = load_scene("demo", size=40, views=12, supersample=1)
    gains = torch.linspace(0.6, 1.0, len(scene))[torch.randperm(len(scene), generator=torch.Generator().manual_seed(1))]
    dim = dataclasses.replace(scene, images=ImageArrays([scene.image(i) * gains[i] for i in range(len(scene))]))
    torch.manual_seed(0)
    steps = 200
    fld = GaussianField.create(dim, [], SplatConfig(sh_degree=0, appearance=True, lr_appearance=1e-2),
                               max_steps=steps, device="cpu")
    images, _ = _images_uint8(dim, dim.train, torch.device("cpu"))
    data = TrainData(cameras=dim.canonical_cameras()[dim.train], images=images, alphas=None, features={},
                     background=torch.ones(3))
    fld.train()
    fld.optimizers(), fld.schedulers()
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        optimization_step(fld, data, step, g)
    learnt = torch.stack([fld.appearance.transform(k)[0].diagonal().mean() for k in range(len(dim.train))]).detach()
    true = gains[dim.train] / gains[dim.train].mean()
    corr = torch.corrcoef(torch.stack([learnt, true]))[0, 1]
    assert corr > 0.9, (learnt, true)
    # saved and rebuilt with its transforms
    state = fld.state_dict()
    again = GaussianField.from_config(fld.config_dict(), state)
    assert torch.equal(again.appearance.affine, fld.appearance.affine)


def test_se3_exp_matches_the_matrix_exponential():
    delta = torch.tensor([0.1, -0.2, 0.3, 0.05, -0.4, 0.2], dtype=torch.float64)
    T = se3_exp(delta)
    R = torch.linalg.matrix_exp(_skew(delta[3:]))
    assert torch.allclose(T[:3, :3], R, atol=1e-10) and torch.allclose(T[:3, 3], delta[:3])
    assert torch.allclose(se3_exp(torch.zeros(6)), torch.eye(4))


def test_pose_refinement_moves_a_perturbed_camera_back():
    scene = load_scene("demo", size=48, views=8, supersample=1)
    torch.manual_seed(0)
    fld = GaussianField.create(scene, [], SplatConfig(sh_degree=0, init_scale=0.7), max_steps=10, device="cpu")
    fld.params.requires_grad_(False)
    view = views_of(scene.canonical_cameras()[[1]])[0]
    bg = torch.ones(3)
    with torch.no_grad():
        target, _, _, _, _ = fld.rasterize(view, background=bg, depth=False)
    true = torch.tensor([0.03, -0.02, 0.0, 0.0, 0.015, -0.01])  # the camera is off by this
    refine = PoseRefinement(1)
    with torch.no_grad():
        refine.delta[0] = -true
    start = view
    opt = torch.optim.Adam(refine.parameters(), lr=2e-3)
    first = None
    for _ in range(80):
        rgb, _, _, _, _ = fld.rasterize(refine(start, 0), background=bg, depth=False)
        loss = (rgb - target).abs().mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    err = float((refine.delta[0]).norm())
    assert err < 0.4 * float(true.norm()), refine.delta
    assert float(loss) < 0.5 * first
