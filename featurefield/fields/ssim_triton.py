"""SSIM of two ``[H, W, C]`` images as two fused Triton kernels (forward, backward) for the Gaussian step.

:func:`featurefield.fields.losses.ssim_torch` builds the five local moments (means, second moments, cross
moment) with two grouped 1-D convolutions and forms the SSIM map with a dozen elementwise kernels, and
autograd runs as many again backwards. Here one kernel computes, per output pixel of the "valid" window,
the five moments over the 11 x 11 Gaussian window, the SSIM value, and the three partial derivatives the
backward needs (of SSIM with respect to ``mu_x``, ``E[x^2]`` and ``E[xy]``); the backward kernel gathers
them back over the window onto each input pixel:

    dL/dx[p] = sum_window g g (dS/dmu_x + 2 x[p] dS/dE[x^2] + y[p] dS/dE[xy]) * dL/dSSIM / count.

The same quantity as the PyTorch twin, summed in another order (fp32 rounding). Gradients reach ``pred``
only (the target is an image). Runs on CUDA; under ``TRITON_INTERPRET=1`` on CPU tensors (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from featurefield.errors import warn

BLOCK = 256


@triton.jit
def _ssim_fwd(x_ptr, y_ptr, g_ptr, part_ptr, dmu_ptr, dxx_ptr, dxy_ptr, Ho, Wo, n_blocks,
              sxh, sxw, sxc, syh, syw, syc, C1, C2, WIN: tl.constexpr, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    c = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    n = Ho * Wo
    mask = offs < n
    i = offs // Wo
    j = offs % Wo
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    my = tl.zeros([BLOCK], dtype=tl.float32)
    mxx = tl.zeros([BLOCK], dtype=tl.float32)
    myy = tl.zeros([BLOCK], dtype=tl.float32)
    mxy = tl.zeros([BLOCK], dtype=tl.float32)
    for a in range(WIN):
        ga = tl.load(g_ptr + a)
        xrow = x_ptr + (i + a) * sxh + c * sxc
        yrow = y_ptr + (i + a) * syh + c * syc
        for b in range(WIN):
            w = ga * tl.load(g_ptr + b)
            xv = tl.load(xrow + (j + b) * sxw, mask=mask, other=0.0).to(tl.float32)
            yv = tl.load(yrow + (j + b) * syw, mask=mask, other=0.0).to(tl.float32)
            wx = w * xv
            wy = w * yv
            mx += wx
            my += wy
            mxx += wx * xv
            myy += wy * yv
            mxy += wx * yv
    mu_xx = mx * mx
    mu_yy = my * my
    mu_xy = mx * my
    a1 = 2 * mu_xy + C1
    a2 = 2 * (mxy - mu_xy) + C2
    b1 = mu_xx + mu_yy + C1
    b2 = (mxx - mu_xx) + (myy - mu_yy) + C2
    d = b1 * b2
    s = a1 * a2 / d
    out = c * n + offs
    tl.store(dmu_ptr + out, 2.0 / d * (my * (a2 - a1) + mx * s * (b1 - b2)), mask=mask)
    tl.store(dxx_ptr + out, -s / b2, mask=mask)
    tl.store(dxy_ptr + out, 2.0 * a1 / d, mask=mask)
    tl.store(part_ptr + c * n_blocks + blk, tl.sum(tl.where(mask, s, 0.0), axis=0))


@triton.jit
def _ssim_bwd(x_ptr, y_ptr, g_ptr, dmu_ptr, dxx_ptr, dxy_ptr, gout_ptr, grad_ptr, H, W, Ho, Wo, C, inv_count,
              sxh, sxw, sxc, syh, syw, syc, WIN: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    r = offs // W
    q = offs % W
    n = Ho * Wo
    am = tl.zeros([BLOCK], dtype=tl.float32)
    ab = tl.zeros([BLOCK], dtype=tl.float32)
    ac = tl.zeros([BLOCK], dtype=tl.float32)
    for a in range(WIN):
        ga = tl.load(g_ptr + a)
        i = r - a
        row_ok = mask & (i >= 0) & (i < Ho)
        base = c * n + i * Wo
        for b in range(WIN):
            w = ga * tl.load(g_ptr + b)
            j = q - b
            ok = row_ok & (j >= 0) & (j < Wo)
            am += w * tl.load(dmu_ptr + base + j, mask=ok, other=0.0)
            ab += w * tl.load(dxx_ptr + base + j, mask=ok, other=0.0)
            ac += w * tl.load(dxy_ptr + base + j, mask=ok, other=0.0)
    xv = tl.load(x_ptr + r * sxh + q * sxw + c * sxc, mask=mask, other=0.0).to(tl.float32)
    yv = tl.load(y_ptr + r * syh + q * syw + c * syc, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(gout_ptr) * inv_count
    tl.store(grad_ptr + offs * C + c, scale * (am + 2.0 * xv * ab + yv * ac), mask=mask)


class _FusedSSIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor, g: Tensor, c1: float, c2: float) -> Tensor:
        H, W, C = pred.shape
        win = g.shape[0]
        Ho, Wo = H - win + 1, W - win + 1
        n = Ho * Wo
        n_blocks = triton.cdiv(n, BLOCK)
        dev = pred.device
        part = torch.empty(C, n_blocks, device=dev, dtype=torch.float32)
        dmu, dxx, dxy = (torch.empty(C, n, device=dev, dtype=torch.float32) for _ in range(3))
        _ssim_fwd[(n_blocks, C)](pred, target, g, part, dmu, dxx, dxy, Ho, Wo, n_blocks,
                                 *pred.stride(), *target.stride(), c1, c2, WIN=win, BLOCK=BLOCK)
        ctx.save_for_backward(pred, target, g, dmu, dxx, dxy)
        return part.sum() / (C * n)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pred, target, g, dmu, dxx, dxy = ctx.saved_tensors
        H, W, C = pred.shape
        win = g.shape[0]
        Ho, Wo = H - win + 1, W - win + 1
        grad = torch.empty(H, W, C, device=pred.device, dtype=torch.float32)
        try:
            _ssim_bwd[(triton.cdiv(H * W, BLOCK), C)](pred, target, g, dmu, dxx, dxy, grad_out.float().contiguous(),
                                                     grad, H, W, Ho, Wo, C, 1.0 / (C * Ho * Wo), *pred.stride(),
                                                     *target.stride(), WIN=win, BLOCK=BLOCK)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # a Triton that cannot build this kernel here: the twin's gradient, from now on
            from featurefield.fields import losses

            losses._fused_ssim_failed.append(repr(err))
            warn(f"fused SSIM backward unavailable ({err!r:.200}); using the PyTorch SSIM")
            with torch.enable_grad():
                p = pred.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(losses.ssim_torch(p, target, win), p, grad_out)
        return grad.to(pred.dtype), None, None, None, None


def ssim_fused(pred: Tensor, target: Tensor, g: Tensor, c1: float = 0.01**2, c2: float = 0.03**2) -> Tensor:
    """Mean SSIM of ``pred`` and ``target`` ``[H, W, C]`` (any strides) with the separable window ``g [WIN]``
    ("valid" borders), differentiable with respect to ``pred``; a 0-d fp32 tensor."""
    return _FusedSSIM.apply(pred, target.detach(), g.float().contiguous(), c1, c2)
