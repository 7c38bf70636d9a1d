"""The built-in demo scene: a procedural tabletop rendered by featurefield itself, no download.

A few textured objects (a ball, a box, a can, a cone, sometimes a second ball or box) stand on a
textured ground disc. Every view is ray cast analytically in PyTorch (ray-sphere, ray-box,
ray-cylinder, ray-cone, ray-disc), shaded Lambertian with one directional light, cast shadows and
ambient light, with textures defined in each object's own frame so colour is view-consistent and
learnable. Every pixel is object, ground, or the background colour.

World frame: z up, the ground disc lies in ``z = 0`` centred on the origin. Cameras (OpenCV
convention) sit on a ring around the table at varying elevations and look at its centre.

Labels:
    * semantic classes (:data:`CLASS_NAMES`): 0 background, 1 ground, 2 ball, 3 box, 4 can, 5 cone.
    * instances: 0 background, 1 ground, then one id per object (2, 3, ...). ``scene.metadata["objects"]``
      lists every object with its instance id, class, centre and world AABB.
    * depth: z-depth in world units, 0 on background pixels.

RGB is anti-aliased by ``supersample x supersample`` samples per pixel; depth and labels come from
the single ray through the pixel centre, so they are exact for that ray.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from featurefield.cameras import Cameras, look_at
from featurefield.data.images import ArraySource, ImageArrays, ImageSource
from featurefield.data.scene import Normalization, PointCloud, Scene
from featurefield.errors import FeatureFieldError

CLASS_NAMES = ["background", "ground", "ball", "box", "can", "cone"]

GROUND_RADIUS = 1.15
LIGHT_DIR = (0.45, -0.35, 0.82)
AMBIENT = 0.38
_EPS = 1e-4
_INF = float("inf")


# ---------------------------------------------------------------------------------------------- helpers
def _hsv(h: float, s: float, v: float) -> Tensor:
    """One HSV colour (all in [0, 1]) as an RGB ``[3]`` tensor."""
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return torch.tensor(rgb, dtype=torch.float32)


def _mix(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """``a`` where ``w == 0``, ``b`` where ``w == 1``: ``a, b [3]``, ``w [M]`` -> ``[M, 3]``."""
    return a[None] + (b - a)[None] * w[:, None]


def _solve_quadratic(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Roots of ``a t^2 + 2 b t + c = 0`` (note the half ``b``), smaller first; NaN where none."""
    disc = b * b - a * c
    sq = torch.sqrt(disc.clamp_min(0))
    a = torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
    t0, t1 = (-b - sq) / a, (-b + sq) / a
    nan = torch.full_like(t0, float("nan"))
    lo, hi = torch.minimum(t0, t1), torch.maximum(t0, t1)
    return torch.where(disc >= 0, lo, nan), torch.where(disc >= 0, hi, nan)


