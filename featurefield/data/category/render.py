"""Rendering a category instance: RGB, z-depth, part labels and keypoint visibility per view.

Ray casting reuses the demo scene's analytic primitives and nearest-hit search
(:func:`featurefield.data.demo_scene._cast`); shading is Lambertian with one directional light of random
direction, colour and strength, cast shadows, and ambient light, so lighting varies per instance.
RGB is anti-aliased by ``supersample x supersample`` rays per pixel; depth and labels come from the
ray through the pixel centre.

A keypoint is visible in a view when it projects inside the image, faces the camera, and the depth
at its pixel agrees with its own depth (nothing in front of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from featurefield.cameras import Cameras, look_at
from featurefield.data.category.shapes import Instance
from featurefield.data.demo_scene import _cast

#: the camera distance from the object's centre and the horizontal field of view (degrees)
DISTANCE = 2.6
FOV = 40.0
#: elevation range of the cameras (degrees above the horizon)
ELEVATION = (5.0, 55.0)
#: a keypoint is hidden where the surface seen at its pixel is this much closer (world units)
DEPTH_TOLERANCE = 0.04


@dataclass
class Lighting:
    """One directional light (unit ``direction [3]`` towards the light, ``color [3]``) plus ambient."""

    direction: Tensor
    color: Tensor
    ambient: float

    @staticmethod
    def random(rng: np.random.Generator) -> Lighting:
        az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(25, 80))
        d = torch.tensor([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)], dtype=torch.float32)
        tint = torch.tensor(rng.uniform(0.85, 1.0, 3), dtype=torch.float32)
        return Lighting(d, tint * rng.uniform(0.8, 1.1), float(rng.uniform(0.25, 0.5)))


def random_cameras(views: int, size: int, rng: np.random.Generator, distance: float = DISTANCE,
                   fov: float = FOV) -> Cameras:
    """``views`` cameras looking at the origin from random azimuths and elevations in :data:`ELEVATION`."""
    az = rng.uniform(0, 2 * math.pi, views)
    el = np.radians(rng.uniform(*ELEVATION, views))
    eye = np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], -1) * distance
    c2w = look_at(torch.tensor(eye, dtype=torch.float32), torch.zeros(3))
    focal = 0.5 * size / math.tan(math.radians(fov) / 2)
    return Cameras(c2w=c2w, fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size)


def _shade(inst: Instance, p: Tensor, n: Tensor, which: Tensor, light: Lighting) -> Tensor:
    """Lit colour ``[M, 3]`` of surface points ``p [M, 3]`` with normals ``n`` on primitives ``which``."""
    albedo = torch.zeros_like(p)
    for k, prim in enumerate(inst.primitives):
        m = which == k
        if m.any():
            albedo[m] = prim.albedo(p[m])
    lambert = (n @ light.direction).clamp_min(0)
    lit = lambert > 0
    if lit.any():
        origin = p[lit] + 2e-3 * n[lit]
        t, _, _ = _cast(inst.primitives, origin, light.direction.expand_as(origin))
        lambert[lit] = torch.where(torch.isfinite(t), 0.0, lambert[lit])
    shade = light.ambient + (1 - light.ambient) * lambert[:, None] * light.color[None]
    return (albedo * shade).clamp(0, 1)


def _trace(inst: Instance, o: Tensor, d: Tensor, light: Lighting, background: Tensor, chunk: int = 1 << 17):
    """Colour ``[M, 3]``, ray length ``[M]`` (inf on a miss) and part label ``[M]`` of rays ``o, d [M, 3]``."""
    rgb, ts, parts = [], [], []
    for s in range(0, o.shape[0], chunk):
        oo, dd = o[s:s + chunk], d[s:s + chunk]
        t, n, which = _cast(inst.primitives, oo, dd)
        hit = which >= 0
        col = background.expand(oo.shape[0], 3).clone()
        part = torch.zeros(oo.shape[0], dtype=torch.int64)
        if hit.any():
            p = oo[hit] + t[hit, None] * dd[hit]
            col[hit] = _shade(inst, p, n[hit], which[hit], light)
            part[hit] = inst.part_at(p, which[hit])
        rgb.append(col)
        ts.append(t)
        parts.append(part)
    return torch.cat(rgb), torch.cat(ts), torch.cat(parts)


@torch.no_grad()
def render_instance(inst: Instance, cameras: Cameras, light: Lighting, background=(1.0, 1.0, 1.0),
                    supersample: int = 2) -> dict[str, Tensor]:
    """Render every view of an instance.

    Args:
        inst: the instance; cameras: ``N`` pinhole cameras of one size ``H x W``; light: its lighting.
        background: RGB in [0, 1] where rays miss; supersample: RGB rays per pixel along each axis.
    Returns:
        ``rgb [N, H, W, 3]`` float32 in [0, 1], ``depth [N, H, W]`` z-depth (0 on background),
        ``parts [N, H, W]`` int64 (0 background), ``keypoints_visible [N, K]`` bool, ``keypoints_uv [N, K, 2]``.
    """
    N, H, W = len(cameras), int(cameras.height[0]), int(cameras.width[0])
    bg = torch.tensor(background, dtype=torch.float32)
    grid = cameras.pixel_grid(0).reshape(-1, 2)
    index = torch.arange(N).repeat_interleave(H * W)
    o, d = cameras.rays_at(index, grid.repeat(N, 1))
    rgb, t, parts = _trace(inst, o, d, light, bg)
    forward = cameras.c2w[index, :3, 2]
    depth = torch.where(torch.isfinite(t), t * (d * forward).sum(-1), torch.zeros_like(t)).reshape(N, H, W)
    if supersample > 1:
        offsets = (torch.arange(supersample, dtype=torch.float32) + 0.5) / supersample - 0.5
        sub = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)
        pix = (grid[:, None, :] + sub[None]).reshape(-1, 2)
        index = torch.arange(N).repeat_interleave(pix.shape[0])
        o, d = cameras.rays_at(index, pix.repeat(N, 1))
        rgb, _, _ = _trace(inst, o, d, light, bg)
        rgb = rgb.reshape(N, H * W, supersample * supersample, 3).mean(2)
    rgb = rgb.reshape(N, H, W, 3)
    uv, visible = keypoint_visibility(inst, cameras, depth)
    return {"rgb": rgb, "depth": depth, "parts": parts.reshape(N, H, W), "keypoints_visible": visible,
            "keypoints_uv": uv}


def keypoint_visibility(inst: Instance, cameras: Cameras, depth: Tensor,
                        tolerance: float = DEPTH_TOLERANCE) -> tuple[Tensor, Tensor]:
    """Project the instance's keypoints and test them against the rendered depth.

    Args:
        inst: the instance; cameras: ``N`` cameras; depth: ``[N, H, W]`` z-depth (0 where nothing is hit).
        tolerance: how much closer (world units) the surface seen at the pixel may be.
    Returns:
        ``uv [N, K, 2]`` pixel positions (centre convention) and ``visible [N, K]`` bool.
    """
    pos = torch.stack([k.position for k in inst.keypoints])
    normal = torch.stack([k.normal for k in inst.keypoints])
    uv, z = cameras.project(pos)  # [N, K, 2], [N, K]
    N, H, W = depth.shape
    px = torch.floor(uv).long()
    inside = (z > 0) & (px[..., 0] >= 0) & (px[..., 0] < W) & (px[..., 1] >= 0) & (px[..., 1] < H)
    u, v = px[..., 0].clamp(0, W - 1), px[..., 1].clamp(0, H - 1)
    seen = depth[torch.arange(N)[:, None], v, u]
    to_cam = cameras.centers[:, None, :] - pos[None]
    facing = (to_cam * normal[None]).sum(-1) > 0.25 * to_cam.norm(dim=-1)  # not grazing: depth varies fast there
    visible = inside & facing & (seen > 0) & ((seen - z).abs() < tolerance)
    return uv, visible
