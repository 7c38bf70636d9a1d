"""Gaussians for a scene without points: sampled inside the training views' frustums.

Every training view sees the scene between a near and a far depth (LLFF's ``poses_bounds.npy`` stores
them; :func:`estimate_bounds` guesses them from the cameras alone). A sample picks a training view, a
pixel and an inverse depth uniformly between ``1 / near`` and ``1 / far`` (forward-facing captures see
most of their content close to the camera and the rest spread out to far away, as NeRF's NDC and
LLFF's disparity sampling assume), and takes its colour from the pixel it came from: wherever along
that ray the point lies, it projects back onto that pixel in its own view.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError


def check_bounds(near: Tensor, far: Tensor, source: str) -> None:
    """Raise :class:`FeatureFieldError` (one line naming ``source``) unless ``0 < near < far < inf`` per view.

    Args:
        near, far: ``[N]`` depth bounds of the views.
        source: the file or scene the bounds came from, for the message.
    """
    for name, values in (("near", near), ("far", far)):
        bad = ~torch.isfinite(values)
        if bad.any():
            raise FeatureFieldError(f"{source}: the {name} bound of view {int(bad.nonzero()[0])} is NaN or inf; "
                                    "fix poses_bounds.npy or pass --splat.init random")
    bad = near <= 0
    if bad.any():
        i = int(bad.nonzero()[0])
        raise FeatureFieldError(f"{source}: the near bound of view {i} is {float(near[i]):g} (must be above 0); "
                                "fix poses_bounds.npy or pass --splat.init random")
    bad = far <= near
    if bad.any():
        i = int(bad.nonzero()[0])
        raise FeatureFieldError(f"{source}: the bounds of view {i} are inverted or empty (near {float(near[i]):g}, "
                                f"far {float(far[i]):g}); fix poses_bounds.npy or pass --splat.init random")


def estimate_bounds(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Near and far depths ``[N]`` for cameras without any scene geometry.

    Where the optical axes converge in front of the cameras (an object-centred capture), the scene lies
    around that point: ``[0.2, 3]`` times each camera's depth of it. Otherwise (forward-facing rigs, whose
    axes are nearly parallel) the content is taken to lie between 0.1 and 20 times the spread of the
    camera centres (at least 1e-3 of a unit).
    """
    centers = cameras.centers.double()  # [N, 3]
    axes = cameras.c2w[:, :3, 2].double()  # [N, 3] viewing directions
    n = len(cameras)
    proj = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]  # [N, 3, 3]
    A, b = proj.sum(0), (proj @ centers[:, :, None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(A)
    spread = float((centers - centers.mean(0)).norm(dim=-1).max()) or 1.0
    if float(eig[0]) > 0.05 * n:  # well conditioned: the axes meet somewhere
        focus = torch.linalg.solve(A, b)
        depth = ((focus - centers) * axes).sum(-1)  # [N]
        if bool((depth > 0).float().mean() > 0.9) and float(depth.median()) > 0:
            depth = depth.clamp_min(float(depth.median()) * 0.1)
            return (0.2 * depth).float(), (3.0 * depth).float()
    spread = max(spread, 1e-3)
    return torch.full((n,), 0.1 * spread), torch.full((n,), 20.0 * spread)


def bounds_from_points(cameras: Cameras, points: Tensor, margin: float = 1.25) -> tuple[Tensor, Tensor]:
    """Near and far depths ``[N]`` per camera from the depths of the points ``[P, 3]`` it sees.

    The 2nd and 98th percentiles of the visible points' z-depth, widened by ``margin`` on either side (in
    ratio); a camera that sees fewer than 5 points takes the bounds of all cameras together.
    """
    uv, z = cameras.project(points)  # [N, P, 2], [N, P]
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 1] >= 0)
    inside &= (uv[..., 0] < cameras.width[:, None]) & (uv[..., 1] < cameras.height[:, None])
    seen = z[inside]
    if seen.numel() < 5:
        raise FeatureFieldError("too few points in front of the cameras to bound their frustums")
    lo_all, hi_all = torch.quantile(seen, 0.02), torch.quantile(seen, 0.98)
    near, far = [], []
    for i in range(len(cameras)):
        zi = z[i][inside[i]]
        lo, hi = (torch.quantile(zi, 0.02), torch.quantile(zi, 0.98)) if zi.numel() >= 5 else (lo_all, hi_all)
        near.append(lo / margin)
        far.append(torch.maximum(hi * margin, lo * margin))
    return torch.stack(near).float(), torch.stack(far).float()


