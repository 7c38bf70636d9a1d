"""Volume rendering of the generalizable field in plain PyTorch: rays, views and feature volumes.

Rays are sampled inside the sphere of radius ``config.bound`` around the origin (the object's box);
rays that miss it render the background. Colour is composited over ``config.background``; features
and descriptors are the weighted sums ``sum_i w_i f_i`` (no background term: they are compared on the
object's pixels, where the accumulated weight is ~1).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.profiler import record_function

from featurefield.cameras import Cameras
from featurefield.fields.general.model import Conditioning, GeneralField


def sphere_bounds(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances of rays ``[..., 3]`` through the origin-centred sphere; ``hit [...]`` bool."""
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    sq = disc.clamp_min(0).sqrt()
    near = (-b - sq).clamp_min(0)
    far = (-b + sq).clamp_min(0)
    return near, far, (disc > 0) & (far > near)


def composite(sigma: Tensor, deltas: Tensor) -> Tensor:
    """Volume-rendering weights ``[..., N]`` from densities and sample spacings ``[..., N]``."""
    alpha = 1 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1] + 1e-10], -1), -1)
    return alpha * trans


def occupancy_grid(field: GeneralField, cond: Conditioning, resolution: int = 32, threshold: float = 1e-3) -> Tensor:
    """Which cells of a ``resolution^3`` grid over ``[-bound, bound]^3`` may hold matter, for empty-space skipping:
    :func:`occupancy_from_density` of the field's density at the cell centres (the heads are not evaluated).

    Returns:
        ``[R, R, R]`` bool, indexed ``[x, y, z]``.
    """
    sigma = feature_volume(field, cond, resolution, need=())["sigma"]
    return occupancy_from_density(sigma, field.config.bound, threshold)


def occupancy_from_density(sigma: Tensor, bound: float, threshold: float = 1e-3) -> Tensor:
    """An occupancy grid from densities at the cells' centres, e.g. a cached :func:`feature_volume`'s ``sigma``.

    A cell is occupied when the opacity of a cell-sized step at its centre, ``1 - exp(-sigma * cell)``,
    exceeds ``threshold``, or a neighbour's does (one cell of dilation, so thin surfaces between centres
    are kept).

    Args:
        sigma: ``[R, R, R]`` densities at the centres of a grid over ``[-bound, bound]^3``, indexed ``[x, y, z]``.
    Returns:
        ``[R, R, R]`` bool.
    """
    cell = 2 * bound / sigma.shape[0]
    occ = (1 - torch.exp(-sigma.float() * cell)) > threshold
    return torch.nn.functional.max_pool3d(occ[None, None].float(), 3, 1, 1)[0, 0] > 0


def occupied(points: Tensor, grid: Tensor, bound: float) -> Tensor:
    """Look up ``points [..., 3]`` in an occupancy ``grid [R, R, R]``; outside the cube counts as empty."""
    R = grid.shape[0]
    idx = torch.floor((points + bound) / (2 * bound) * R).long()
    inside = ((idx >= 0) & (idx < R)).all(-1)
    idx = idx.clamp(0, R - 1)
    return grid[idx[..., 0], idx[..., 1], idx[..., 2]] & inside


