"""Procedural object categories: random instances built from analytic primitives, with parts and keypoints.

An instance is a list of primitives (the demo scene's ray-cast boxes, plus :class:`Tube` for hollow
cylinders), a part label for every surface point, and named semantic keypoints that mean the same thing
on every instance of the category (``"rim_left"`` is the rim point left of the handle on every mug).

Object frame (the world frame of a generated instance): z up, the object centred on the origin and
inside the unit sphere; the category's "front" faces +x and its "left" is +y, the same for every
instance, as in a category-aligned shape collection.

Categories (:data:`CATEGORIES`):
    * ``mugs``: parts body, handle, rim (the tube's top band, inside and out). Random radius, height,
      wall thickness, handle size and placement, stripe and checker textures.
    * ``chairs``: parts seat, back, legs. Random seat size and height, back height and thickness, leg
      thickness and inset, checker textures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from featurefield.data.demo_scene import _Box, _hsv, _mix, _nearest, _Primitive, _solve_quadratic

_NAN = float("nan")


@dataclass
class Tube(_Primitive):
    """A hollow cylinder with a floor (a mug's body): outer radius ``radius``, inner ``inner``, standing
    on ``base`` (the centre of its bottom disc), open at the top, floor ``floor`` thick.

    Surface points within ``rim`` of the top (outer wall, inner wall and the top annulus) carry the
    label ``rim_label``; the rest carry ``label``.
    """

    base: Tensor
    radius: float
    inner: float
    height: float
    floor: float
    rim: float
    rim_label: int
    color_a: Tensor
    color_b: Tensor
    rim_color: Tensor
    stripes: int
    spin: float

    def intersect(self, o, d):
        oc = o - self.base
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = oc[:, 0] * d[:, 0] + oc[:, 1] * d[:, 1]
        rho2 = oc[:, 0] ** 2 + oc[:, 1] ** 2
        cands = []
        for radius, z_lo, sign in ((self.radius, 0.0, 1.0), (self.inner, self.floor, -1.0)):
            for t in _solve_quadratic(a, b, rho2 - radius**2):
                p = oc + t[:, None] * d
                t = torch.where((p[:, 2] >= z_lo) & (p[:, 2] <= self.height), t, torch.full_like(t, _NAN))
                n = sign * torch.stack([p[:, 0], p[:, 1], torch.zeros_like(t)], -1) / radius
                cands.append((t, n))
        dz = torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], 1e-12), d[:, 2])
        # top annulus (up), floor disc inside (up), bottom disc (down)
        for z, r_lo, r_hi, nz in ((self.height, self.inner, self.radius, 1.0), (self.floor, 0.0, self.inner, 1.0),
                                  (0.0, 0.0, self.radius, -1.0)):
            t = (z - oc[:, 2]) / dz
            p = oc + t[:, None] * d
            r2 = p[:, :2].square().sum(-1)
            t = torch.where((r2 >= r_lo**2) & (r2 <= r_hi**2), t, torch.full_like(t, _NAN))
            n = torch.zeros_like(o)
            n[:, 2] = nz
            cands.append((t, n))
        return _nearest(*cands)

    def part_at(self, p: Tensor) -> Tensor:
        """Part label per surface point ``p [M, 3]`` -> ``[M]`` int64."""
        on_rim = (p[:, 2] - self.base[2]) > self.height - self.rim
        return torch.where(on_rim, torch.full_like(p[:, 0], self.rim_label), torch.full_like(p[:, 0], self.label)).long()

    def albedo(self, p):
        q = p - self.base
        ang = torch.atan2(q[:, 1], q[:, 0]) + self.spin
        zf = q[:, 2] / self.height
        outside = q[:, :2].norm(dim=-1) > 0.5 * (self.radius + self.inner)
        stripe = torch.floor(ang / (2 * math.pi) * self.stripes).remainder(2) * ((zf > 0.3) & (zf < 0.55))
        band = torch.floor(zf * 6).remainder(2) * 0.25
        rgb = _mix(self.color_a, self.color_b, stripe.to(p.dtype)) * (1 - band[:, None] * outside[:, None])
        inside_col = self.color_a[None] * 0.8 + 0.2
        rgb = torch.where(outside[:, None], rgb, inside_col.expand_as(rgb))
        on_rim = zf > 1 - self.rim / self.height
        return torch.where(on_rim[:, None], self.rim_color.expand_as(rgb), rgb).clamp(0, 1)

    def aabb(self):
        r = self.radius
        return torch.stack([self.base + torch.tensor([-r, -r, 0.0]), self.base + torch.tensor([r, r, self.height])])


@dataclass
class Keypoint:
    """A named semantic keypoint on an instance: position and outward normal ``[3]``, and its part label."""

    name: str
    position: Tensor
    normal: Tensor
    part: int


@dataclass
class Instance:
    """One object: primitives, keypoints (in :attr:`Category.keypoints` order) and the shape parameters."""

    primitives: list[_Primitive]
    keypoints: list[Keypoint]
    params: dict = field(default_factory=dict)

    def part_at(self, p: Tensor, which: Tensor) -> Tensor:
        """Part labels ``[M]`` of surface points ``p [M, 3]`` hit on primitives ``which [M]`` (-1: background 0)."""
        out = torch.zeros(p.shape[0], dtype=torch.int64)
        for k, prim in enumerate(self.primitives):
            m = which == k
            if m.any():
                out[m] = prim.part_at(p[m]) if hasattr(prim, "part_at") else prim.label
        return out


@dataclass(frozen=True)
class Category:
    """A category: part names (index 0 is the background), keypoint names and the instance builder."""

    name: str
    parts: tuple[str, ...]
    keypoints: tuple[str, ...]
    build: object  # (rng: np.random.Generator) -> Instance


def _colors(rng: np.random.Generator, sat=(0.35, 0.85), val=(0.45, 0.95)) -> tuple[Tensor, Tensor]:
    """Two random colours, of related hue, for a two-tone texture."""
    h = rng.random()
    a = _hsv(h, rng.uniform(*sat), rng.uniform(*val))
    b = _hsv((h + rng.uniform(0.08, 0.5)) % 1.0, rng.uniform(*sat), rng.uniform(*val))
    return a, b


def _t(*v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- mugs
MUG_PARTS = ("background", "body", "handle", "rim")
MUG_KEYPOINTS = ("rim_handle", "rim_left", "rim_opposite", "rim_right", "handle_top", "handle_outer",
                 "handle_low", "base_left", "base_opposite", "base_right")


def build_mug(rng: np.random.Generator) -> Instance:
    """A random mug: a tube (body + rim) and a C-shaped handle of three boxes on its +x side."""
    R = rng.uniform(0.32, 0.5)
    h = rng.uniform(0.75, 1.15)
    wall = rng.uniform(0.04, 0.075)
    floor = rng.uniform(0.05, 0.09)
    rim = rng.uniform(0.09, 0.14) * h
    reach = rng.uniform(0.16, 0.28)  # how far the handle stands out from the body
    th = rng.uniform(0.05, 0.08)  # the handle's square-ish cross-section
    wy = rng.uniform(0.05, 0.1)
    z0_f, z1_f = rng.uniform(0.15, 0.3), rng.uniform(0.62, 0.75)  # the handle's span, as fractions of the height
    # centre the whole mug (body + handle) on the origin
    cx = -0.5 * reach
    base = _t(cx, 0.0, -h / 2)
    a, b = _colors(rng)
    rim_color = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.75, 0.98))
    body = Tube(1, 1, base, R, R - wall, h, floor, rim, 3, a, b, rim_color, int(rng.integers(4, 13)),
                float(rng.uniform(0, 2 * math.pi)))
    ha, hb = _colors(rng)
    hz0, hz1 = base[2] + z0_f * h, base[2] + z1_f * h
    x_in, x_out = cx + R - 0.5 * wall, cx + R + reach
    arm_len = x_out - x_in
    boxes = [
        _Box(2, 2, _t(x_in + arm_len / 2, 0.0, hz1 - th / 2), _t(arm_len / 2, wy, th / 2), 0.0, ha, hb),  # top arm
        _Box(2, 2, _t(x_in + arm_len / 2, 0.0, hz0 + th / 2), _t(arm_len / 2, wy, th / 2), 0.0, ha, hb),  # bottom arm
        _Box(2, 2, _t(x_out - th / 2, 0.0, (hz0 + hz1) / 2), _t(th / 2, wy, (hz1 - hz0) / 2), 0.0, ha, hb),  # bar
    ]
    top = base[2] + h
    r_mid = R - wall / 2
    z = _t(0.0, 0.0, 1.0)

    def on_rim(angle: float) -> Keypoint:
        return Keypoint("", base + _t(r_mid * math.cos(angle), r_mid * math.sin(angle), h), z, 3)

    def on_side(angle: float, zf: float, part: int) -> Keypoint:
        n = _t(math.cos(angle), math.sin(angle), 0.0)
        return Keypoint("", base + _t(R * math.cos(angle), R * math.sin(angle), zf * h), n, part)

    bar_mid = (hz0 + hz1) / 2
    kps = [
        on_rim(0.0), on_rim(math.pi / 2), on_rim(math.pi), on_rim(-math.pi / 2),
        Keypoint("", _t(x_in + 0.55 * arm_len, 0.0, float(hz1)), z, 2),
        Keypoint("", _t(x_out, 0.0, float(bar_mid)), _t(1.0, 0.0, 0.0), 2),
        Keypoint("", _t(x_out, 0.0, float(hz0 + 0.25 * (hz1 - hz0))), _t(1.0, 0.0, 0.0), 2),
        on_side(math.pi / 2, 0.12, 1), on_side(math.pi, 0.12, 1), on_side(-math.pi / 2, 0.12, 1),
    ]
    for kp, name in zip(kps, MUG_KEYPOINTS):
        kp.name = name
    params = dict(radius=R, height=h, wall=wall, floor=floor, rim=rim, reach=reach, handle_thickness=th,
                  handle_width=2 * wy, handle_span=[z0_f, z1_f], top=float(top))
    return Instance([body, *boxes], kps, params)


# ---------------------------------------------------------------------------------------------- chairs
CHAIR_PARTS = ("background", "seat", "back", "legs")
CHAIR_KEYPOINTS = ("seat_front_left", "seat_front_right", "seat_back_left", "seat_back_right", "back_top_left",
                   "back_top_right", "leg_front_left", "leg_front_right", "leg_back_left", "leg_back_right")


def build_chair(rng: np.random.Generator) -> Instance:
    """A random chair facing +x: a seat slab on four legs and a back slab rising from the seat's -x edge."""
    sx, sy = rng.uniform(0.3, 0.45), rng.uniform(0.3, 0.45)  # seat half-extents
    st = rng.uniform(0.035, 0.07)  # seat thickness
    hs = rng.uniform(0.4, 0.6)  # seat height (top of the seat above the floor)
    hb = rng.uniform(0.4, 0.65)  # back height above the seat
    bt = rng.uniform(0.04, 0.07)  # back thickness
    bw = sy * rng.uniform(0.8, 1.0)  # back half-width
    lt = rng.uniform(0.035, 0.065)  # leg width
    inset = rng.uniform(0.0, 0.06)
    z0 = -(hs + hb) / 2  # floor height: centres the chair vertically
    wood_a, wood_b = _colors(rng, sat=(0.3, 0.7), val=(0.4, 0.85))
    back_a, back_b = _colors(rng)
    leg_a, leg_b = _colors(rng, sat=(0.1, 0.5), val=(0.2, 0.6))
    seat_top = z0 + hs
    seat = _Box(1, 1, _t(0.0, 0.0, seat_top - st / 2), _t(sx, sy, st / 2), 0.0, wood_a, wood_b)
    back_x = -sx + bt / 2
    back = _Box(2, 2, _t(back_x, 0.0, seat_top + hb / 2), _t(bt / 2, bw, hb / 2), 0.0, back_a, back_b)
    leg_h = hs - st
    legs, leg_xy = [], []
    for fx in (1, -1):
        for fy in (1, -1):
            x, y = fx * (sx - inset - lt / 2), fy * (sy - inset - lt / 2)
            leg_xy.append((x, y))
            legs.append(_Box(3, 3, _t(x, y, z0 + leg_h / 2), _t(lt / 2, lt / 2, leg_h / 2), 0.0, leg_a, leg_b))
    up = _t(0.0, 0.0, 1.0)
    front = _t(1.0, 0.0, 0.0)
    back_front_x = back_x + bt / 2
    seat_x_lo = back_front_x  # the seat's visible top starts in front of the back
    kps = [
        Keypoint("", _t(sx * 0.8, sy * 0.8, seat_top), up, 1),
        Keypoint("", _t(sx * 0.8, -sy * 0.8, seat_top), up, 1),
        Keypoint("", _t(seat_x_lo + 0.15 * sx, sy * 0.8, seat_top), up, 1),
        Keypoint("", _t(seat_x_lo + 0.15 * sx, -sy * 0.8, seat_top), up, 1),
        Keypoint("", _t(back_front_x, bw * 0.8, seat_top + 0.88 * hb), front, 2),
        Keypoint("", _t(back_front_x, -bw * 0.8, seat_top + 0.88 * hb), front, 2),
    ]
    for (x, y), fx in zip(leg_xy, (1, 1, -1, -1)):
        kps.append(Keypoint("", _t(x + fx * lt / 2, y, z0 + 0.35 * leg_h), _t(float(fx), 0.0, 0.0), 3))
    # legs were made front-left, front-right, back-left, back-right (+y is left)
    for kp, name in zip(kps, CHAIR_KEYPOINTS):
        kp.name = name
    params = dict(seat_half=[sx, sy], seat_thickness=st, seat_height=hs, back_height=hb, back_thickness=bt,
                  back_half_width=bw, leg_width=lt, leg_inset=inset)
    return Instance([seat, back, *legs], kps, params)


CATEGORIES: dict[str, Category] = {
    "mugs": Category("mugs", MUG_PARTS, MUG_KEYPOINTS, build_mug),
    "chairs": Category("chairs", CHAIR_PARTS, CHAIR_KEYPOINTS, build_chair),
}