def _nearest(*candidates: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Pick the nearest valid hit among ``(t [M], normal [M, 3])`` candidates (invalid: NaN or <= eps)."""
    best_t = torch.full_like(candidates[0][0], _INF)
    best_n = torch.zeros_like(candidates[0][1])
    for t, n in candidates:
        ok = (t > _EPS) & (t < best_t)  # NaN compares False
        best_t = torch.where(ok, t, best_t)
        best_n = torch.where(ok[:, None], n, best_n)
    return best_t, best_n


# ---------------------------------------------------------------------------------------------- primitives
@dataclass
class _Primitive:
    """An object of the scene: geometry (``intersect``), texture (``albedo``), labels and extent."""

    label: int
    instance: int

    def intersect(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """Ray hits: ``o, d [M, 3]`` -> ``t [M]`` (inf on a miss) and outward normals ``[M, 3]``."""
        raise NotImplementedError

    def albedo(self, p: Tensor) -> Tensor:
        """Texture colour at surface points ``p [M, 3]`` -> ``[M, 3]`` in [0, 1]."""
        raise NotImplementedError

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        """``n`` points uniformly on the visible surface ``[n, 3]``."""
        raise NotImplementedError

    def area(self) -> float:
        raise NotImplementedError

    def aabb(self) -> Tensor:
        """World AABB ``[2, 3]``."""
        raise NotImplementedError


@dataclass
class _Ground(_Primitive):
    radius: float
    color_a: Tensor
    color_b: Tensor

    def intersect(self, o, d):
        t = -o[:, 2] / torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], -1e-12), d[:, 2])
        p = o + t[:, None] * d
        inside = (p[:, :2].square().sum(-1) <= self.radius**2) & (d[:, 2] < 0)
        t = torch.where(inside & (t > _EPS), t, torch.full_like(t, _INF))
        n = torch.zeros_like(o)
        n[:, 2] = 1.0
        return t, n

    def albedo(self, p):
        cell = 0.2
        checker = (torch.floor(p[:, 0] / cell) + torch.floor(p[:, 1] / cell)).remainder(2)
        rgb = _mix(self.color_a, self.color_b, checker)
        r = p[:, :2].norm(dim=-1)
        rim = (r > self.radius - 0.08).to(p.dtype)  # a dark rim outlines the table
        swirl = 0.06 * torch.sin(7.0 * p[:, 0] + 3.0 * torch.sin(5.0 * p[:, 1]))  # low-frequency grain
        rgb = (rgb * (1 + swirl[:, None])) * (1 - 0.55 * rim[:, None])
        return rgb.clamp(0, 1)

    def sample(self, n, gen):
        r = self.radius * torch.sqrt(torch.rand(n, generator=gen))
        a = 2 * math.pi * torch.rand(n, generator=gen)
        return torch.stack([r * torch.cos(a), r * torch.sin(a), torch.zeros(n)], -1)

    def area(self):
        return math.pi * self.radius**2

    def aabb(self):
        r = self.radius
        return torch.tensor([[-r, -r, 0.0], [r, r, 0.0]])


@dataclass
class _Ball(_Primitive):
    center: Tensor
    radius: float
    color_a: Tensor
    color_b: Tensor
    spin: float

    def intersect(self, o, d):
        oc = o - self.center
        t0, _ = _solve_quadratic((d * d).sum(-1), (oc * d).sum(-1), (oc * oc).sum(-1) - self.radius**2)
        p = o + t0[:, None] * d
        return _nearest((t0, (p - self.center) / self.radius))

    def albedo(self, p):
        q = (p - self.center) / self.radius
        lon = torch.atan2(q[:, 1], q[:, 0]) + self.spin
        lat = torch.asin(q[:, 2].clamp(-1, 1))
        checker = (torch.floor(lon / (2 * math.pi) * 8) + torch.floor((lat / math.pi + 0.5) * 5)).remainder(2)
        return _mix(self.color_a, self.color_b, checker)

    def sample(self, n, gen):
        v = torch.randn(n, 3, generator=gen)
        return self.center + self.radius * v / v.norm(dim=-1, keepdim=True)

    def area(self):
        return 4 * math.pi * self.radius**2

    def aabb(self):
        return torch.stack([self.center - self.radius, self.center + self.radius])


@dataclass
class _Box(_Primitive):
    center: Tensor
    half: Tensor
    yaw: float
    color_a: Tensor
    color_b: Tensor

    @property
    def rotation(self) -> Tensor:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def intersect(self, o, d):
        R = self.rotation
        ol, dl = (o - self.center) @ R, d @ R  # into the box frame (R^T x as row vectors)
        dl = torch.where(dl.abs() < 1e-12, torch.full_like(dl, 1e-12), dl)
        t1, t2 = (-self.half - ol) / dl, (self.half - ol) / dl
        tmin = torch.minimum(t1, t2).amax(-1)
        tmax = torch.maximum(t1, t2).amin(-1)
        hit = (tmax >= tmin) & (tmin > _EPS)
        t = torch.where(hit, tmin, torch.full_like(tmin, _INF))
        pl = ol + tmin.clamp_max(1e6)[:, None] * dl
        ratio = pl.abs() / self.half
        axis = ratio.argmax(-1)
        nl = torch.zeros_like(pl)
        nl.scatter_(1, axis[:, None], torch.sign(pl.gather(1, axis[:, None])))
        return t, nl @ R.T

    def albedo(self, p):
        pl = (p - self.center) @ self.rotation
        cell = 0.09
        checker = torch.floor((pl + self.half) / cell).sum(-1).remainder(2)
        # a darker frame along the edges makes the box's faces separable
        edge = ((pl.abs() > self.half - 0.025).sum(-1) >= 2).to(p.dtype)
        rgb = _mix(self.color_a, self.color_b, checker)
        return rgb * (1 - 0.5 * edge[:, None])

    def sample(self, n, gen):
        h = self.half
        areas = torch.stack([h[1] * h[2], h[1] * h[2], h[0] * h[2], h[0] * h[2], h[0] * h[1], h[0] * h[1]])
        face = torch.multinomial(areas, n, replacement=True, generator=gen)
        u = torch.rand(n, 3, generator=gen) * 2 - 1
        pl = u * h
        axis = face // 2
        sign = (face % 2) * 2 - 1
        pl[torch.arange(n), axis] = sign.to(pl.dtype) * h[axis]
        return pl @ self.rotation.T + self.center

    def area(self):
        x, y, z = (float(v) for v in self.half)
        return 8 * (x * y + y * z + x * z)

    def aabb(self):
        corners = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=torch.float32)
        pts = (corners * self.half) @ self.rotation.T + self.center
        return torch.stack([pts.amin(0), pts.amax(0)])


@dataclass
class _Can(_Primitive):
    base: Tensor  # [3] centre of the bottom cap
    radius: float
    height: float
    color_a: Tensor  # label colour
    color_b: Tensor  # stripe colour
    metal: Tensor
    spin: float

    def intersect(self, o, d):
        oc = o - self.base
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = oc[:, 0] * d[:, 0] + oc[:, 1] * d[:, 1]
        c = oc[:, 0] ** 2 + oc[:, 1] ** 2 - self.radius**2
        t0, t1 = _solve_quadratic(a, b, c)
        cands = []
        for t in (t0, t1):
            z = oc[:, 2] + t * d[:, 2]
            t = torch.where((z >= 0) & (z <= self.height), t, torch.full_like(t, float("nan")))
            p = oc + t[:, None] * d
            n = torch.stack([p[:, 0], p[:, 1], torch.zeros_like(t)], -1) / self.radius
            cands.append((t, n))
        dz = torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], 1e-12), d[:, 2])
        for zc, nz in ((self.height, 1.0), (0.0, -1.0)):
            t = (zc - oc[:, 2]) / dz
            p = oc + t[:, None] * d
            t = torch.where(p[:, :2].square().sum(-1) <= self.radius**2, t, torch.full_like(t, float("nan")))
            n = torch.zeros_like(o)
            n[:, 2] = nz
            cands.append((t, n))
        return _nearest(*cands)

    def albedo(self, p):
        q = p - self.base
        zf = q[:, 2] / self.height
        ang = torch.atan2(q[:, 1], q[:, 0]) + self.spin
        stripes = (torch.floor(ang / (2 * math.pi) * 12).remainder(2) * (zf > 0.45) * (zf < 0.62)).to(p.dtype)
        label = ((zf > 0.18) & (zf < 0.82)).to(p.dtype)
        rgb = _mix(self.color_a, self.color_b, stripes)
        metal = self.metal[None] * (0.85 + 0.15 * torch.cos(3 * ang))[:, None]
        on_side = (q[:, :2].norm(dim=-1) > self.radius * 0.999) & (zf < 0.999)
        w = (label * on_side.to(p.dtype))[:, None]
        return rgb * w + metal * (1 - w)

    def sample(self, n, gen):
        side = 2 * math.pi * self.radius * self.height
        top = math.pi * self.radius**2
        on_top = torch.rand(n, generator=gen) < top / (side + top)
        a = 2 * math.pi * torch.rand(n, generator=gen)
        r = torch.where(on_top, self.radius * torch.sqrt(torch.rand(n, generator=gen)), torch.full((n,), self.radius))
        z = torch.where(on_top, torch.full((n,), self.height), self.height * torch.rand(n, generator=gen))
        return self.base + torch.stack([r * torch.cos(a), r * torch.sin(a), z], -1)

    def area(self):
        return 2 * math.pi * self.radius * self.height + math.pi * self.radius**2

    def aabb(self):
        r = self.radius
        return torch.stack([self.base + torch.tensor([-r, -r, 0.0]), self.base + torch.tensor([r, r, self.height])])


@dataclass
class _Cone(_Primitive):
    base: Tensor  # [3] centre of the base disc
    radius: float
    height: float
    color_a: Tensor
    color_b: Tensor

    def intersect(self, o, d):
        apex = self.base + torch.tensor([0.0, 0.0, self.height])
        oa = o - apex
        k2 = (self.radius / self.height) ** 2
        a = d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2
        b = oa[:, 0] * d[:, 0] + oa[:, 1] * d[:, 1] - k2 * oa[:, 2] * d[:, 2]
        c = oa[:, 0] ** 2 + oa[:, 1] ** 2 - k2 * oa[:, 2] ** 2
        t0, t1 = _solve_quadratic(a, b, c)
        cands = []
        for t in (t0, t1):
            z = oa[:, 2] + t * d[:, 2]  # relative to the apex: the cone body is -height <= z <= 0
            t = torch.where((z <= 0) & (z >= -self.height), t, torch.full_like(t, float("nan")))
            p = oa + t[:, None] * d
            n = torch.stack([p[:, 0], p[:, 1], -k2 * p[:, 2]], -1)
            cands.append((t, n / n.norm(dim=-1, keepdim=True).clamp_min(1e-9)))
        dz = torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], 1e-12), d[:, 2])
        t = (-self.height - oa[:, 2]) / dz
        p = oa + t[:, None] * d
        t = torch.where(p[:, :2].square().sum(-1) <= self.radius**2, t, torch.full_like(t, float("nan")))
        n = torch.zeros_like(o)
        n[:, 2] = -1.0
        cands.append((t, n))
        return _nearest(*cands)

    def albedo(self, p):
        zf = (p[:, 2] - self.base[2]) / self.height
        bands = torch.floor(zf * 5).remainder(2)
        return _mix(self.color_a, self.color_b, bands)

    def sample(self, n, gen):
        # uniform on the lateral surface: radius from the apex ~ sqrt(u)
        s = torch.sqrt(torch.rand(n, generator=gen))
        a = 2 * math.pi * torch.rand(n, generator=gen)
        r = self.radius * s
        z = self.height * (1 - s)
        return self.base + torch.stack([r * torch.cos(a), r * torch.sin(a), z], -1)

    def area(self):
        return math.pi * self.radius * math.hypot(self.radius, self.height)

    def aabb(self):
        r = self.radius
        return torch.stack([self.base + torch.tensor([-r, -r, 0.0]), self.base + torch.tensor([r, r, self.height])])


# ---------------------------------------------------------------------------------------------- layout
def _layout(rng: np.random.Generator) -> list[_Primitive]:
    """Objects for one seed: one of each class plus maybe an extra ball or box, not overlapping."""
    shapes = ["ball", "box", "can", "cone"]
    if rng.random() < 0.5:
        shapes.append(str(rng.choice(["ball", "box"])))
    hue0 = rng.random()
    hues = [(hue0 + i / len(shapes) + rng.uniform(-0.04, 0.04)) % 1.0 for i in range(len(shapes))]
    rng.shuffle(hues)
    placed: list[tuple[float, float, float]] = []  # (x, y, footprint radius)
    objects: list[_Primitive] = []
    for i, (shape, hue) in enumerate(zip(shapes, hues)):
        label, instance = CLASS_NAMES.index(shape), i + 2
        a = _hsv(hue, rng.uniform(0.65, 0.9), rng.uniform(0.75, 0.95))
        b = _hsv((hue + rng.uniform(0.08, 0.15)) % 1, rng.uniform(0.2, 0.45), rng.uniform(0.9, 1.0))
        if shape == "ball":
            r = rng.uniform(0.2, 0.3)
            foot = r
        elif shape == "box":
            half = np.array([rng.uniform(0.14, 0.24), rng.uniform(0.12, 0.2), rng.uniform(0.12, 0.24)])
            foot = float(np.hypot(half[0], half[1]))
        elif shape == "can":
            r, h = rng.uniform(0.12, 0.17), rng.uniform(0.38, 0.55)
            foot = r
        else:
            r, h = rng.uniform(0.16, 0.22), rng.uniform(0.45, 0.65)
            foot = r
        for _ in range(500):
            rad, ang = 0.75 * math.sqrt(rng.random()), 2 * math.pi * rng.random()
            x, y = rad * math.cos(ang), rad * math.sin(ang)
            if rad + foot < GROUND_RADIUS - 0.12 and all(math.hypot(x - px, y - py) > foot + pr + 0.07 for px, py, pr in placed):
                break
        else:  # pragma: no cover - the table always has room for five small objects
            raise FeatureFieldError("demo scene: could not place the objects; try another seed")
        placed.append((x, y, foot))
        if shape == "ball":
            objects.append(_Ball(label, instance, torch.tensor([x, y, r], dtype=torch.float32), r, a, b,
                                 rng.uniform(0, 2 * math.pi)))
        elif shape == "box":
            objects.append(_Box(label, instance, torch.tensor([x, y, half[2]], dtype=torch.float32),
                                torch.tensor(half, dtype=torch.float32), rng.uniform(0, math.pi), a, b))
        elif shape == "can":
            metal = torch.full((3,), float(rng.uniform(0.6, 0.75)))
            objects.append(_Can(label, instance, torch.tensor([x, y, 0.0]), r, h, a, b, metal, rng.uniform(0, 2 * math.pi)))
        else:
            objects.append(_Cone(label, instance, torch.tensor([x, y, 0.0]), r, h, a, b))
    return objects


def _ground(rng: np.random.Generator) -> _Ground:
    hue = rng.uniform(0.05, 0.13)  # warm wood-like tones
    return _Ground(1, 1, GROUND_RADIUS, _hsv(hue, 0.35, 0.78), _hsv(hue, 0.45, 0.55))


def _ring_cameras(views: int, size: int, rng: np.random.Generator, distance: float, fov_deg: float,
                  target_z: float) -> Cameras:
    """Cameras on a ring around the table at elevations between 20 and 55 degrees."""
    offset = rng.uniform(0, 2 * math.pi)
    i = np.arange(views)
    azimuth = offset + 2 * math.pi * i / views
    elevation = np.radians(20 + 35 * ((i * 0.61803398875 + 0.25) % 1.0))
    eye = np.stack([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)], -1)
    eye = torch.tensor(eye * distance, dtype=torch.float32)
    eye[:, 2] += target_z
    c2w = look_at(eye, torch.tensor([0.0, 0.0, target_z]))
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    return Cameras(c2w=c2w, fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size)


def _forward_cameras(views: int, size: int, rng: np.random.Generator, distance: float, fov_deg: float,
                     target_z: float) -> Cameras:
    """A forward-facing rig: cameras on a plane, all with one orientation, looking at the table from 30 degrees up.

    Centres lie on a jittered grid spanning about a third of ``distance`` across and a fifth up and down,
    in the plane facing the table, as a hand-held LLFF capture.
    """
    azimuth, elevation = rng.uniform(0, 2 * math.pi), math.radians(30)
    target = torch.tensor([0.0, 0.0, target_z])
    centre = target + distance * torch.tensor([math.cos(azimuth) * math.cos(elevation),
                                               math.sin(azimuth) * math.cos(elevation), math.sin(elevation)])
    rot = look_at(centre[None], target[None])[0, :3, :3]  # one orientation for all: x right, y down
    cols = math.ceil(math.sqrt(views * 1.6))
    rows = math.ceil(views / cols)
    k = np.arange(views)
    gx = (k % cols + 0.5) / cols - 0.5 + rng.uniform(-0.15, 0.15, views) / cols
    gy = (k // cols + 0.5) / rows - 0.5 + rng.uniform(-0.15, 0.15, views) / rows
    offsets = torch.tensor(np.stack([gx * 0.33 * distance, gy * 0.2 * distance], -1), dtype=torch.float32)
    eye = centre + offsets[:, :1] * rot[:, 0] + offsets[:, 1:] * rot[:, 1]
    c2w = torch.eye(4).repeat(views, 1, 1)
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = eye
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    return Cameras(c2w=c2w, fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size)


# ---------------------------------------------------------------------------------------------- rendering
def _cast(prims: Sequence[_Primitive], o: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest hit over all primitives: ``t [M]`` (inf on a miss), normal ``[M, 3]``, primitive index ``[M]`` (-1 on a miss)."""
    best_t = torch.full((o.shape[0],), _INF)
    best_n = torch.zeros_like(o)
    best_i = torch.full((o.shape[0],), -1, dtype=torch.int64)
    for k, prim in enumerate(prims):
        if isinstance(prim, _Ground):
            t, n = prim.intersect(o, d)
            closer = t < best_t
            best_t = torch.where(closer, t, best_t)
            best_n = torch.where(closer[:, None], n, best_n)
            best_i = torch.where(closer, torch.full_like(best_i, k), best_i)
            continue
        # cull with the bounding sphere first: objects cover a small part of each image
        box = prim.aabb()
        centre, radius = box.mean(0), float((box[1] - box[0]).norm()) / 2 + 1e-3
        oc = o - centre
        b = (oc * d).sum(-1)
        near = (b * b - (oc * oc).sum(-1) + radius**2 > 0) & (b < radius)
        rows = near.nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        t, n = prim.intersect(o[rows], d[rows])
        closer = t < best_t[rows]
        rows, t, n = rows[closer], t[closer], n[closer]
        best_t[rows] = t
        best_n[rows] = n
        best_i[rows] = k
    return best_t, best_n, best_i


def _shade(prims: Sequence[_Primitive], p: Tensor, n: Tensor, which: Tensor) -> Tensor:
    """Lambertian colour at surface points ``p [M, 3]`` with normals ``n`` on primitives ``which [M]``."""
    albedo = torch.zeros_like(p)
    for k, prim in enumerate(prims):
        m = which == k
        if m.any():
            albedo[m] = prim.albedo(p[m])
    light = torch.tensor(LIGHT_DIR)
    light = light / light.norm()
    lambert = (n @ light).clamp_min(0)
    occluders = [q for q in prims if not isinstance(q, _Ground)]
    lit = lambert > 0
    if lit.any() and occluders:
        origin = p[lit] + 2e-3 * n[lit]
        t, _, _ = _cast(occluders, origin, light.expand_as(origin))
        shadow = torch.ones_like(lambert)
        shadow[lit] = torch.where(torch.isfinite(t), 0.0, 1.0)
        lambert = lambert * shadow
    return (albedo * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]).clamp(0, 1)


