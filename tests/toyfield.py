"""An analytic test double of the FeatureField protocol: spheres ray cast exactly in PyTorch.

Each sphere ``k`` has a colour and a semantic code; the embedding at a surface point is
``[one_hot(k) * 3, sin(B x), cos(B x)]`` (so features identify the object *and* the 3D point),
decoded linearly (``emb @ W + b``) or, with ``linear=False``, through ``tanh`` (no linear decoder,
features rendered directly as a NeRF does). Depth, alpha and points are exact, which lets the query
tests check geometry and folding against closed-form truth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.cameras import Cameras, look_at
from featurefield.fields.base import FeatureField, Render


class ToySpheres(FeatureField):
    kind = "toy"

    def __init__(self, centers: Tensor, radii: Tensor, colors: Tensor, dim: int = 12, fourier: int = 4,
                 linear: bool = True, teacher: str = "toy", seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.centers, self.radii, self.colors = centers.float(), radii.float(), colors.float()
        self.K = len(centers)
        self.B = torch.randn(fourier, 3, generator=g) * 2.0
        self.E = self.K + 2 * fourier
        self.W = torch.randn(self.E, dim, generator=g) / math.sqrt(self.E)
        self.b = torch.randn(dim, generator=g) * 0.3
        self.linear, self.teacher, self.dim = linear, teacher, dim

    # ----------------------------------------------------------- geometry
    def embed_points(self, xyz: Tensor, k: Tensor) -> Tensor:
        onehot = F.one_hot(k.clamp_min(0), self.K).float() * 3.0
        phase = xyz @ self.B.T
        return torch.cat([onehot, torch.sin(phase), torch.cos(phase)], -1)

    def decode_emb(self, emb: Tensor) -> Tensor:
        f = emb @ self.W + self.b
        return f if self.linear else torch.tanh(f)

    def trace(self, camera: Cameras):
        """Per pixel: hit sphere index (-1 none), z-depth, hit point ``[H, W, 3]``."""
        o, d = camera.rays(0)
        oc = o[..., None, :] - self.centers  # [H, W, K, 3]
        bq = (d[..., None, :] * oc).sum(-1)
        cq = (oc * oc).sum(-1) - self.radii ** 2
        disc = bq * bq - cq
        t = -bq - torch.sqrt(disc.clamp_min(0))
        t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, float("inf")))
        tmin, k = t.min(-1)
        hit = torch.isfinite(tmin)
        k = torch.where(hit, k, torch.full_like(k, -1))
        forward = camera.c2w[0, :3, 2]
        tt = torch.where(hit, tmin, torch.zeros_like(tmin))
        z = tt * (d @ forward)
        x = o + d * tt[..., None]
        return k, z, x

    # ----------------------------------------------------------- protocol
    def render(self, camera, *, background=None, features=True, projection=None, colour=True) -> Render:
        k, z, x = self.trace(camera)
        hit = (k >= 0)[..., None].float()
        bg = torch.ones(3) if background is None else background.float()
        rgb = self.colors[k.clamp_min(0)] * hit + bg * (1 - hit)
        emb = self.embed_points(x, k) * hit
        r = Render(rgb=rgb, depth=z[..., None], alpha=hit)
        if features:
            if self.linear:
                r.embedding = emb
            else:
                r.features[self.teacher] = self.decode_emb(emb)
        if projection is not None:
            _, P, pb = projection
            if self.linear:  # folded: only K channels are "rendered"
                r.projected = emb @ (self.W @ P) + (self.b @ P + pb)
            else:
                r.projected = self.decode_emb(emb) @ P + pb
        r.extras["hit"] = k
        return r

    def decode(self, render, teacher, grid=None, *, as_teacher=False):
        if self.linear:
            f = self.decode_emb(render.embedding).permute(2, 0, 1)
        else:
            f = render.features[teacher].permute(2, 0, 1)
        if grid is not None and tuple(grid) != tuple(f.shape[-2:]):
            f = F.interpolate(f[None], size=tuple(grid), mode="bilinear", align_corners=False, antialias=True)[0]
        return f

    def linear_decoder(self, teacher):
        return (self.W, self.b) if self.linear else None

    def points_with_features(self, teacher=None, max_points=1_000_000, per_sphere: int = 400):
        n = per_sphere
        i = torch.arange(n).float() + 0.5
        phi = torch.acos(1 - 2 * i / n)
        theta = math.pi * (1 + 5 ** 0.5) * i
        unit = torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)
        xyz = torch.cat([c + r * unit for c, r in zip(self.centers, self.radii)])
        k = torch.arange(self.K).repeat_interleave(n)
        out = {"xyz": xyz, "rgb": self.colors[k], "opacity": torch.ones(len(xyz)), "ids": torch.arange(len(xyz)),
               "sphere": k}
        if teacher is not None:
            out["features"] = self.decode_emb(self.embed_points(xyz, k))
        return out

    def sample_batch(self, data, step, generator):
        raise NotImplementedError

    def training_loss(self, batch, data, step):
        raise NotImplementedError

    def optimizers(self):
        return {}

    @classmethod
    def create(cls, scene, targets, config=None, max_steps=30_000, device="cpu"):
        """The two spheres of :func:`two_spheres` whatever the scene (the double is analytic, not trained)."""
        return two_spheres(teacher=targets[0].name if targets else "toy").to(device)

    def config_dict(self):
        return {}

    @classmethod
    def from_config(cls, config, state):
        raise NotImplementedError


def two_spheres(linear: bool = True, **kw) -> ToySpheres:
    """Sphere 0 (red) at the origin, sphere 1 (blue) beside it along +x."""
    return ToySpheres(torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]]), torch.tensor([0.4, 0.3]),
                      torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9]]), linear=linear, **kw)


def ring_cameras(n: int = 4, size: int = 32, radius: float = 3.0, elevation: float = 0.8, fov_deg: float = 45.0) -> Cameras:
    """``n`` cameras on a ring around the origin looking at ``(0.45, 0, 0)``, OpenCV convention."""
    ang = torch.linspace(0, 2 * math.pi, n + 1)[:-1] + 0.3
    eye = torch.stack([radius * torch.cos(ang), radius * torch.sin(ang), torch.full_like(ang, elevation)], -1)
    c2w = look_at(eye, torch.tensor([0.45, 0.0, 0.0]))
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    return Cameras(c2w=c2w, fx=f, fy=f, cx=size / 2, cy=size / 2, width=size, height=size)
