"""Volume rendering: weights from densities and the weighted sums of colours, depths and features."""

from __future__ import annotations

import torch
from torch import Tensor


def weights_from_density(density: Tensor, deltas: Tensor) -> Tensor:
    """Quadrature weights ``w_i = T_i (1 - exp(-sigma_i delta_i))``, ``T_i = exp(-sum_{j<i} sigma_j delta_j)``.

    Args:
        density: ``[R, S]`` non-negative densities.
        deltas: ``[R, S]`` interval lengths.
    Returns:
        ``[R, S]`` weights; each row sums to the ray's accumulated opacity (at most 1).
    """
    dd = density * deltas
    alpha = 1 - torch.exp(-dd)
    trans = torch.exp(-torch.cat([torch.zeros_like(dd[:, :1]), torch.cumsum(dd[:, :-1], -1)], -1))
    return alpha * trans


def accumulate(weights: Tensor, values: Tensor) -> Tensor:
    """``sum_i w_i v_i``: ``weights [R, S]``, ``values [R, S, C]`` -> ``[R, C]`` (colour, features).

    Written as a product and a sum (not a matmul) so autocast never lowers it to bf16.
    """
    return (weights.to(values.dtype)[..., None] * values).sum(-2)


def composite_rgb(weights: Tensor, rgb: Tensor, background: Tensor | None) -> Tensor:
    """Rendered colour ``[R, 3]`` with ``background [3]`` behind the remaining transmittance."""
    out = accumulate(weights, rgb.float())
    if background is not None:
        out = out + (1 - weights.sum(-1, keepdim=True)) * background.to(out)
    return out


def expected_distance(weights: Tensor, t_mid: Tensor, eps: float = 1e-6) -> Tensor:
    """``sum w t / sum w`` per ray, ``[R]`` (0 where nothing is hit)."""
    acc = weights.sum(-1)
    d = (weights * t_mid).sum(-1) / acc.clamp_min(eps)
    return torch.where(acc > eps, d, torch.zeros_like(d))


def median_distance(weights: Tensor, t_mid: Tensor) -> Tensor:
    """Distance where the accumulated weight first reaches 0.5, ``[R]`` (Nerfacto's "median" depth)."""
    cdf = torch.cumsum(weights, -1)
    idx = torch.searchsorted(cdf.contiguous(), torch.full_like(cdf[:, :1], 0.5)).clamp(0, t_mid.shape[-1] - 1)
    return t_mid.gather(1, idx)[:, 0]
