"""Direction and position encodings: real spherical harmonics (degree 4) and sin/cos frequencies."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def spherical_harmonics(directions: Tensor, degree: int = 4) -> Tensor:
    """Real spherical-harmonic basis of unit directions (Nerfacto's direction encoding).

    Args:
        directions: ``[..., 3]`` unit vectors.
        degree: number of bands, 1 to 4 (``degree**2`` coefficients; 4 gives 16).
    Returns:
        ``[..., degree**2]``.
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree must be 1..4, got {degree}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [0.4886025119029199 * y, 0.4886025119029199 * z, 0.4886025119029199 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [1.0925484305920792 * x * y, 1.0925484305920792 * y * z, 0.9461746957575601 * zz - 0.31539156525251999,
                1.0925484305920792 * x * z, 0.5462742152960396 * (xx - yy)]
    if degree > 3:
        out += [0.5900435899266435 * y * (3 * xx - yy), 2.890611442640554 * x * y * z,
                0.4570457994644658 * y * (5 * zz - 1), 0.3731763325901154 * z * (5 * zz - 3),
                0.4570457994644658 * x * (5 * zz - 1), 1.445305721320277 * z * (xx - yy),
                0.5900435899266435 * x * (xx - 3 * yy)]
    return torch.stack(out, -1)


def frequency_encoding(x: Tensor, num_frequencies: int = 6) -> Tensor:
    """``sin(2^k pi x)``, ``cos(2^k pi x)`` for ``k < num_frequencies`` (tiny-cuda-nn's "Frequency").

    Args:
        x: ``[..., C]`` (positions in ``[0, 1]``).
    Returns:
        ``[..., C * 2 * num_frequencies]``.
    """
    freqs = (2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)) * math.pi
    scaled = (x[..., :, None] * freqs).flatten(-2)  # [..., C * K]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], -1)
