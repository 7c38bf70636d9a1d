"""Per-image appearance compensation and camera pose refinement of the Gaussian field (CPU torch rasterizer)."""

from __future__ import annotations

import torch

from featurefield.fields.splat.capture import AppearanceCompensation, _skew, se3_exp


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


def test_se3_exp_matches_the_matrix_exponential():
    delta = torch.tensor([0.1, -0.2, 0.3, 0.05, -0.4, 0.2], dtype=torch.float64)
    T = se3_exp(delta)
    R = torch.linalg.matrix_exp(_skew(delta[3:]))
    assert torch.allclose(T[:3, :3], R, atol=1e-10) and torch.allclose(T[:3, 3], delta[:3])
    assert torch.allclose(se3_exp(torch.zeros(6)), torch.eye(4))
