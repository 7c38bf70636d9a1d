"""A plain-PyTorch differentiable Gaussian rasterizer with the same maths as gsplat's ``rasterization``.

What it reproduces (gsplat 1.5.3, pinhole, ``packed=False``, ``antialiased=False``):

* EWA projection: ``cov2d = J W cov3d W^T J^T + eps2d * I`` (the 0.3 low-pass dilation), with the
  Jacobian evaluated at the camera-space mean clamped to 1.3x the field of view;
* culling at ``near_plane``/``far_plane``, of non-positive determinants, of Gaussians whose opacity is
  below 1/255, and of those whose opacity-aware box (``min(3.33, sqrt(2 ln(255 o)))`` sigmas) misses
  the image;
* per pixel (centres at +0.5), front-to-back compositing in z order of
  ``alpha = min(0.999, o * exp(-sigma))``, skipping ``alpha < 1/255`` and stopping (exclusively) once
  the transmittance would fall to 1e-4; background added with the final transmittance;
* any channel count (RGB, embeddings, projected queries), plus an expected-depth channel.

Memory: each Gaussian is paired with the pixels inside its box only; pairs are sorted by pixel and
depth and composited (a segmented scan of ``log(1 - alpha)`` over the sorted list) in chunks of image
rows whose work arrays stay below a fixed element budget, so CPU renders of ~160x120 images with ~50k
Gaussians fit in a few hundred MB. This is the reference; renders that need no gradient (the viewer,
evaluation) composite in tiles instead (:mod:`~featurefield.fields.splat.composite_tiles`, several
times faster on the CPU), and the tests compare the two.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices of quaternions ``(w, x, y, z)`` (normalized here): ``[N, 4] -> [N, 3, 3]``."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``R S S^T R^T``: quats ``[N, 4]``, scales ``[N, 3]`` (activated) -> ``[N, 3, 3]``."""
    M = quat_to_rotmat(quats) * scales[:, None, :]
    return M @ M.transpose(1, 2)


def project(means: Tensor, covars: Tensor, opacities: Tensor, viewmat: Tensor, K: Tensor, width: int,
            height: int, eps2d: float = 0.3, near_plane: float = 0.01, far_plane: float = 1e10
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project 3D Gaussians into one pinhole camera (EWA splatting).

    Args:
        means: ``[N, 3]`` world means; covars: ``[N, 3, 3]``; opacities: ``[N]`` in [0, 1].
        viewmat: ``[4, 4]`` world-to-camera (OpenCV); K: ``[3, 3]`` intrinsics.
    Returns:
        means2d ``[N, 2]`` pixels, conics ``[N, 3]`` (inverse 2D covariance ``a, b, c``),
        depths ``[N]`` camera z, radii ``[N, 2]`` int32 (0 where culled).
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    mc = means @ R.T + t
    cc = R @ covars @ R.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tx, ty, tz = mc.unbind(-1)
    in_depth = (tz > near_plane) & (tz < far_plane)
    tz = torch.where(in_depth, tz, torch.ones_like(tz))  # culled anyway; keeps gradients finite
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    jx = tz * torch.clamp(tx / tz, min=-lim_xn, max=lim_xp)
    jy = tz * torch.clamp(ty / tz, min=-lim_yn, max=lim_yp)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * jx / tz**2, zero, fy / tz, -fy * jy / tz**2], -1).reshape(-1, 2, 3)
    cov2d = J @ cc @ J.transpose(1, 2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    a, b, c = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], -1)
    with torch.no_grad():
        op = opacities.detach()
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=3.33)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        m = means2d.detach()
        keep = (in_depth & (det.detach() > 0) & (op >= ALPHA_THRESHOLD) & ((rx > 0) | (ry > 0))
                & (m[:, 0] + rx > 0) & (m[:, 0] - rx < width) & (m[:, 1] + ry > 0) & (m[:, 1] - ry < height))
        radii = torch.stack([rx, ry], -1) * keep[:, None]
    return means2d, conics, tz, radii.to(torch.int32)


