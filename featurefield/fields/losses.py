"""Image losses shared by the field backends: L1, SSIM / D-SSIM (Gaussian window), PSNR, feature losses."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.errors import warn


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over all elements."""
    return (pred - target).abs().mean()


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float, device: str, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


_fused_ssim_failed: list[str] = []  # the reason, once the fused kernels failed to build on this device


@functools.lru_cache(maxsize=1)
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity with a Gaussian window ("valid" borders, as torchmetrics/pytorch-msssim).

    On CUDA, ``[H, W, C]`` fp32 images go through the fused Triton kernels of
    :mod:`featurefield.fields.ssim_triton` (gradient for ``pred`` only); elsewhere :func:`ssim_torch`.

    Args:
        pred, target: ``[H, W, C]`` or ``[B, C, H, W]`` images in [0, 1].
    Returns:
        0-d tensor, 1 for identical images.
    """
    if (pred.is_cuda and pred.dim() == 3 and pred.dtype == torch.float32 and target.shape == pred.shape
            and min(pred.shape[:2]) >= window and not target.requires_grad and _triton_available()
            and not _fused_ssim_failed):
        from featurefield.fields.ssim_triton import ssim_fused

        try:
            return ssim_fused(pred, target, _gaussian_1d(window, sigma, str(pred.device), torch.float32))
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # a Triton that cannot build the kernels here: the twin computes the same
            _fused_ssim_failed.append(repr(err))
            warn(f"fused SSIM unavailable ({err!r:.200}); using the PyTorch SSIM")
    return ssim_torch(pred, target, window, sigma)


def ssim_torch(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """:func:`ssim` in plain PyTorch (the fused kernels' twin): two grouped 1-D convolutions for the moments."""
    if pred.dim() == 3:
        pred, target = pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]
    C = pred.shape[1]
    g = _gaussian_1d(window, sigma, str(pred.device), pred.dtype)
    # the five local moments in one grouped convolution pair (5C channels) instead of five
    x = torch.cat([pred, target, pred * pred, target * target, pred * target], 1)
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(5 * C, 1, 1, window), groups=5 * C)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(5 * C, 1, window, 1), groups=5 * C)
    mu_x, mu_y, exx, eyy, exy = x.split(C, 1)
    c1, c2 = 0.01**2, 0.03**2
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    num = (2 * mu_xy + c1) * (2 * (exy - mu_xy) + c2)
    den = (mu_xx + mu_yy + c1) * ((exx - mu_xx) + (eyy - mu_yy) + c2)
    return (num / den).mean()


def dssim(pred: Tensor, target: Tensor) -> Tensor:
    """Structural dissimilarity ``1 - SSIM`` (the 3DGS loss term)."""
    return 1.0 - ssim(pred, target)


def feature_loss(pred: Tensor, target: Tensor, loss: str = "l1", dim: int = 0) -> Tensor:
    """Distillation loss between feature maps.

    Args:
        pred, target: features with the channel axis at ``dim`` (e.g. ``[D, h, w]``).
        loss: ``"l1"`` (Feature 3DGS), ``"l1+cos"`` (L1 plus ``1 - cosine``), ``"mse"`` (F3RM).
    """
    if loss == "l1":
        return l1(pred, target)
    if loss == "mse":
        return F.mse_loss(pred, target)
    if loss == "l1+cos":
        return l1(pred, target) + (1 - F.cosine_similarity(pred, target, dim=dim, eps=1e-6)).mean()
    raise ValueError(f"unknown feature loss {loss!r}; expected 'l1', 'l1+cos' or 'mse'")
