"""Real spherical harmonics up to degree 3, in the basis order and signs gsplat and 3DGS use.

Colours are ``SH(dir) + 0.5`` clamped at 0, with ``dir`` the unit vector from the camera centre to
the Gaussian. Coefficients are ``[..., K, 3]`` with ``K = (degree + 1) ** 2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: The degree-0 basis constant 1 / (2 sqrt(pi)).
SH_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_sh_bases(degree: int) -> int:
    """``(degree + 1) ** 2``."""
    return (degree + 1) ** 2


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """The real SH basis functions evaluated at unit directions.

    Args:
        degree: 0..3.
        dirs: ``[..., 3]`` unit vectors.
    Returns:
        ``[..., (degree + 1) ** 2]``.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be within 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * xy * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, -1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colours (before the +0.5 offset), using the first ``(degree+1)**2`` coefficients.

    Args:
        dirs: ``[..., 3]`` view directions (normalized here).
        coeffs: ``[..., K, 3]`` with ``K >= (degree + 1) ** 2``.
    Returns:
        ``[..., 3]``.
    """
    n = num_sh_bases(degree)
    bases = sh_bases(degree, F.normalize(dirs, dim=-1))
    return (bases[..., None] * coeffs[..., :n, :]).sum(-2)


def sh_to_colors(degree: int, means: Tensor, campos: Tensor, coeffs: Tensor) -> Tensor:
    """Per-Gaussian RGB as gsplat computes it: ``clamp_min(SH(means - campos) + 0.5, 0)``.

    Args:
        means: ``[N, 3]``; campos: ``[3]`` camera centre; coeffs: ``[N, K, 3]``.
    Returns:
        ``[N, 3]``.
    """
    return torch.clamp_min(eval_sh(degree, means - campos, coeffs) + 0.5, 0.0)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Degree-0 coefficient giving ``rgb`` from every direction: ``[..., 3] -> [..., 3]``."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh0: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_sh`."""
    return sh0 * SH_C0 + 0.5