def _render_rays(prims, o: Tensor, d: Tensor, background: Tensor, chunk: int = 1 << 18):
    """Colour, ray length and primitive index of rays ``[M, 3]``, chunked to bound memory."""
    rgb, ts, idx = [], [], []
    for s in range(0, o.shape[0], chunk):
        oo, dd = o[s:s + chunk], d[s:s + chunk]
        t, n, i = _cast(prims, oo, dd)
        hit = i >= 0
        col = background.expand(oo.shape[0], 3).clone()
        if hit.any():
            col[hit] = _shade(prims, oo[hit] + t[hit, None] * dd[hit], n[hit], i[hit])
        rgb.append(col)
        ts.append(t)
        idx.append(i)
    return torch.cat(rgb), torch.cat(ts), torch.cat(idx)


class _ViewRenderer:
    """Renders chosen views of the scene: RGB (anti-aliased), z-depth and labels (from the centre ray)."""

    def __init__(self, prims: Sequence[_Primitive], cameras: Cameras, supersample: int, background: Tensor,
                 labels: Tensor, instances: Tensor) -> None:
        self.prims, self.cameras, self.ss, self.bg = prims, cameras, supersample, background
        self.labels, self.instances = labels, instances

    def render(self, views: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``rgb [V, H, W, 3]``, ``depth [V, H, W]``, ``semantic [V, H, W]``, ``instance [V, H, W]`` of ``views``."""
        cameras, ss, bg = self.cameras, self.ss, self.bg
        H, W, n = int(cameras.height[0]), int(cameras.width[0]), len(views)
        grid = cameras.pixel_grid(0).reshape(-1, 2)  # [H*W, 2] pixel centres
        offsets = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss - 0.5
        sub = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)  # [ss*ss, 2]
        # all views at once (chunked inside): few large tensor ops are much faster than many small ones
        chosen = torch.tensor(views, dtype=torch.int64)
        index = chosen.repeat_interleave(H * W)
        with torch.no_grad():
            o, d = cameras.rays_at(index, grid.repeat(n, 1))  # centre samples: depth and labels
            rgb_c, t, which = _render_rays(self.prims, o, d, bg)
            forward = cameras.c2w[index, :3, 2]
            depth = torch.where(torch.isfinite(t), t * (d * forward).sum(-1), torch.zeros_like(t)).reshape(n, H, W)
            which = which.reshape(n, H, W)
            if ss == 1:
                rgb = rgb_c.reshape(n, H, W, 3)
            else:
                pix = (grid[:, None, :] + sub[None]).reshape(-1, 2)  # [H*W*ss*ss, 2]
                index = chosen.repeat_interleave(pix.shape[0])
                o, d = cameras.rays_at(index, pix.repeat(n, 1))
                rgb, _, _ = _render_rays(self.prims, o, d, bg)
                rgb = rgb.reshape(n, H, W, ss * ss, 3).mean(3)
        return rgb, depth, self.labels[which], self.instances[which]


class _LazyViews:
    """The views of a lazy demo scene, each rendered when first read; the last ``keep`` are kept."""

    def __init__(self, renderer: _ViewRenderer, count: int, key: str, keep: int = 4) -> None:
        self.renderer, self.count, self.key, self.keep = renderer, count, key, keep
        self._kept: OrderedDict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = OrderedDict()
        self._lock = threading.Lock()  # the feature cache reads views from a few threads

    def view(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(rgb [H, W, 3], depth [H, W], semantic [H, W], instance [H, W])`` of view ``i``."""
        if not 0 <= int(i) < self.count:
            raise IndexError(f"view {i} of {self.count}")
        with self._lock:
            if i in self._kept:
                self._kept.move_to_end(i)
                return self._kept[i]
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as make_demo_scene: faster on a busy machine
            try:
                rendered = tuple(a[0] for a in self.renderer.render([int(i)]))
            finally:
                torch.set_num_threads(threads)
            self._kept[i] = rendered
            if len(self._kept) > self.keep:
                self._kept.popitem(last=False)
            return rendered

    def images(self) -> ImageSource:
        return _LazyImages(self, list(range(self.count)))


class _LazyImages(ImageSource):
    """The RGB images of :class:`_LazyViews` as an image source; the fingerprint names the generator and view."""

    def __init__(self, views: _LazyViews, indices: list[int]) -> None:
        self.views, self.indices = views, indices

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> Tensor:
        return self.views.view(self.indices[i])[0]

    def subset(self, indices: Sequence[int]) -> _LazyImages:
        return _LazyImages(self.views, [self.indices[i] for i in indices])

    def fingerprint(self, i: int) -> str:
        return f"{self.views.key}:view={self.indices[i]}"


# ---------------------------------------------------------------------------------------------- public
_DEFAULTS = dict(size=128, views=32, test_every=8, background=(1.0, 1.0, 1.0), supersample=2, points=4000,
                 fov=40.0, distance=3.2, rig="ring", lazy=False)

#: changes whenever the generator draws other pixels for the same options: a lazy scene's fingerprints carry it
GENERATOR_VERSION = 1


def make_demo_scene(seed: int = 0, size: int = 128, views: int = 32, test_every: int = 8,
                    background: Sequence[float] = (1.0, 1.0, 1.0), supersample: int = 2, points: int = 4000,
                    fov: float = 40.0, distance: float = 3.2, height: int | None = None, rig: str = "ring",
                    lazy: bool = False, **unknown) -> Scene:
    """Render the procedural tabletop scene.

    Args:
        seed: object placement, sizes, colours and the camera ring's phase depend on it (deterministic).
        size: image width in pixels (and height, unless ``height`` is given).
        views: number of views on the ring.
        test_every: every ``test_every``-th view (0, k, 2k, ...) is a test view, the rest train.
        background: RGB in [0, 1] of pixels that see nothing.
        supersample: RGB samples per pixel along each axis (anti-aliasing); 1 disables it.
        points: number of surface points sampled for ``scene.points`` (they initialise Gaussians).
        fov: horizontal field of view in degrees.
        distance: camera distance from the table centre (world units; the table has radius 1.15).
        height: image height in pixels (default: ``size``).
        rig: ``"ring"`` (cameras around the table looking at its centre) or ``"forward"`` (a forward-facing
            capture as LLFF's: cameras on a plane ``distance`` from the table, all looking the same way).
        lazy: render each view when it is first read (a few kept) instead of all up front, so a scene of
            thousands of views costs nothing until used; reading a view twice may render it twice.
        unknown: any other option is a user error (:class:`FeatureFieldError` naming the valid ones).

    Returns:
        A :class:`Scene` with RGB ``[H, W, 3]``, z-depth ``[H, W]`` (0 on background), semantic and
        instance label maps ``[H, W]`` int64, ``class_names``, ``bounds``, ``points`` and per-object
        records in ``metadata["objects"]``.
    """
    if unknown:
        raise FeatureFieldError(f"demo scene: unknown option(s) {', '.join(sorted(unknown))}; valid options are "
                                f"{', '.join([*_DEFAULTS, 'height'])}")
    def whole(name, value, minimum):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and float(value).is_integer()
        if not ok or value < minimum:
            raise FeatureFieldError(f"demo scene: {name} must be a whole number >= {minimum}, got {value!r}")
        return int(value)

    def real(name, value, low, high):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not low < value < high:
            raise FeatureFieldError(f"demo scene: {name} must be a number between {low:g} and {high:g}, got {value!r}")
        return float(value)

    size, views, test_every = whole("size", size, 8), whole("views", views, 2), whole("test_every", test_every, 2)
    supersample, points = whole("supersample", supersample, 1), whole("points", points, 0)
    height = None if height is None else whole("height", height, 8)
    fov, distance = real("fov", fov, 0.0, 180.0), real("distance", distance, 0.0, math.inf)
    if isinstance(background, str) or not isinstance(background, (list, tuple)) or len(background) != 3 or not all(
            isinstance(c, numbers.Real) and not isinstance(c, bool) and 0 <= c <= 1 for c in background):
        raise FeatureFieldError(f"demo scene: background must be 3 numbers (RGB in [0, 1]), e.g. background=[0,0,0]; "
                                f"got {background!r}")
    if int(size) < 8 or (height is not None and int(height) < 8):
        raise FeatureFieldError(f"demo scene: size must be at least 8 pixels, got {size}")
    if int(views) < 2:
        raise FeatureFieldError(f"demo scene: needs at least 2 views, got {views}")
    if int(test_every) < 2:
        raise FeatureFieldError(f"demo scene: test_every must be at least 2, got {test_every}")
    if rig not in ("ring", "forward"):
        raise FeatureFieldError(f"demo scene: rig must be 'ring' or 'forward', got {rig!r}")
    if not isinstance(lazy, bool):
        raise FeatureFieldError(f"demo scene: lazy must be true or false, got {lazy!r}")
    if int(supersample) < 1:
        raise FeatureFieldError(f"demo scene: supersample must be >= 1, got {supersample}")
    background = tuple(float(c) for c in background)
    if len(background) != 3:
        raise FeatureFieldError(f"demo scene: background must be 3 numbers (RGB in [0, 1]), got {background}")
    size, views, test_every, supersample = int(size), int(views), int(test_every), int(supersample)
    H = size if height is None else int(height)

    # Generation is many elementwise ops on mid-sized tensors: one thread is about as fast as two on an
    # idle machine, and far faster on a busy one (thread hand-offs dominate), so run it single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _make(seed, size, H, views, test_every, background, supersample, points, fov, distance, height, rig, lazy)
    finally:
        torch.set_num_threads(threads)


def _make(seed, size, H, views, test_every, background, supersample, points, fov, distance, height, rig, lazy) -> Scene:
    rng = np.random.default_rng(seed)
    ground = _ground(rng)
    objects = _layout(rng)
    prims: list[_Primitive] = [ground, *objects]
    top = max(float(obj.aabb()[1, 2]) for obj in objects)
    rigs = {"ring": _ring_cameras, "forward": _forward_cameras}
    cameras = rigs[rig](views, size, rng, distance, fov, target_z=0.25 * top)
    if H != size:
        cameras = Cameras(c2w=cameras.c2w, fx=cameras.fx, fy=cameras.fy, cx=cameras.cx, cy=torch.full((views,), H / 2),
                          width=size, height=H)
    bg = torch.tensor(background, dtype=torch.float32)
    labels = torch.tensor([p.label for p in prims] + [0])  # index -1 -> background
    instances = torch.tensor([p.instance for p in prims] + [0])

    given = dict(size=size, views=views, test_every=test_every, background=background, supersample=supersample,
                 points=points, fov=fov, distance=distance, rig=rig, lazy=lazy)
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in given.items() if v != _DEFAULTS[k]}
    if height is not None:
        options["height"] = H
    renderer = _ViewRenderer(prims, cameras, supersample, bg, labels, instances)
    if lazy:
        key = f"demo-v{GENERATOR_VERSION}:seed={int(seed)}:" + ",".join(f"{k}={v}" for k, v in sorted(options.items()))
        lazy_views = _LazyViews(renderer, views, key)
        images = lazy_views.images()
        depths, semantics, inst_maps = (ArraySource(views, lambda i, k=k: lazy_views.view(i)[k]) for k in (1, 2, 3))
    else:
        rgb, depth, semantic, instance = renderer.render(list(range(views)))
        images = ImageArrays(list(rgb.unbind(0)))
        depths, semantics, inst_maps = (ArraySource.from_list(list(a.unbind(0))) for a in (depth, semantic, instance))

    # surface points with their shaded colour, area-weighted over objects and ground
    gen = torch.Generator().manual_seed(int(seed))
    areas = torch.tensor([p.area() for p in prims])
    counts = torch.round(areas / areas.sum() * int(points)).to(torch.int64).clamp_min(16)
    xyz, rgb = [], []
    for k, (prim, n) in enumerate(zip(prims, counts.tolist())):
        pts = prim.sample(n, gen)
        # colour as seen from outside: cast a short ray back onto the surface along the normal
        _, normal = prim.intersect(pts + 0.02 * _outward(prim, pts), -_outward(prim, pts))
        col = _shade(prims, pts, normal, torch.full((n,), k, dtype=torch.int64))
        xyz.append(pts)
        rgb.append(col)
    cloud = PointCloud(torch.cat(xyz).to(torch.float32), torch.cat(rgb).to(torch.float32))

    boxes = torch.stack([p.aabb() for p in prims])
    bounds = torch.stack([boxes[:, 0].amin(0), boxes[:, 1].amax(0)])
    test = [i for i in range(views) if i % test_every == 0]
    train = [i for i in range(views) if i % test_every != 0]
    meta_objects = [
        {"instance": p.instance, "class": CLASS_NAMES[p.label], "label": p.label,
         "center": [float(x) for x in p.aabb().mean(0)], "aabb": p.aabb().tolist()}
        for p in objects
    ]
    return Scene(
        cameras=cameras,
        images=images,
        split={"train": train, "test": test},
        normalization=Normalization.fit(cameras, bounds=bounds),
        points=cloud,
        depths=depths,
        semantics=semantics,
        instances=inst_maps,
        class_names=list(CLASS_NAMES),
        background_instances=(0, 1),
        bounds=bounds,
        background=background,
        name="demo",
        format="demo",
        source=None,
        metadata={"seed": int(seed), "options": options, "objects": meta_objects,
                  "instance_classes": {0: "background", 1: "ground", **{p.instance: CLASS_NAMES[p.label] for p in objects}}},
    )


