"""The training losses' fast paths against their plain-PyTorch twins: the fused SSIM (Triton)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from featurefield.fields.losses import ssim, ssim_torch
from tests.conftest import REPO, cuda


def test_ssim_torch_is_one_for_identical_images_and_lower_for_noise():
    torch.manual_seed(0)
    img = torch.rand(24, 20, 3)
    assert abs(float(ssim_torch(img, img)) - 1.0) < 1e-5
    assert float(ssim_torch((img + 0.3 * torch.randn_like(img)).clamp(0, 1), img)) < 0.9


_INTERPRET_SCRIPT = textwrap.dedent("""
    import torch
    from featurefield.fields.losses import _gaussian_1d, ssim_torch
    from featurefield.fields.ssim_triton import ssim_fused
    torch.manual_seed(0)
    target = torch.rand(19, 23, 3)
    render = (target + 0.2 * torch.randn(19, 23, 5)[..., :3]).clamp(0, 1)
    wide = torch.cat([render, torch.rand(19, 23, 2)], -1)  # a render's colour: a slice of more channels
    for pred in (render.clone(), wide[..., :3]):
        pred = pred.detach().requires_grad_(True)
        ref_pred = pred.detach().clone().requires_grad_(True)
        out = ssim_fused(pred, target, _gaussian_1d(11, 1.5, "cpu", torch.float32))
        ref = ssim_torch(ref_pred, target)
        (2.5 * out).backward()
        (2.5 * ref).backward()
        assert abs(float(out) - float(ref)) < 1e-6, (float(out), float(ref))
        err = float((pred.grad - ref_pred.grad).abs().max())
        assert err < 1e-5 * float(ref_pred.grad.abs().max()), err
    print("OK")
""")


def test_fused_ssim_matches_torch_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _INTERPRET_SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@cuda
def test_fused_ssim_matches_torch_on_cuda():
    torch.manual_seed(0)
    target = torch.rand(800, 800, 3, device="cuda")
    render = (target + 0.1 * torch.randn(800, 800, 17, device="cuda")[..., :3]).clamp(0, 1)
    pred = render.requires_grad_(True)
    ref_pred = render.detach().clone().requires_grad_(True)
    out = ssim(pred, target)  # the fused path on CUDA
    ref = ssim_torch(ref_pred, target)
    out.backward()
    ref.backward()
    assert abs(float(out) - float(ref)) < 1e-5
    assert float((pred.grad - ref_pred.grad).norm() / ref_pred.grad.norm()) < 1e-4