def frustum_points(cameras: Cameras, near: Tensor, far: Tensor, count: int, image: Callable[[int], Tensor],
                   generator: torch.Generator | None = None, background: Tensor | None = None,
                   anchors: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Points spread through the cameras' frustums between ``near`` and ``far``, uniform in inverse depth.

    Args:
        cameras: ``N`` cameras (any distortion model; rays are undistorted).
        near, far: ``[N]`` z-depth bounds per camera, in the cameras' units (checked: finite, ``0 < near < far``).
        count: points to draw, shared evenly between the cameras.
        image: ``i -> [H, W, 3]`` float image in [0, 1] of camera ``i`` (the colour source).
        generator: random source (default: the global one).
        background: ``[3]`` colour of pixels that see nothing (composited scenes): no point is drawn through
            them (then fewer than ``count`` may come back).
        anchors: ``[P, 3]`` points of known depth (triangulated): a sample takes the depth of the anchor
            nearest to its pixel in that view (times a 10% log-normal jitter, within the bounds) instead of a
            random one, a rough depth map from sparse points.
    Returns:
        xyz ``[M, 3]`` and rgb ``[M, 3]`` (the colour of the pixel each point was drawn through), ``M <= count``.
    """
    near, far = near.double().reshape(-1), far.double().reshape(-1)
    check_bounds(near, far, "the scene's near/far bounds")
    n = len(cameras)
    per_view = torch.full((n,), count // n, dtype=torch.int64)
    per_view[: count % n] += 1
    xyz, rgb = [], []
    for i, k in enumerate(per_view.tolist()):
        if k == 0:
            continue
        W, H = int(cameras.width[i]), int(cameras.height[i])
        img = image(i)
        draw = k if background is None else 4 * k
        u = torch.rand(draw, generator=generator) * W
        v = torch.rand(draw, generator=generator) * H
        rows, cols = v.long().clamp(0, img.shape[0] - 1), u.long().clamp(0, img.shape[1] - 1)
        if background is not None:  # pixels that see the known background hold nothing
            keep = ((img[rows, cols, :3] - background).abs().amax(-1) > 2 / 255).nonzero()[:, 0][:k]
            u, v, rows, cols = u[keep], v[keep], rows[keep], cols[keep]
            k = len(keep)
        s = torch.rand(k, generator=generator, dtype=torch.float64)
        z = 1.0 / (s / far[i] + (1 - s) / near[i])  # inverse depth uniform in [1/far, 1/near]
        if anchors is not None:  # the depth of the nearest anchor seen in this view, where it sees any
            uv, za = cameras.project(anchors, i)
            seen = (za > 0) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < W) & (uv[:, 1] < H)
            if int(seen.sum()) > 0:
                nearest = torch.cdist(torch.stack([u, v], -1), uv[seen]).argmin(-1)
                jitter = torch.exp(0.1 * torch.randn(k, generator=generator, dtype=torch.float64))
                z = (za[seen][nearest].double() * jitter).clamp(float(near[i]), float(far[i]))
        o, d = cameras.rays_at(torch.full((k,), i, dtype=torch.int64), torch.stack([u, v], -1))
        forward = cameras.c2w[i, :3, 2]
        t = z.float() / (d @ forward).clamp_min(1e-6)  # ray length that reaches z-depth z
        xyz.append(o + t[:, None] * d)
        rgb.append(img[rows, cols, :3].float())
    return torch.cat(xyz), torch.cat(rgb)
