"""The NeRF feature field (F3RM): a Nerfacto radiance field plus a separate hash-grid feature field.

Per ray: proposal density fields resample the ray twice (256 then 96 samples by default), the
radiance field evaluates 48 final samples (density from a hash grid + small MLP, colour from the
geometry feature, SH-encoded direction and a per-image appearance embedding), and each teacher's
feature head evaluates the same samples from *detached* positions; features are rendered with the
radiance field's detached weights, ``feature(ray) = sum_i w_i f_i``, so distillation never moves
geometry.

The trainer drives it through :class:`~featurefield.fields.base.FeatureField`::

    field = NerfField.create(scene, targets, NerfConfig(), max_steps=30_000, device="cuda")
    batch = field.sample_batch(data, step, generator)
    losses = field.training_loss(batch, data, step)
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurefield.cameras import Cameras, PixelRays
from featurefield.data.scene import Scene
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import FeatureField, Render, TeacherTarget, TrainData
from featurefield.fields.nerf.config import NerfConfig
from featurefield.fields.nerf.contraction import Contraction
from featurefield.fields.nerf.encodings import frequency_encoding, spherical_harmonics
from featurefield.fields.nerf.hashgrid import HashGrid
from featurefield.fields.nerf.losses import (
    distortion_loss,
    interlevel_loss,
    normal_consistency_loss,
    orientation_loss,
)
from featurefield.fields.nerf.rendering import (
    accumulate,
    composite_rgb,
    expected_distance,
    median_distance,
    weights_from_density,
)
from featurefield.fields.nerf.samplers import pdf_edges, ray_aabb, spacing_to_distance, uniform_edges
from featurefield.fields.spill import FeatureSpill
from featurefield.fields.teacher_grid import sample_at_cell_centres
from featurefield.metrics import psnr_from_mse

#: features of a whole view above this many bytes are returned in fp16 (4K x 256-D fits a 24 GB card).
_FP32_FEATURE_BYTES = 2**31


class _TruncExp(torch.autograd.Function):
    """``exp`` whose gradient is clamped (``exp(min(x, 15))``), as Instant-NGP / Nerfacto."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def mlp(in_dim: int, hidden: int, num_layers: int, out_dim: int) -> nn.Sequential:
    """``num_layers`` linear layers (nerfstudio's count), ReLU between, no output activation."""
    dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < num_layers - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ProposalDensity(nn.Module):
    """A small density-only hash-grid field guiding the sampler."""

    def __init__(self, cfg: NerfConfig, max_res: int) -> None:
        super().__init__()
        self.grid = HashGrid(cfg.proposal_levels, 2, cfg.proposal_log2_hashmap_size, 16, max_res,
                             cfg.hashgrid_backend, cfg.table_dtype)
        self.mlp = mlp(self.grid.out_dim, cfg.proposal_hidden_dim, 2, 1)

    def forward(self, u: Tensor, inside: Tensor) -> Tensor:
        """``u [M, 3]`` in ``[0, 1]^3`` -> density ``[M]`` (zero outside the modelled region)."""
        h = self.mlp(self.grid(u)).float()[:, 0]
        return trunc_exp(h - 1.0) * inside