def render_rays(field: GeneralField, cond: Conditioning, origins: Tensor, dirs: Tensor, *, stratified: bool = False,
                need: tuple[str, ...] = ("rgb", "feature"), generator: torch.Generator | None = None,
                occupancy: Tensor | None = None) -> dict[str, Tensor]:
    """Render rays of each object.

    Args:
        field: the field; cond: ``B`` objects' source views.
        origins, dirs: ``[B, R, 3]`` rays (unit directions) in the world frame.
        stratified: jitter samples inside their bins (training); else bin centres.
        need: what to render besides depth and alpha: ``"rgb"``, ``"feature"``, ``"descriptor"``.
        occupancy: an :func:`occupancy_grid` of the object (``B = 1``): only samples in occupied cells are
            evaluated, the others have zero density (the result equals the dense render wherever the
            grid's cells are truly empty).
    Returns:
        ``alpha [B, R]``, ``depth [B, R]`` (ray length, expected), and as asked ``rgb [B, R, 3]``
        (over the background), ``feature [B, R, D]``, ``descriptor [B, R, width]``.
    """
    cfg = field.config
    B, R, _ = origins.shape
    N = cfg.samples
    with record_function("general/rays"):
        near, far, hit = sphere_bounds(origins, dirs, cfg.bound)
        far = torch.where(hit, far, near + 1e-3)
        u = torch.arange(N, device=origins.device, dtype=origins.dtype)
        if stratified:
            u = u + torch.rand(B, R, N, device=origins.device, generator=generator)
        else:
            u = (u + 0.5).expand(B, R, N)
        t = near[..., None] + (far - near)[..., None] * u / N  # [B, R, N]
        points = origins[..., None, :] + t[..., None] * dirs[..., None, :]
        flat_dirs = dirs[..., None, :].expand(B, R, N, 3)
        deltas = ((far - near) / N)[..., None].expand(B, R, N)
    if occupancy is None:
        out = field(points.reshape(B, R * N, 3), flat_dirs.reshape(B, R * N, 3), cond, need)
        with record_function("general/composite"):
            sigma = out["sigma"].reshape(B, R, N).float() * hit[..., None]
            w = composite(sigma, deltas)  # [B, R, N]
            result = {"alpha": w.sum(-1), "depth": (w * t).sum(-1), "weights": w}
            for key in ("rgb", "feature", "descriptor"):
                if key in out:
                    result[key] = torch.einsum("brn,brnc->brc", w.to(out[key].dtype), out[key].reshape(B, R, N, -1)).float()
    else:
        # only occupied samples are evaluated; their values are summed into their rays directly, so no
        # [B, R, N, C] tensor is ever made (at 256 x 256 x 64 samples x 256 channels that would be 2 GB)
        with record_function("general/rays"):
            keep = occupied(points, occupancy, cfg.bound) & hit[..., None]  # [B, R, N]
            flat = keep.reshape(-1).nonzero().squeeze(1)
        sub = field(points.reshape(-1, 3)[flat][None], flat_dirs.reshape(-1, 3)[flat][None], cond, need)
        with record_function("general/composite"):
            sigma = torch.zeros(B * R * N, device=origins.device)
            sigma[flat] = sub["sigma"][0].float()
            w = composite(sigma.reshape(B, R, N), deltas)
            result = {"alpha": w.sum(-1), "depth": (w * t).sum(-1), "weights": w}
            ray = torch.div(flat, N, rounding_mode="floor")
            wk = w.reshape(-1)[flat]
            for key in ("rgb", "feature", "descriptor"):
                if key in sub:
                    v = sub[key][0]
                    acc = torch.zeros(B * R, v.shape[-1], device=v.device, dtype=torch.float32)
                    acc.index_add_(0, ray, (wk[:, None] * v.float()))
                    result[key] = acc.reshape(B, R, -1)
    if "rgb" in result:
        bg = torch.tensor(cfg.background, device=origins.device)
        result["rgb"] = result["rgb"] + (1 - result["alpha"][..., None]) * bg
    return result


@torch.no_grad()
def render_view(field: GeneralField, cond: Conditioning, camera: Cameras, need: tuple[str, ...] = ("rgb", "feature"),
                chunk: int = 1 << 14, occupancy: Tensor | None = None) -> dict[str, Tensor]:
    """Render one object's view.

    Args:
        field: the field; cond: one object's source views (``B = 1``); camera: one camera (``H x W``).
        need: as in :func:`render_rays`. chunk: rays per field call (bounds memory).
        occupancy: skip empty space with this :func:`occupancy_grid` (see :func:`render_rays`).
    Returns:
        ``alpha [H, W]``, ``depth [H, W]`` (z-depth), ``rgb [H, W, 3]``, ``feature [H, W, D]``,
        ``descriptor [H, W, width]`` as asked.
    """
    camera = camera.to(field.device)
    o, d = camera.rays(0)
    H, W = o.shape[:2]
    o, d = o.reshape(1, -1, 3), d.reshape(1, -1, 3)
    parts: dict[str, list[Tensor]] = {}
    for s in range(0, o.shape[1], chunk):
        r = render_rays(field, cond, o[:, s:s + chunk], d[:, s:s + chunk], need=need, occupancy=occupancy)
        r.pop("weights")
        for k, v in r.items():
            parts.setdefault(k, []).append(v[0])
    out = {k: torch.cat(v).reshape(H, W, -1).squeeze(-1) for k, v in parts.items()}
    forward = camera.c2w[0, :3, 2]
    out["depth"] = out["depth"] * (d[0] @ forward).reshape(H, W)
    return out


@torch.no_grad()
def feature_volume(field: GeneralField, cond: Conditioning, resolution: int = 64, need: tuple[str, ...] = ("feature",),
                   chunk: int = 1 << 18) -> dict[str, Tensor]:
    """The field on a ``resolution^3`` grid of cell centres filling the cube ``[-bound, bound]^3``.

    Args:
        field, cond: the field and one object's source views. need: ``"feature"`` and/or ``"descriptor"``
            (density always). chunk: points per field call.
    Returns:
        ``sigma [R, R, R]`` and ``feature [R, R, R, D]`` / ``descriptor [R, R, R, width]``, indexed ``[x, y, z]``;
        ``points [R, R, R, 3]`` the cell centres.
    """
    b = field.config.bound
    axis = (torch.arange(resolution, device=field.device, dtype=torch.float32) + 0.5) / resolution * 2 * b - b
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    dirs = torch.zeros_like(pts)
    parts: dict[str, list[Tensor]] = {}
    for s in range(0, pts.shape[1], chunk):
        out = field(pts[:, s:s + chunk], dirs[:, s:s + chunk], cond, need=tuple(k for k in need if k != "rgb"))
        for k, v in out.items():
            parts.setdefault(k, []).append(v[0])
    R = resolution
    vol = {k: torch.cat(v).reshape(R, R, R, -1).squeeze(-1) for k, v in parts.items()}
    vol["points"] = pts.reshape(R, R, R, 3)
    return vol
