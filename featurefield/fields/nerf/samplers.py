"""Ray sampling for the proposal-network sampler (Nerfacto), in a normalized "spacing" coordinate.

Samples along a ray are kept as bin edges ``s`` in ``[0, 1]`` of a spacing coordinate; the spacing
function maps them to distances ``t`` in ``[near, far]``:

* ``"uniform"``: ``t`` linear in ``s`` (bounded scenes, between the ray's box entry and exit);
* ``"lindisp"``: Nerfacto's piecewise spacing ``g(t) = t/2`` for ``t < 1``, ``1 - 1/(2t)`` beyond:
  uniform near the cameras, uniform in disparity far away (unbounded scenes).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _g(t: Tensor, kind: str) -> Tensor:
    if kind == "uniform":
        return t
    return torch.where(t < 1, t / 2, 1 - 1 / (2 * t.clamp_min(1e-6)))


def _g_inv(y: Tensor, kind: str) -> Tensor:
    if kind == "uniform":
        return y
    return torch.where(y < 0.5, 2 * y, 1 / (2 - 2 * y).clamp_min(1e-6))


def spacing_to_distance(s: Tensor, near: Tensor, far: Tensor, kind: str) -> Tensor:
    """Distances along rays of spacing values.

    Args:
        s: ``[R, K]`` in ``[0, 1]``.
        near, far: ``[R]`` ray bounds.
        kind: ``"uniform"`` or ``"lindisp"``.
    Returns:
        ``[R, K]`` distances in ``[near, far]``.
    """
    g0, g1 = _g(near[:, None], kind), _g(far[:, None], kind)
    return _g_inv(g0 + s * (g1 - g0), kind)


def uniform_edges(num_rays: int, num_samples: int, device, jitter: bool, single_jitter: bool = True,
                  generator: torch.Generator | None = None) -> Tensor:
    """``num_samples`` stratified bins per ray in spacing space.

    Returns:
        ``[R, num_samples + 1]`` sorted edges; with ``jitter`` each edge moves within its stratum
        (one shared offset per ray with ``single_jitter``, as Nerfacto).
    """
    edges = torch.linspace(0.0, 1.0, num_samples + 1, device=device).expand(num_rays, -1)
    if not jitter:
        return edges.contiguous()
    shape = (num_rays, 1) if single_jitter else (num_rays, num_samples + 1)
    u = torch.rand(shape, device=device, generator=generator)
    mid = (edges[:, 1:] + edges[:, :-1]) / 2
    upper = torch.cat([mid, edges[:, -1:]], -1)
    lower = torch.cat([edges[:, :1], mid], -1)
    return lower + (upper - lower) * u


def pdf_edges(edges: Tensor, weights: Tensor, num_samples: int, jitter: bool, single_jitter: bool = True,
              padding: float = 0.01, eps: float = 1e-5, generator: torch.Generator | None = None) -> Tensor:
    """Resample bins by inverse transform sampling of a piecewise-constant PDF (proposal resampling).

    Args:
        edges: ``[R, S + 1]`` current bin edges (spacing space).
        weights: ``[R, S]`` weights of those bins (not necessarily normalized).
        num_samples: bins of the result.
        jitter: random offsets (training) or bin centres (evaluation).
        padding: added to every weight so empty regions keep some samples (Nerfacto's histogram padding).
    Returns:
        ``[R, num_samples + 1]`` sorted edges, detached.
    """
    edges, weights = edges.detach(), weights.detach().float()
    R, S = weights.shape
    weights = weights + padding
    total = weights.sum(-1, keepdim=True)
    pad = torch.relu(eps - total)
    weights = weights + pad / S
    total = total + pad
    cdf = torch.cumsum(weights / total, -1).clamp_max(1.0)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)  # [R, S + 1]
    n = num_samples + 1
    base = torch.linspace(0.0, 1.0 - 1.0 / n, n, device=edges.device)
    if jitter:
        shape = (R, 1) if single_jitter else (R, n)
        u = base + torch.rand(shape, device=edges.device, generator=generator) / n
    else:
        u = (base + 0.5 / n).expand(R, -1)
    u = u.contiguous()
    inds = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (inds - 1).clamp(0, S)
    above = inds.clamp(0, S)
    cdf0, cdf1 = cdf.gather(1, below), cdf.gather(1, above)
    b0, b1 = edges.gather(1, below), edges.gather(1, above)
    frac = torch.nan_to_num((u - cdf0) / (cdf1 - cdf0), 0.0).clamp(0, 1)
    return (b0 + frac * (b1 - b0)).detach()


def ray_aabb(origins: Tensor, directions: Tensor, aabb: Tensor, near_plane: float = 0.0) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through a box (slab test).

    Args:
        origins, directions: ``[R, 3]``.
        aabb: ``[2, 3]`` min and max corner.
    Returns:
        near, far ``[R]``; rays that miss the box get ``far == near`` (no samples count).
    """
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[0].to(origins) - origins) * inv
    t1 = (aabb[1].to(origins) - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(near_plane)
    far = torch.maximum(t0, t1).amin(-1)
    far = torch.maximum(far, near)
    return near, far