class RadianceField(nn.Module):
    """Nerfacto's field: hash grid -> (density, geometry feature); colour from feature + direction + appearance."""

    def __init__(self, cfg: NerfConfig, num_images: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = HashGrid(cfg.num_levels, cfg.features_per_level, cfg.log2_hashmap_size, cfg.base_res,
                             cfg.max_res, cfg.hashgrid_backend, cfg.table_dtype)
        self.base = mlp(self.grid.out_dim, cfg.hidden_dim, cfg.num_layers, 1 + cfg.geo_feat_dim)
        self.appearance = nn.Embedding(max(num_images, 1), cfg.appearance_dim)
        nn.init.normal_(self.appearance.weight, 0.0, 1.0)
        self.color = mlp(cfg.geo_feat_dim + cfg.sh_degree**2 + cfg.appearance_dim, cfg.hidden_dim_color,
                         cfg.num_layers_color, 3)
        if cfg.predict_normals:
            self.normal_head = mlp(cfg.geo_feat_dim, cfg.hidden_dim, 2, 3)

    def geometry(self, u: Tensor, inside: Tensor) -> tuple[Tensor, Tensor]:
        """Density ``[M]`` and geometry feature ``[M, geo_feat_dim]``."""
        h = self.base(self.grid(u))
        density = trunc_exp(h[:, 0].float() - 1.0) * inside
        return density, h[:, 1:]

    def rgb(self, geo: Tensor, directions: Tensor, image: Tensor | None) -> Tensor:
        """Colour ``[M, 3]`` in [0, 1]; ``image [M]`` picks appearance embeddings (None: their mean)."""
        sh = spherical_harmonics(directions, self.cfg.sh_degree)
        if image is None:
            app = self.appearance.weight.mean(0, keepdim=True).expand(geo.shape[0], -1)
        else:
            app = self.appearance(image)
        x = torch.cat([geo, sh.to(geo.dtype), app.to(geo.dtype)], -1)
        return torch.sigmoid(self.color(x).float())


class FeatureEncoder(nn.Module):
    """F3RM's feature field: its own hash grid + frequency encoding of detached positions, one MLP per teacher,
    plus a learnt per-teacher feature for empty space (composited like a background colour): one vector,
    or a map on the teacher's grid read at the ray's position in the image (``cfg.feature_background``)."""

    def __init__(self, cfg: NerfConfig, targets: list[TeacherTarget]) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = HashGrid(cfg.feature_levels, cfg.feature_features_per_level, cfg.feature_log2_hashmap_size,
                             cfg.feature_base_res, cfg.feature_max_res, cfg.hashgrid_backend, cfg.table_dtype)
        in_dim = self.grid.out_dim + 3 * 2 * cfg.feature_pe_frequencies
        self.heads = nn.ModuleDict({t.name: mlp(in_dim, cfg.feature_hidden_dim, cfg.feature_num_layers + 1, t.dim)
                                    for t in targets})
        # feature seen through empty space (lego's white background has teacher features too); not in F3RM,
        # whose real scenes are opaque: there the accumulation is ~1 and this term vanishes
        shape = (lambda t: (t.dim, *t.grid)) if cfg.feature_background == "image" else (lambda t: (t.dim,))
        self.background = nn.ParameterDict({t.name: nn.Parameter(torch.zeros(shape(t))) for t in targets})

    def background_at(self, name: str, screen: Tensor | None) -> Tensor:
        """The empty-space feature of teacher ``name`` for rays at ``screen`` ``[R, 2]`` ((u, v) / image size,
        in [0, 1]): ``[R, D]``, or ``[D]`` (one for all rays) for a constant or without positions."""
        bg = self.background[name]
        if bg.dim() == 1:
            return bg
        if screen is None:
            return bg.mean((1, 2))
        where = (screen.to(bg) * 2 - 1)[None, None]  # [1, 1, R, 2] in grid_sample's [-1, 1]
        return F.grid_sample(bg[None], where, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T

    def encode(self, u: Tensor) -> Tensor:
        u = u.detach()
        return torch.cat([self.grid(u), frequency_encoding(u, self.cfg.feature_pe_frequencies)], -1)

    def forward(self, u: Tensor, names: list[str]) -> dict[str, Tensor]:
        enc = self.encode(u)
        return {n: self.heads[n](enc) for n in names}


def _to_device(x: Tensor, device: torch.device) -> Tensor:
    """A small host tensor on ``device``; to CUDA through pinned memory without blocking, so the host does
    not wait for the GPU to drain its queue (PyTorch's pinned-memory cache keeps the buffer until the copy
    has run)."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def patch_offsets(size: int, grid: tuple[int, int], image_size: tuple[int, int], device=None) -> tuple[Tensor, Tensor]:
    """Pixel offsets ``(du, dv)``, each ``[size * size]`` row-major (``dv`` slowest), of a square patch of rays
    one teacher-grid cell apart, centred on its middle ray (the layout of :class:`FeatureSpill`'s kernel).

    Args:
        size: odd patch side; grid: the teacher's ``(h, w)``; image_size: ``(H, W)`` in pixels.
    """
    r = size // 2
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    dv, du = torch.meshgrid(torch.round(d * image_size[0] / grid[0]), torch.round(d * image_size[1] / grid[1]),
                            indexing="ij")
    return du.flatten().long().to(device), dv.flatten().long().to(device)


def _exp_decay(lr: float, lr_final: float, steps: int):
    """Nerfacto's ExponentialDecayScheduler (no warm-up) as a LambdaLR multiplier."""
    ratio = lr_final / lr

    def factor(step: int) -> float:
        t = min(max(step / max(steps, 1), 0.0), 1.0)
        return ratio**t

    return factor


class NerfField(FeatureField):
    """Nerfacto + F3RM feature field (see the module docstring).

    Args:
        cfg: resolved :class:`NerfConfig` (preset applied).
        targets: teachers distilled (one feature head each).
        num_images: training images (appearance embeddings).
        contraction: ``"linf"`` or ``"aabb"``; aabb: ``[2, 3]`` canonical box for ``"aabb"``.
        background: ``[3]`` training background or None (opaque scenes).
        max_steps: the run's step count (learning-rate decay when ``lr_decay_steps == 0``).
    """

    kind = "nerf"
    teacher_sampling = "centre"  # trained on the teacher grid's bilinear interpolant (see decode)

    def __init__(self, cfg: NerfConfig, targets: list[TeacherTarget], num_images: int, contraction: str,
                 aabb: list | None = None, background: list | None = None, max_steps: int = 30_000) -> None:
        super().__init__()
        if len(cfg.num_proposal_samples) != len(cfg.proposal_max_res):
            raise FeatureFieldError(
                f"nerf config: {len(cfg.num_proposal_samples)} proposal sample counts but "
                f"{len(cfg.proposal_max_res)} proposal resolutions; give one resolution per proposal level")
        self.config, self.targets, self.num_images = cfg, list(targets), int(num_images)
        self.contraction_kind, self.aabb_list, self.max_steps = contraction, aabb, int(max_steps)
        self.background_list = background
        self.contraction = Contraction(contraction, None if aabb is None else torch.tensor(aabb, dtype=torch.float32))
        self.field = RadianceField(cfg, num_images)
        self.proposals = nn.ModuleList([ProposalDensity(cfg, r) for r in cfg.proposal_max_res])
        self.features = FeatureEncoder(cfg, targets)
        if cfg.feature_spill < 0 or (cfg.feature_spill and cfg.feature_spill % 2 == 0):
            raise FeatureFieldError(f"--nerf.feature-spill must be 0 (off) or an odd kernel size, got {cfg.feature_spill}")
        if cfg.feature_spill > 1 and len({tuple(t.grid) for t in self.targets}) > 1:
            raise FeatureFieldError("--nerf.feature-spill needs teachers on one feature grid, got "
                                    + ", ".join(f"{t.name} {t.grid[0]}x{t.grid[1]}" for t in self.targets))
        self.spills = nn.ModuleDict({t.name: FeatureSpill(cfg.feature_spill) for t in self.targets}
                                    if cfg.feature_spill > 1 else {})
        self.register_buffer("background", torch.tensor(background if background is not None else [0.0, 0.0, 0.0],
                                                        dtype=torch.float32), persistent=False)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None
        self._schedulers: dict[str, Any] | None = None
        self._rays: PixelRays | None = None
        self.schedulers()  # builds the optimizers too, before any step (LambdaLR wraps optimizer.step)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, scene: Scene, targets: list[TeacherTarget], config: NerfConfig | None = None,
               max_steps: int = 30_000, device: torch.device | str = "cpu") -> NerfField:
        """A fresh field for ``scene`` (canonical frame), sized by ``config`` for ``device``."""
        cfg = (config or NerfConfig()).resolved(device)
        bounds = scene.canonical_bounds()
        kind = cfg.contraction
        if kind == "auto":
            kind = "aabb" if bounds is not None else "linf"
        if kind == "aabb" and bounds is None:
            raise FeatureFieldError(f"{scene.source or scene.name}: --nerf.contraction aabb needs scene bounds; "
                                    "use --nerf.contraction linf for unbounded scenes")
        aabb = None if kind == "linf" else [[float(v) for v in row] for row in bounds]
        bg = None if scene.background is None else [float(v) for v in scene.background]
        return cls(cfg, targets, len(scene.split["train"]), kind, aabb, bg, max_steps).to(device)

    def config_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "targets": [dataclasses.asdict(t) for t in self.targets],
                "num_images": self.num_images, "contraction": self.contraction_kind, "aabb": self.aabb_list,
                "background": self.background_list, "max_steps": self.max_steps}

    @classmethod
    def from_config(cls, config: dict, state: dict[str, Tensor]) -> NerfField:
        targets = [TeacherTarget(t["name"], int(t["dim"]), tuple(t["grid"]), float(t.get("weight", 1.0)))
                   for t in config["targets"]]
        cfg = NerfConfig(**{"feature_background": "constant", **config["config"]})  # runs from before the map
        fld = cls(cfg, targets, config["num_images"], config["contraction"], config.get("aabb"),
                  config.get("background"), config.get("max_steps", 30_000))
        fld.load_state_dict(state)
        return fld

    # ------------------------------------------------------------------ helpers
    def _autocast(self, device: torch.device):
        if self.config.mixed_precision and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _bounds(self, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor, str]:
        if self.contraction_kind == "aabb":
            near, far = ray_aabb(origins, directions, self.contraction.box(origins), self.config.near_plane)
            return near, far, "uniform"
        near = torch.full_like(origins[:, 0], self.config.near_plane)
        return near, torch.full_like(near, self.config.far_plane), "lindisp"

    def _anneal(self, step: int) -> float:
        frac = min(max(step / max(self.config.proposal_anneal_steps, 1), 0.0), 1.0)
        b = self.config.proposal_anneal_slope
        return (b * frac) / ((b - 1) * frac + 1)

    def _update_proposals(self, step: int) -> bool:
        every = float(np.clip(np.interp(step, [0, self.config.proposal_warmup], [0, self.config.proposal_update_every]),
                              1, self.config.proposal_update_every))
        return step < 10 or step % max(int(round(every)), 1) == 0

    def _positions(self, origins: Tensor, directions: Tensor, edges: Tensor, near: Tensor, far: Tensor,
                   spacing: str) -> tuple[Tensor, Tensor, Tensor]:
        """Midpoint positions ``[R, S, 3]``, midpoint distances ``[R, S]`` and interval lengths ``[R, S]``."""
        t = spacing_to_distance(edges, near, far, spacing)
        mid = (t[:, 1:] + t[:, :-1]) / 2
        pos = origins[:, None, :] + directions[:, None, :] * mid[..., None]
        return pos, mid, t[:, 1:] - t[:, :-1]

    # ------------------------------------------------------------------ the ray renderer
    def render_rays(self, origins: Tensor, directions: Tensor, image: Tensor | None = None, *, step: int | None = None,
                    background: Tensor | None = None, teachers: list[str] = (),
                    projection: tuple[str, Tensor, Tensor] | None = None, generator: torch.Generator | None = None,
                    normals: bool = False, screen: Tensor | None = None) -> dict[str, Any]:
        """Render a batch of rays.

        Args:
            origins, directions: ``[R, 3]`` canonical rays (unit directions).
            image: ``[R]`` training image index (appearance); None uses the mean embedding.
            step: training step (jittered samples, annealed proposals, proposal updates); None: evaluation.
            background: ``[3]`` or None (no compositing).
            teachers: teacher heads to render.
            projection: ``(teacher, P [D, K], b [K])`` to render projected features.
            normals: also compute density-gradient and predicted normals.
            screen: ``[R, 2]`` the rays' positions in their image, divided by its size (the empty-space
                feature map is read there); None: its mean.
        Returns:
            dict with ``rgb [R, 3]``, ``accumulation [R]``, ``distance`` (expected) ``[R]``,
            ``median_distance [R]``, ``features`` {name: ``[R, D]``}, ``projected [R, K]`` and, for
            training, ``edges_list`` / ``weights_list`` (spacing space) and normals when asked.
        """
        cfg = self.config
        R, dev = origins.shape[0], origins.device
        train = step is not None
        near, far, spacing = self._bounds(origins, directions)
        anneal = self._anneal(step) if train else 1.0
        update = train and self._update_proposals(step)
        edges_list, weights_list = [], []
        edges, weights = None, None
        with self._autocast(dev):
            for i, prop in enumerate(self.proposals):
                n = cfg.num_proposal_samples[i]
                if i == 0:
                    edges = uniform_edges(R, n, dev, train, cfg.single_jitter, generator)
                else:
                    edges = pdf_edges(edges, weights.detach() ** anneal, n, train, cfg.single_jitter, generator=generator)
                pos, _, deltas = self._positions(origins, directions, edges, near, far, spacing)
                u, inside = self.contraction(pos.reshape(-1, 3))
                with torch.no_grad() if not update else nullcontext():
                    density = prop(u, inside).reshape(R, -1)
                weights = weights_from_density(density, deltas)
                edges_list.append(edges)
                weights_list.append(weights)
            edges = pdf_edges(edges, weights.detach() ** anneal, cfg.num_nerf_samples, train, cfg.single_jitter,
                              generator=generator)
            pos, mid, deltas = self._positions(origins, directions, edges, near, far, spacing)
            flat = pos.reshape(-1, 3)
            if normals:
                flat = flat.detach().requires_grad_(True)
            with torch.enable_grad() if normals else nullcontext():
                u, inside = self.contraction(flat)
                density, geo = self.field.geometry(u, inside)
                if normals:
                    grad = torch.autograd.grad(density.sum(), flat, create_graph=train)[0]
                    grad_normals = -F.normalize(grad, dim=-1)
            S = cfg.num_nerf_samples
            dirs = directions[:, None, :].expand(R, S, 3).reshape(-1, 3)
            img = None if image is None else image[:, None].expand(R, S).reshape(-1)
            rgb = self.field.rgb(geo, dirs, img).reshape(R, S, 3)
            density = density.reshape(R, S)
            weights = weights_from_density(density, deltas)
            out: dict[str, Any] = {
                "rgb": composite_rgb(weights, rgb, background),
                "accumulation": weights.sum(-1),
                "distance": expected_distance(weights, mid),
                "median_distance": median_distance(weights.detach(), mid),
                "weights": weights,
            }
            if train:
                out["edges_list"] = edges_list + [edges]
                out["weights_list"] = weights_list + [weights]
            if normals:
                out["grad_normals"] = grad_normals.reshape(R, S, 3)
                if cfg.predict_normals:
                    out["pred_normals"] = F.normalize(self.field.normal_head(geo).float(), dim=-1).reshape(R, S, 3)
            names = list(dict.fromkeys(list(teachers) + ([projection[0]] if projection is not None else [])))
            if names:
                feats = self.features(u, names)
                w = weights.detach()
                empty = 1.0 - w.sum(-1, keepdim=True)
                rendered = {n: accumulate(w, f.float().reshape(R, S, -1)) + empty * self.features.background_at(n, screen)
                            for n, f in feats.items()}
                out["features"] = {n: rendered[n] for n in teachers}
                if projection is not None:
                    name, P, b = projection
                    out["projected"] = rendered[name] @ P.to(dev, torch.float32) + b.to(dev, torch.float32)
        return out

    # ------------------------------------------------------------------ FeatureField: rendering
    @torch.no_grad()
    def render(self, camera: Cameras, *, background: Tensor | None = None, features: bool = True,
               projection: tuple[str, Tensor, Tensor] | None = None, colour: bool = True) -> Render:
        """Render one camera, chunked over rays (``cfg.render_chunk``) so any resolution fits in memory."""
        dev = self.background.device
        camera = camera.to(dev)
        H, W = int(camera.height[0]), int(camera.width[0])
        bg = background.to(dev, torch.float32) if background is not None else (
            self.background if self.background_list is not None else None)
        teachers = [t.name for t in self.targets] if features else []
        if projection is not None and projection[0] not in {t.name for t in self.targets}:
            raise FeatureFieldError(f"no teacher {projection[0]!r} in this field; it has {[t.name for t in self.targets]}")
        grid = camera.pixel_grid(0).reshape(-1, 2)
        screen = grid / torch.tensor([W, H], device=dev, dtype=grid.dtype)
        index = torch.zeros(grid.shape[0], dtype=torch.int64, device=dev)
        dims = {t.name: t.dim for t in self.targets}
        feat_dtype = torch.float32 if H * W * sum(dims[n] for n in teachers) * 4 <= _FP32_FEATURE_BYTES else torch.float16
        rgb = torch.empty(H * W, 3, device=dev)
        dist = torch.empty(H * W, device=dev)
        acc = torch.empty(H * W, device=dev)
        feats = {n: torch.empty(H * W, dims[n], device=dev, dtype=feat_dtype) for n in teachers}
        proj = None if projection is None else torch.empty(H * W, projection[1].shape[1], device=dev)
        normals = torch.empty(H * W, 3, device=dev) if self.config.predict_normals else None
        forward = camera.c2w[0, :3, 2]
        chunk = max(int(self.config.render_chunk), 1)
        for s in range(0, H * W, chunk):
            e = min(s + chunk, H * W)
            o, d = camera.rays_at(index[s:e], grid[s:e])
            out = self.render_rays(o, d, None, background=bg, teachers=teachers, projection=projection,
                                   normals=self.config.predict_normals, screen=screen[s:e])
            rgb[s:e], acc[s:e] = out["rgb"], out["accumulation"]
            dist[s:e] = out["distance"] * (d @ forward)  # ray length -> z-depth
            for n in teachers:
                feats[n][s:e] = out["features"][n].to(feat_dtype)
            if proj is not None:
                proj[s:e] = out["projected"]
            if normals is not None:
                normals[s:e] = accumulate(out["weights"], out["pred_normals"])
        extras: dict[str, Any] = {}
        if normals is not None:
            extras["normals"] = F.normalize(normals, dim=-1).reshape(H, W, 3)
        return Render(rgb=rgb.reshape(H, W, 3), depth=dist.reshape(H, W, 1), alpha=acc.reshape(H, W, 1),
                      features={n: f.reshape(H, W, -1) for n, f in feats.items()},
                      projected=None if proj is None else proj.reshape(H, W, -1), extras=extras)

    def decode(self, render: Render, teacher: str, grid: tuple[int, int] | None = None, *,
               as_teacher: bool = False, spill: bool = True) -> Tensor:
        """``[D, h, w]`` features of ``teacher`` at ``grid`` (through the learnt spill with ``as_teacher``).

        The render is area-averaged to ``grid``; with ``as_teacher`` it is sampled at the grid cells'
        centres instead (``teacher_sampling = "centre"``): the field learns the bilinear interpolant of
        the teacher's grid at pixel centres (F3RM's targets), which equals the teacher's value at a cell
        centre, while the mean of that interpolant over a cell blurs in the neighbours (on lego's 64 x 64
        SAM grid a perfect field would score cosine 0.98-0.99 area-averaged, 0.9999 at the centres).
        """
        if teacher not in render.features:
            raise FeatureFieldError(f"the render holds no features for {teacher!r}; render with features=True "
                                    f"(teachers: {[t.name for t in self.targets]})")
        f = render.features[teacher].float().permute(2, 0, 1)  # [D, H, W]
        if grid is None:
            return f
        same = tuple(grid) == tuple(f.shape[-2:])
        if as_teacher:
            f = f if same else sample_at_cell_centres(f, tuple(grid))
            if spill and teacher in self.spills:
                f = self.spills[teacher](f.permute(1, 2, 0)).permute(2, 0, 1)
            return f
        if same:
            return f
        return F.interpolate(f[None], size=tuple(grid), mode="bilinear", align_corners=False, antialias=True)[0]

    def models_teacher_spill(self, teacher: str) -> bool:
        return teacher in self.spills

    @torch.no_grad()
    def points_with_features(self, teacher: str | None = None, max_points: int = 1_000_000) -> dict[str, Tensor]:
        """Points of a grid over the modelled region whose opacity exceeds ``cfg.point_threshold``.

        The grid lives in contracted space (all of an unbounded scene, or the AABB); each point's
        opacity is ``1 - exp(-sigma * voxel)`` with its voxel size in canonical units, colour is the
        mean over 6 viewing directions.
        """
        dev = self.background.device
        if teacher is not None and teacher not in {t.name for t in self.targets}:
            raise FeatureFieldError(f"no teacher {teacher!r} in this field; it has {[t.name for t in self.targets]}")
        res = int(min(256, max(32, math.ceil((8 * max_points) ** (1 / 3)))))
        lin = (torch.arange(res, device=dev, dtype=torch.float32) + 0.5) / res
        gen = torch.Generator(device="cpu").manual_seed(0)
        xyz_all, opa_all = [], []
        for z0 in range(res):  # slab by slab keeps memory at res^2 points
            gy, gx = torch.meshgrid(lin, lin, indexing="ij")
            u = torch.stack([gx.flatten(), gy.flatten(), torch.full_like(gx.flatten(), float(lin[z0]))], -1)
            u = u + (torch.rand(u.shape, generator=gen).to(dev) - 0.5) / res
            u = u.clamp(0, 1)
            x = self.contraction.inverse(u)
            uu, inside = self.contraction(x)
            with self._autocast(torch.device(dev)):
                density, _ = self.field.geometry(uu, inside)
            voxel = self._voxel_size(x, res)
            opa = 1 - torch.exp(-density.float() * voxel)
            keep = opa > self.config.point_threshold
            xyz_all.append(x[keep])
            opa_all.append(opa[keep])
        xyz, opa = torch.cat(xyz_all), torch.cat(opa_all)
        if xyz.shape[0] > max_points:
            top = torch.topk(opa, max_points).indices
            xyz, opa = xyz[top], opa[top]
        out = {"xyz": xyz, "opacity": opa, "ids": torch.arange(xyz.shape[0], device=dev)}
        rgbs, feats = [], []
        axes = torch.cat([torch.eye(3, device=dev), -torch.eye(3, device=dev)])
        for s in range(0, xyz.shape[0], 2**16):
            x = xyz[s:s + 2**16]
            u, inside = self.contraction(x)
            with self._autocast(torch.device(dev)):
                _, geo = self.field.geometry(u, inside)
                col = torch.stack([self.field.rgb(geo, a.expand(x.shape[0], 3), None) for a in axes]).mean(0)
                rgbs.append(col.float())
                if teacher is not None:
                    feats.append(self.features(u, [teacher])[teacher].float())
        out["rgb"] = torch.cat(rgbs) if rgbs else torch.zeros(0, 3, device=dev)
        if teacher is not None:
            dim = {t.name: t.dim for t in self.targets}[teacher]
            out["features"] = torch.cat(feats) if feats else torch.zeros(0, dim, device=dev)
        return out

    def _voxel_size(self, x: Tensor, res: int) -> Tensor:
        """Canonical-space edge length ``[M]`` of a grid voxel at ``x`` (contracted grids stretch outside)."""
        if self.contraction_kind == "aabb":
            lo, hi = self.contraction.box(x)
            return torch.full_like(x[:, 0], float((hi - lo).mean()) / res)
        r = x.abs().amax(-1).clamp_min(1.0)
        return 4.0 / res * r * r  # d|x|/d|y| = 1 / (2 - |y|)^2 = |x|^2 outside the unit cube

    # ------------------------------------------------------------------ FeatureField: training
    def _pixel_rays(self, data: TrainData) -> PixelRays:
        """The training cameras' rays (undistortion solved once per pixel for distorted photos)."""
        if self._rays is None or self._rays.cameras is not data.cameras:
            self._rays = PixelRays(data.cameras, max_bytes=data.views.lookup_bytes)
        return self._rays

    def sample_batch(self, data: TrainData, step: int, generator: torch.Generator) -> dict[str, Any]:
        """``cfg.rays_per_batch`` random pixels of random views of the step's pool (every training view when
        they are resident; :mod:`featurefield.data.view_source`).

        Returns:
            ``{"image": [R] int64 training view, "pixels": [R, 2] (u, v) pixel positions, "origins", "directions"
            [R, 3], "rgb": [R, 3] target colour, "features": {teacher: [R, D] bilinear teacher features}}``.
        """
        return self.sample_rank_batch(data, step, generator, 0, 1)

    def sample_rank_batch(self, data: TrainData, step: int, generator: torch.Generator, rank: int, ranks: int
                          ) -> dict[str, Any]:
        """Rank ``rank``'s rays of a step on ``ranks`` ranks: the pixels of all ranks are drawn at once (as one
        batch ``ranks`` times larger would be) and only this rank's slice is made into rays. Every rank holds
        the same pool (a function of the step), so the ranks draw different rays of the same views."""
        pool = data.views.pool(step)
        dev, held = pool.ids.device, pool.images.device
        P, H, W = len(pool.ids), data.views.height, data.views.width
        R = self.config.rays_per_batch
        K = self.config.feature_spill if self.spills else 1
        M = max(1, R // (K * K))  # patches of K x K rays (single rays without a spill model)
        mine = slice(rank * M, (rank + 1) * M)
        slot = torch.randint(P, (M * ranks,), generator=generator)[mine]
        u = torch.randint(W, (M * ranks,), generator=generator)[mine]
        v = torch.randint(H, (M * ranks,), generator=generator)[mine]
        slot, u, v = _to_device(torch.stack([slot, u, v]), dev)  # one copy, and no wait for the GPU
        centres = torch.stack([u, v], -1).float() + 0.5
        if K > 1:
            du, dv = patch_offsets(K, tuple(self.targets[0].grid), (H, W), dev)
            u = (u[:, None] + du).clamp(0, W - 1).flatten()  # [M * K * K], patch-major
            v = (v[:, None] + dv).clamp(0, H - 1).flatten()
            slot = slot.repeat_interleave(K * K)
        image = pool.ids[slot]
        pixels = torch.stack([u, v], -1).float() + 0.5
        origins, directions = self._pixel_rays(data)(image, u, v)
        rgb = pool.images[slot.to(held), v.to(held), u.to(held)].to(dev).float() / 255.0
        batch = {"image": image, "pixels": pixels, "origins": origins, "directions": directions,
                 "rgb": rgb, "features": {}, "patch": K}
        centre_slots = slot[:: K * K]
        for t in self.targets:
            batch["features"][t.name] = self._lookup(pool.features[t.name], centre_slots, centres, H, W).to(dev)
        return batch

    @staticmethod
    def _lookup(maps: Tensor, image: Tensor, pixels: Tensor, H: int, W: int) -> Tensor:
        """Bilinear lookup of ``maps [N, h, w, D]`` at image pixels ``[R, 2]`` -> ``[R, D]`` fp32."""
        dev = maps.device
        image, pixels = image.to(dev), pixels.to(dev)
        h, w = maps.shape[1:3]
        x = (pixels[:, 0] / W * w - 0.5).clamp(0, w - 1)
        y = (pixels[:, 1] / H * h - 0.5).clamp(0, h - 1)
        x0, y0 = x.floor().long().clamp(max=w - 1), y.floor().long().clamp(max=h - 1)
        x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        f00, f01 = maps[image, y0, x0].float(), maps[image, y0, x1].float()
        f10, f11 = maps[image, y1, x0].float(), maps[image, y1, x1].float()
        return (f00 * (1 - fx) + f01 * fx) * (1 - fy) + (f10 * (1 - fx) + f11 * fx) * fy

    def training_loss(self, batch: dict[str, Any], data: TrainData, step: int) -> dict[str, Tensor]:
        cfg = self.config
        bg = data.background.to(batch["origins"]) if data.background is not None else None
        H, W = data.views.height, data.views.width
        screen = torch.stack([batch["pixels"][:, 0] / W, batch["pixels"][:, 1] / H], -1)  # no host-to-device copy
        out = self.render_rays(batch["origins"], batch["directions"], batch["image"], step=step, background=bg, screen=screen,
                               teachers=[t.name for t in self.targets], normals=cfg.predict_normals)
        rgb_loss = F.mse_loss(out["rgb"], batch["rgb"])
        losses: dict[str, Tensor] = {"rgb": rgb_loss, "psnr": psnr_from_mse(rgb_loss.detach())}
        total = rgb_loss
        K = batch.get("patch", 1)
        for t in self.targets:
            pred = out["features"][t.name]  # [R, D]
            if t.name in self.spills:  # each patch blurred by the spill kernel -> [R / K^2, D]
                weights = self.spills[t.name].kernel().reshape(1, K * K, 1).to(pred.dtype)
                pred = (pred.reshape(-1, K * K, pred.shape[-1]) * weights).sum(1)
            fl = F.mse_loss(pred, batch["features"][t.name])
            losses[f"feature/{t.name}"] = fl
            total = total + cfg.feature_loss_weight * t.weight * fl
        inter = interlevel_loss(out["edges_list"], out["weights_list"])
        dist = distortion_loss(out["edges_list"][-1], out["weights_list"][-1])
        losses["interlevel"], losses["distortion"] = inter, dist
        total = total + cfg.interlevel_loss_weight * inter + cfg.distortion_loss_weight * dist
        if cfg.predict_normals:
            ori = orientation_loss(out["weights"], out["grad_normals"], batch["directions"])
            pn = normal_consistency_loss(out["weights"], out["grad_normals"].detach(), out["pred_normals"])
            losses["orientation"], losses["pred_normal"] = ori, pn
            total = total + cfg.orientation_loss_weight * ori + cfg.pred_normal_loss_weight * pn
        losses["loss"] = total
        return losses

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam per parameter group, as Nerfacto/F3RM: ``proposal_networks``, ``fields``, ``feature_field``."""
        if self._optimizers is None:
            groups = {"proposal_networks": self.proposals.parameters(), "fields": self.field.parameters(),
                      "feature_field": self.features.parameters()}
            # fused (one kernel for all parameters), on CPU too: there 10x faster than the default loop
            self._optimizers = {k: torch.optim.Adam(list(p), lr=self.config.lr, eps=self.config.adam_eps, fused=True)
                                for k, p in groups.items()}
            if len(self.spills):
                self._optimizers["spills"] = torch.optim.Adam(list(self.spills.parameters()), lr=self.config.lr_spill,
                                                              fused=True)
        return self._optimizers

    def schedulers(self) -> dict[str, Any]:
        if self._schedulers is None:
            steps = self.config.lr_decay_steps or self.max_steps
            self._schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, _exp_decay(self.config.lr, self.config.lr_final, steps))
                                for k, o in self.optimizers().items() if k != "spills"}
        return self._schedulers

    def after_optimizer_step(self, step: int) -> None:
        """Records progress (the proposal anneal and update schedule follow the step number)."""
        self.steps_done.fill_(step + 1)

    def stats(self) -> dict[str, float]:
        return {"anneal": self._anneal(int(self.steps_done))}