def _outward(prim: _Primitive, pts: Tensor) -> Tensor:
    """An outward direction at surface points ``[n, 3]`` of ``prim`` (good enough to re-hit the surface)."""
    if isinstance(prim, _Ground):
        out = torch.zeros_like(pts)
        out[:, 2] = 1.0
        return out
    if isinstance(prim, _Ball):
        v = pts - prim.center
    elif isinstance(prim, _Box):
        pl = (pts - prim.center) @ prim.rotation
        ratio = pl.abs() / prim.half
        nl = torch.zeros_like(pl)
        axis = ratio.argmax(-1)
        nl.scatter_(1, axis[:, None], torch.sign(pl.gather(1, axis[:, None])))
        v = nl @ prim.rotation.T
    else:  # can and cone: the top cap of a can points up, sides point out radially (and up a bit for cones)
        q = pts - prim.base
        v = torch.stack([q[:, 0], q[:, 1], torch.zeros_like(q[:, 0])], -1)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        if isinstance(prim, _Can):
            on_top = (q[:, 2] >= prim.height - 1e-5) & (q[:, :2].norm(dim=-1) < prim.radius - 1e-4)
            v = torch.where(on_top[:, None], torch.tensor([0.0, 0.0, 1.0]).expand_as(v), v)
        else:
            v = v + torch.tensor([0.0, 0.0, prim.radius / prim.height])
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)
