"""Losses of the proposal sampler and the geometry: interlevel, distortion, orientation, normals."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-7


def outer_weights(edges: Tensor, env_edges: Tensor, env_weights: Tensor) -> Tensor:
    """Upper bound on each fine bin's weight from a coarse histogram (mip-NeRF 360, eq. 13).

    For fine bin ``[e_i, e_{i+1}]`` it is the summed coarse weight of every coarse bin overlapping it.

    Args:
        edges: ``[R, S + 1]`` fine edges; env_edges: ``[R, P + 1]`` coarse edges; env_weights: ``[R, P]``.
    Returns:
        ``[R, S]``.
    """
    P = env_weights.shape[-1]
    cw = torch.cat([torch.zeros_like(env_weights[:, :1]), torch.cumsum(env_weights, -1)], -1)  # [R, P + 1]
    starts, ends = edges[:, :-1].contiguous(), edges[:, 1:].contiguous()
    lo = (torch.searchsorted(env_edges[:, :-1].contiguous(), starts, right=True) - 1).clamp(0, P - 1)
    hi = torch.searchsorted(env_edges[:, 1:].contiguous(), ends, right=True).clamp(0, P - 1)
    return cw[:, 1:].gather(1, hi) - cw[:, :-1].gather(1, lo)


def interlevel_loss(edges_list: list[Tensor], weights_list: list[Tensor]) -> Tensor:
    """Proposal loss: the proposal histograms must bound the final weights from above.

    Args:
        edges_list, weights_list: per level ``[R, S_k + 1]`` edges (spacing space) and ``[R, S_k]``
            weights; the last entry is the radiance field's (treated as a fixed target).
    Returns:
        0-d loss, ``sum_k mean(max(w - outer_k, 0)^2 / (w + eps))``.
    """
    c, w = edges_list[-1].detach(), weights_list[-1].detach()
    loss = w.new_zeros(())
    for e, p in zip(edges_list[:-1], weights_list[:-1]):
        bound = outer_weights(c, e.detach(), p)
        loss = loss + (torch.clamp(w - bound, min=0) ** 2 / (w + EPS)).mean()
    return loss


def distortion_loss(edges: Tensor, weights: Tensor) -> Tensor:
    """mip-NeRF 360 distortion loss, ``sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (e_{i+1} - e_i)``.

    Computed in O(S) with prefix sums (bins are sorted).

    Args:
        edges: ``[R, S + 1]`` spacing-space edges; weights: ``[R, S]``.
    Returns:
        0-d mean over rays.
    """
    mid = (edges[:, 1:] + edges[:, :-1]) / 2
    width = edges[:, 1:] - edges[:, :-1]
    w_before = torch.cumsum(weights, -1) - weights
    wm_before = torch.cumsum(weights * mid, -1) - weights * mid
    inter = 2 * (weights * (mid * w_before - wm_before)).sum(-1)
    intra = (weights**2 * width).sum(-1) / 3
    return (inter + intra).mean()


def orientation_loss(weights: Tensor, normals: Tensor, directions: Tensor) -> Tensor:
    """Ref-NeRF orientation loss: penalize visible normals facing away from the camera.

    Args:
        weights: ``[R, S]``; normals: ``[R, S, 3]`` unit; directions: ``[R, 3]`` ray directions.
    """
    cos = (normals * directions[:, None, :]).sum(-1)
    return (weights * torch.relu(cos) ** 2).sum(-1).mean()


def normal_consistency_loss(weights: Tensor, normals: Tensor, pred_normals: Tensor) -> Tensor:
    """Ref-NeRF predicted-normal loss ``sum_i w_i (1 - n_i . n'_i)`` (``normals`` from density gradients)."""
    return (weights * (1.0 - (normals * pred_normals).sum(-1))).sum(-1).mean()
