"""Keypoint transfer by rendered features against geometric truth from depth and poses."""

from __future__ import annotations

import torch

from featurefield.query.correspondence import (
    evaluate_pair,
    geometric_truth,
    match_features,
    sample_features,
    transfer_keypoints,
    unproject,
)
from tests.toyfield import ring_cameras, two_spheres


def test_unproject_then_project_is_identity():
    cams = ring_cameras(2, size=32)
    uv = torch.rand(50, 2) * 32
    depth = torch.rand(50) * 2 + 1
    back, z = cams[0].project(unproject(cams[0], uv, depth), 0)
    assert torch.allclose(back, uv, atol=1e-3) and torch.allclose(z, depth, atol=1e-4)


def test_match_features_finds_the_same_feature():
    fb = torch.randn(8, 10, 12)
    uv_b = torch.tensor([[3.5, 4.5], [11.5, 0.5], [0.5, 9.5]])
    fa = torch.zeros(8, 5, 5)
    uv_a = torch.tensor([[0.5, 0.5], [2.5, 2.5], [4.5, 4.5]])
    for (ua, va), (ub, vb) in zip(uv_a.long(), uv_b.long()):
        fa[:, va, ua] = 3 * fb[:, vb, ub]  # scale does not matter: features are normalized
    assert torch.allclose(sample_features(fa, uv_a), fa[:, [0, 2, 4], [0, 2, 4]].T)
    pred, score = match_features(fa, uv_a, fb)
    assert torch.equal(pred, uv_b) and (score > 0.999).all()


def test_geometric_truth_masks_occlusion_and_out_of_view():
    field = two_spheres()
    cams = ring_cameras(4, size=32)
    ra, rb = field.render(cams[0], features=False), field.render(cams[2], features=False)
    uv = torch.stack(torch.meshgrid(torch.arange(32), torch.arange(32), indexing="xy"), -1).reshape(-1, 2).float() + 0.5
    truth, valid = geometric_truth(cams[0], ra.depth[..., 0], uv, cams[2], rb.depth[..., 0])
    hit_a = ra.extras["hit"].reshape(-1)
    assert not valid[hit_a < 0].any()  # no depth, no truth
    # valid points land on the same sphere in B
    hit_b = rb.extras["hit"][truth[valid, 1].long().clamp(0, 31), truth[valid, 0].long().clamp(0, 31)]
    assert (hit_b == hit_a[valid]).float().mean() > 0.95
    # view 2 is opposite view 0: most of what A sees is hidden in B
    assert valid.sum() < (hit_a >= 0).sum() * 0.6


def test_keypoint_transfer_pck_on_exact_features():
    field = two_spheres()
    cams = ring_cameras(8, size=48)
    ra, rb = field.render(cams[0], features=False), field.render(cams[1], features=False)
    pck, n = evaluate_pair(field, cams[0], cams[1], "toy", ra.depth[..., 0], rb.depth[..., 0], count=64,
                           match_side=48, generator=torch.Generator().manual_seed(0))
    assert n > 20
    assert pck["pck@0.05"] > 0.8 and pck["pck@0.01"] <= pck["pck@0.02"] <= pck["pck@0.05"]
    # reduced-resolution matching maps back to full-size pixels
    uv = torch.tensor([[24.5, 24.5]])
    full, _ = transfer_keypoints(field, cams[0], cams[1], uv, "toy", match_side=48)
    low, _ = transfer_keypoints(field, cams[0], cams[1], uv, "toy", match_side=24)
    assert (full - low).norm() < 4.0