def pixel_boxes(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The pixels each visible Gaussian may touch, front to back.

    The box is gsplat's opacity-aware one, outside which ``alpha < 1/255`` always holds, so listing
    pixels per box (rather than per 16x16 tile, as gsplat does) selects the same contributions.

    Returns:
        ``vis [V]`` the Gaussians with a non-empty box, sorted by depth (stable), and their pixel
        ranges ``x0, x1, y0, y1 [V]`` (pixel ``(x, y)`` is in when ``x0 <= x < x1`` and ``y0 <= y < y1``).
    """
    vis = torch.nonzero((radii > 0).all(-1)).squeeze(1)
    vis = vis[torch.argsort(depths.detach()[vis], stable=True)]
    m = means2d.detach()[vis].double()
    r = radii[vis].double()
    x0 = torch.ceil(m[:, 0] - r[:, 0] - 0.5).clamp(0, width).long()
    x1 = (torch.floor(m[:, 0] + r[:, 0] - 0.5) + 1).clamp(0, width).long()
    y0 = torch.ceil(m[:, 1] - r[:, 1] - 0.5).clamp(0, height).long()
    y1 = (torch.floor(m[:, 1] + r[:, 1] - 0.5) + 1).clamp(0, height).long()
    some = (x1 > x0) & (y1 > y0)
    return vis[some], x0[some], x1[some], y0[some], y1[some]


def _pixel_pairs(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Every (pixel, Gaussian) pair whose pixel centre lies in the Gaussian's box (:func:`pixel_boxes`),
    sorted by pixel then depth.

    Returns:
        ``pixel_ids [M]`` (row-major) and ``gauss_ids [M]``.
    """
    dev = means2d.device
    vis, x0, x1, y0, y1 = pixel_boxes(means2d, radii, depths, width, height)
    wx = x1 - x0
    n = wx * (y1 - y0)
    total = int(n.sum())
    rank = torch.repeat_interleave(torch.arange(len(vis), device=dev), n)
    local = torch.arange(total, device=dev) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    wxr = torch.repeat_interleave(wx, n)
    px = torch.repeat_interleave(x0, n) + local % wxr
    py = torch.repeat_interleave(y0, n) + local // wxr
    pix = py * width + px
    order = torch.argsort(pix * max(len(vis), 1) + rank)
    return pix[order], vis[rank[order]]


def composite(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, radii: Tensor, depths: Tensor,
              width: int, height: int, background: Tensor | None = None, budget: int = 1 << 22
              ) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of projected Gaussians, in chunks of image rows.

    The (pixel, Gaussian) pairs are sorted by pixel then depth, so each pixel's transmittance is a
    segmented scan over the flat pair list: ``log T`` before a pair is the sum of ``log(1 - alpha)``
    over the pixel's earlier pairs, one float64 cumulative sum per chunk (no per-pixel depth lists).

    Args:
        means2d ``[N, 2]``, conics ``[N, 3]``, opacities ``[N]``, colors ``[N, C]``, radii ``[N, 2]``,
        depths ``[N]`` (sort key); background ``[C]`` or None; budget: max elements of a work array
        (bounds memory: pairs x channels per chunk).
    Returns:
        colors ``[H, W, C]`` and alphas ``[H, W, 1]``.
    """
    C = colors.shape[-1]
    dev, dt = colors.device, colors.dtype
    pix_all, gid_all = _pixel_pairs(means2d, radii, depths, width, height)
    counts = torch.bincount(pix_all, minlength=width * height)
    offsets = torch.cumsum(counts, 0) - counts  # first pair of each pixel
    row_pairs = counts.reshape(height, width).sum(1).tolist()
    geometry = torch.cat([means2d, conics, opacities[:, None]], -1)  # [N, 2 + 3 + 1]
    log_t_min = math.log(TRANSMITTANCE_MIN)
    out_c, out_t = [], []
    y = 0
    while y < height:
        y1, pairs = y + 1, row_pairs[y]
        while y1 < height and (pairs + row_pairs[y1]) * (C + 8) <= budget:
            pairs += row_pairs[y1]
            y1 += 1
        p0, p1 = y * width, y1 * width
        P = p1 - p0
        if pairs == 0:
            out_c.append(torch.zeros(P, C, device=dev, dtype=dt))
            out_t.append(torch.ones(P, 1, device=dev, dtype=dt))
            y = y1
            continue
        s0 = int(offsets[p0])
        pix, gid = pix_all[s0:s0 + pairs], gid_all[s0:s0 + pairs]
        lp = pix - p0
        first = offsets[pix] - s0  # index of each pair's pixel's first pair, within the chunk
        centre = torch.stack([pix % width, pix // width], -1).to(dt) + 0.5
        # gathers by index_select: their backward is an index_add, several times faster on the CPU than
        # the accumulating index_put of advanced indexing
        g = geometry.index_select(0, gid)  # [pairs, 6]
        d = centre - g[:, 0:2]
        sigma = 0.5 * (g[:, 2] * d[:, 0] ** 2 + g[:, 4] * d[:, 1] ** 2) + g[:, 3] * d[:, 0] * d[:, 1]
        alpha = torch.clamp_max(g[:, 5] * torch.exp(-sigma), ALPHA_MAX)
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
        log_keep = torch.log1p(-alpha).double()  # log(1 - alpha) per pair; alpha <= 0.999 keeps it finite
        with torch.no_grad():  # exclusive early stop: drop the Gaussian that takes T to <= 1e-4, and all after
            inclusive = torch.cumsum(log_keep, 0)
            inclusive = inclusive - (inclusive - log_keep).index_select(0, first)
            kept = inclusive > log_t_min
        alpha = torch.where(kept, alpha, torch.zeros_like(alpha))
        log_keep = torch.where(kept, log_keep, torch.zeros_like(log_keep))
        before = torch.cumsum(log_keep, 0) - log_keep  # sum over all earlier pairs of the chunk
        log_t_before = before - before.index_select(0, first)  # ... of the same pixel only
        w = alpha * torch.exp(log_t_before).to(dt)  # [pairs] blending weights
        out_c.append(torch.zeros(P, C, device=dev, dtype=dt).index_add(0, lp, w[:, None] * colors.index_select(0, gid)))
        log_t_final = torch.zeros(P, device=dev, dtype=torch.float64).index_add(0, lp, log_keep)
        out_t.append(torch.exp(log_t_final).to(dt)[:, None])
        y = y1
    rendered = torch.cat(out_c).reshape(height, width, C)
    t_final = torch.cat(out_t).reshape(height, width, 1)
    if background is not None:
        rendered = rendered + t_final * background.to(dt)
    return rendered, 1 - t_final


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmat: Tensor,
              K: Tensor, width: int, height: int, background: Tensor | None = None, *, near_plane: float = 0.01,
              far_plane: float = 1e10, eps2d: float = 0.3, expected_depth: bool = True, budget: int = 1 << 22,
              tiled: bool | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render one camera; the twin of ``gsplat.rasterization(..., render_mode="RGB+ED")`` for ``C == 1``.

    Args:
        means: ``[N, 3]``; quats: ``[N, 4]`` (w, x, y, z; any norm); scales: ``[N, 3]`` activated;
        opacities: ``[N]`` in [0, 1]; colors: ``[N, C]`` post-activation values (any ``C``).
        viewmat: ``[4, 4]`` world-to-camera; K: ``[3, 3]``; background: ``[C]`` or None.
        expected_depth: append a channel ``sum(w z) / alpha``.
        tiled: composite with :func:`~featurefield.fields.splat.composite_tiles.composite_tiles` (forward
            only, several times faster on the CPU); default: where no gradient is needed.
    Returns:
        render ``[H, W, C (+1)]``, alpha ``[H, W, 1]``, and ``info`` with gsplat's keys used by its
        strategies: ``means2d [1, N, 2]`` (retain its grad for densification), ``radii [1, N, 2]``,
        ``depths [1, N]``, ``width``, ``height``, ``n_cameras``, ``gaussian_ids`` (None).
    """
    covars = covariances(quats, scales)
    means2d, conics, depths, radii = project(means, covars, opacities, viewmat, K, width, height,
                                             eps2d=eps2d, near_plane=near_plane, far_plane=far_plane)
    means2d_b = means2d[None]  # the tensor strategies read .grad from
    feats = torch.cat([colors, depths[:, None]], -1) if expected_depth else colors
    bg = background
    if bg is not None and expected_depth:
        bg = torch.cat([bg.to(colors), bg.new_zeros(1).to(colors)])
    if tiled is None:
        tiled = not (torch.is_grad_enabled() and any(t.requires_grad for t in (means, quats, scales, opacities, colors)))
    if tiled:
        from featurefield.fields.splat.composite_tiles import composite_tiles

        render, alpha = composite_tiles(means2d, conics, opacities, feats, radii, depths, width, height, bg, budget)
    else:
        render, alpha = composite(means2d_b[0], conics, opacities, feats, radii, depths, width, height, bg, budget)
    if expected_depth:
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp_min(1e-10)], -1)
    info = {"means2d": means2d_b, "radii": radii[None], "depths": depths[None], "conics": conics[None],
            "width": width, "height": height, "n_cameras": 1, "gaussian_ids": None}
    return render, alpha, info
