"""Metrics: PSNR, SSIM, LPIPS availability, feature fidelity, IoU, mIoU, PCK."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from featurefield.metrics import (
    LPIPS_BACKBONES,
    Lpips,
    confusion_matrix,
    content_regions,
    cosine_map,
    feature_fidelity,
    mask_iou,
    miou,
    pck,
    psnr,
    ssim,
)


def test_psnr_and_ssim():
    gt = torch.rand(16, 16, 3)
    pred = (gt + 0.1).clamp(0, 1)
    mse = float(((pred - gt) ** 2).mean())
    assert math.isclose(psnr(pred, gt), -10 * math.log10(mse), rel_tol=1e-4)
    assert math.isclose(ssim(gt, gt), 1.0, abs_tol=1e-5)
    assert ssim(torch.rand(16, 16, 3), gt) < 0.5


def test_lpips_reports_unavailable_instead_of_failing(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    m = Lpips("alex")
    assert not m.available and m(torch.rand(8, 8, 3), torch.rand(8, 8, 3)) is None
    assert str(Path(tmp_path) / "checkpoints" / LPIPS_BACKBONES["alex"]) in m.describe()
    assert m.describe().startswith("unavailable (")


def test_feature_fidelity():
    t = torch.randn(8, 5, 6)
    assert feature_fidelity(t, t) == {"cosine": 1.0, "rel_l2": 0.0}
    twice = feature_fidelity(2 * t, t)
    assert math.isclose(twice["cosine"], 1.0, rel_tol=1e-5) and math.isclose(twice["rel_l2"], 1.0, rel_tol=1e-5)
    assert feature_fidelity(-t, t)["cosine"] < -0.99
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[0, 0] = True
    noisy = t.clone()
    noisy[:, 1:] = torch.randn(8, 4, 6)
    assert math.isclose(feature_fidelity(noisy, t, mask)["cosine"], 1.0, rel_tol=1e-5)


def test_content_regions_split_interior_silhouette_background():
    # a 40 x 40 image, content in rows/columns 8..31, on a 10 x 10 grid of 4-pixel cells: cells 2..7 covered
    cov = torch.zeros(40, 40)
    cov[8:32, 8:32] = 1
    r = content_regions(cov, (10, 10))
    assert r[4, 4] == 0 and r[3, 3] == 0 and r[6, 6] == 0  # interior: the cell and its neighbours covered
    assert r[2, 4] == 1 and r[1, 4] == 1 and r[8, 4] == 1  # an edge cell, and empty cells touching the object
    assert r[0, 0] == 2 and r[9, 9] == 2 and r[0, 4] == 2  # two cells away: background
    assert int((r == 0).sum()) == 16 and int((r == 1).sum()) == 64 - 16 and int((r == 2).sum()) == 100 - 64
    # a half-covered cell is silhouette even inside
    cov[18:20, 18:20] = 0
    assert content_regions(cov, (10, 10))[4, 4] == 1


def test_cosine_map_matches_the_mean_cosine():
    p, t = torch.randn(8, 5, 6), torch.randn(8, 5, 6)
    c = cosine_map(p, t)
    assert c.shape == (5, 6) and abs(float(c.mean()) - feature_fidelity(p, t)["cosine"]) < 1e-6
    assert torch.allclose(cosine_map(t, t), torch.ones(5, 6), atol=1e-6)


def test_mask_iou_and_miou():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = a.clone()
    a[:2] = True
    b[1:3] = True
    assert math.isclose(mask_iou(a, b), 4 / 12)
    assert mask_iou(torch.zeros(3, 3), torch.zeros(3, 3)) == 1.0
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 2, 0]])
    cm = confusion_matrix(pred, gt, 4)
    mean, per = miou(cm)
    assert per[0] == 1 / 3 and per[1] == 2 / 3 and per[2] == 3 / 4 and math.isnan(per[3])
    assert math.isclose(mean, (1 / 3 + 2 / 3 + 3 / 4) / 3)
    assert confusion_matrix(pred, gt, 4, ignore_index=0).sum() == 6


def test_pck_thresholds_scale_with_image_size():
    true = torch.zeros(4, 2)
    pred = torch.tensor([[0.5, 0.0], [1.5, 0.0], [4.0, 0.0], [20.0, 0.0]])
    out = pck(pred, true, (50, 100))  # 1%, 2%, 5% of 100 px = 1, 2, 5 px
    assert out == {"pck@0.01": 0.25, "pck@0.02": 0.5, "pck@0.05": 0.75}
