"""The Gaussian feature field: 3D Gaussians with SH colours and a learnable per-Gaussian embedding.

Per teacher, a decoder maps the rasterized ``E``-channel embedding map to the teacher's ``D``
channels. Decoding happens late: the embedding map is first resampled to the teacher's grid
``h x w``, then decoded (a 1x1 convolution, i.e. a linear map, or a small MLP behind a flag). With
the linear decoder, a query ``P [D, K]`` folds into the embedding space (``W @ P``) so text queries
and PCA pictures rasterize as ``K`` channels.

Rendering rasterizes colour, the embedding and expected depth in one pass (channels
``[rgb, embedding, depth]``). Training does the same by default; ``feature_render="separate"`` draws
the embedding in a second pass at a few times the teacher's grid instead, so densification follows
colour alone (and, with ``feature_detach``, features do not move the Gaussians). Densification uses
gsplat's strategies on one shared fused Adam: ``"mcmc"`` where gsplat rasterizes on CUDA (it needs gsplat's
relocation kernel), ``"default"`` (3DGS's clone/split/prune, pure PyTorch) elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.fields import losses
from featurefield.fields.base import FeatureField, Render, TeacherTarget, TrainData
from featurefield.fields.spill import FeatureSpill
from featurefield.fields.splat import rasterize_gsplat, rasterize_torch
from featurefield.fields.splat.capture import AppearanceCompensation, PoseRefinement
from featurefield.fields.splat.config import INIT_PIXELS_PER_GAUSSIAN, SplatConfig
from featurefield.fields.splat.init import initial_points
from featurefield.fields.splat.resample import resample, resample_hwc
from featurefield.fields.splat.sh import num_sh_bases, rgb_to_sh, sh_to_colors, sh_to_rgb
from featurefield.fields.splat.views import View, views_of
from featurefield.metrics import psnr_from_mse

GAUSSIAN_PARAMS = ("means", "scales", "quats", "opacities", "sh0", "shN", "embedding")


def _make_decoder(embed_dim: int, dim: int, config: SplatConfig) -> nn.Module:
    if config.decoder == "linear":
        return nn.Linear(embed_dim, dim)
    if config.decoder == "mlp":
        return nn.Sequential(nn.Linear(embed_dim, config.decoder_hidden), nn.ReLU(), nn.Linear(config.decoder_hidden, dim))
    raise FeatureFieldError(f"unknown splat decoder {config.decoder!r}; use --splat.decoder linear or mlp")


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, its gradient multiplied by ``scale`` on the way back."""
    return x * scale + (x * (1.0 - scale)).detach()


def knn_scale(points: Tensor, k: int = 3, chunk: int = 4096) -> Tensor:
    """RMS distance of each point to its ``k`` nearest neighbours: ``[N, 3] -> [N]`` (chunked)."""
    n = len(points)
    if n <= 1:
        return torch.full((n,), 0.01, device=points.device)
    k = min(k, n - 1)
    out = []
    for s in range(0, n, chunk):
        d = torch.cdist(points[s:s + chunk], points)
        out.append(d.topk(k + 1, largest=False).values[:, 1:].pow(2).mean(-1).sqrt())
    return torch.cat(out).clamp_min(1e-7)


class GaussianField(FeatureField):
    """3D Gaussians carrying a learnable embedding, with one decoder per teacher.

    Parameters (``self.params``): ``means [P, 3]``, ``scales [P, 3]`` (log), ``quats [P, 4]``
    (w, x, y, z), ``opacities [P]`` (logit), ``sh0 [P, 1, 3]``, ``shN [P, K-1, 3]``,
    ``embedding [P, E]``.
    """

    kind = "splat"

    def __init__(self, config: SplatConfig, targets: list[TeacherTarget], num_gaussians: int, *,
                 scene_scale: float = 1.0, max_steps: int = 30_000, background: list[float] | None = None,
                 train_views: int = 0) -> None:
        super().__init__()
        self.config = config
        self.targets = list(targets)
        self.scene_scale = float(scene_scale)
        self.max_steps = int(max_steps)
        self.background_list = None if background is None else [float(x) for x in background]
        n, E, K = num_gaussians, config.embed_dim, num_sh_bases(config.sh_degree)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        self.params = nn.ParameterDict({
            "means": nn.Parameter(torch.zeros(n, 3)),
            "scales": nn.Parameter(torch.zeros(n, 3)),
            "quats": nn.Parameter(quats),
            "opacities": nn.Parameter(torch.zeros(n)),
            "sh0": nn.Parameter(torch.zeros(n, 1, 3)),
            "shN": nn.Parameter(torch.zeros(n, K - 1, 3)),
            "embedding": nn.Parameter(torch.zeros(n, E)),
        })
        self.decoders = nn.ModuleDict({t.name: _make_decoder(E, t.dim, config) for t in self.targets})
        self.spills = nn.ModuleDict({t.name: FeatureSpill(config.feature_spill) for t in self.targets}
                                    if config.feature_spill > 0 else {})
        self.backgrounds = nn.ParameterDict({t.name: nn.Parameter(torch.zeros(*t.grid, t.dim)) for t in self.targets}
                                            if config.feature_background == "image" else {})
        self.train_views = int(train_views)  # per-training-image models (appearance, poses) need their count
        self.appearance = AppearanceCompensation(train_views) if config.appearance and train_views else None
        self.pose_refine = PoseRefinement(train_views) if config.pose_refine and train_views else None
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None
        self._schedulers: dict[str, Any] | None = None
        self._strategy, self._strategy_state = self._build_strategy()
        self._perm: Tensor | None = None
        self._cursor = 0
        self._info: dict[str, Any] | None = None
        self._views: tuple[Cameras, list[View]] | None = None  # training views, prepared once
        self._feature_views: dict[int, View] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, scene, targets: list[TeacherTarget], config: SplatConfig | None = None, max_steps: int = 30_000,
               device: str | torch.device = "cpu") -> GaussianField:
        """Initialise Gaussians for a scene (canonical frame).

        From the scene's sparse points when present (``init`` "auto"/"points"); else uniformly at random
        inside a bounded synthetic scene's box; else from points triangulated from the known poses or
        samples through the training frustums (:mod:`featurefield.fields.splat.init`; ``init`` "auto",
        "triangulate", "frustum"). ``init="random"`` without a box fills a ball around the centre.
        ``strategy="auto"`` and an automatic MCMC cap are resolved here for
        ``device``; the field's config holds the result.
        """
        config = config or SplatConfig()
        device = torch.device(device)
        if config.strategy == "mcmc" and device.type != "cuda":
            raise FeatureFieldError("--splat.strategy mcmc needs gsplat's CUDA relocation kernel; "
                                    "train on a CUDA device or use --splat.strategy default (or auto)")
        if not 0 <= config.sh_degree <= 3:
            raise FeatureFieldError(f"--splat.sh-degree must be within 0..3, got {config.sh_degree}")
        if not config.feature_geometry_weight > 0:
            raise FeatureFieldError("--splat.feature-geometry-weight must be above 0 (the embeddings learn through it), "
                                    f"got {config.feature_geometry_weight}; for features that never move the geometry "
                                    "use --splat.feature-render separate")
        if config.feature_spill < 0 or (config.feature_spill and config.feature_spill % 2 == 0):
            raise FeatureFieldError(f"--splat.feature-spill must be 0 (off) or an odd kernel size, got {config.feature_spill}")
        cams = scene.canonical_cameras()
        centers = cams.centers
        scene_scale = float((centers - centers.mean(0)).norm(dim=-1).max()) * 1.1 or 1.0
        points = scene.canonical_points()
        train = cams[scene.train] if scene.train else cams
        pixels_per_view = int((train.width * train.height).median())  # sizes the automatic Gaussian counts
        name = getattr(scene, "source", None) or getattr(scene, "name", "scene")
        if config.init in ("auto", "points") and points is not None and len(points.xyz) > 0:
            xyz, rgb = points.xyz.float(), points.rgb.float().clamp(0, 1)
        elif config.init == "points":
            raise FeatureFieldError(f"{name}: --splat.init points but the scene has no sparse points; "
                                    "use --splat.init random or a scene with an SfM model")
        else:
            n = min(config.init_points_random, max(1, pixels_per_view // INIT_PIXELS_PER_GAUSSIAN))
            if device.type != "cuda":
                n = min(n, config.cpu_max_init)
            bounds = scene.canonical_bounds()
            if bounds is not None and config.init in ("auto", "random"):  # a bounded synthetic scene: its box
                lo, hi = bounds[0].float(), bounds[1].float()
                xyz, rgb = lo + (hi - lo) * torch.rand(n, 3), torch.rand(n, 3)
            elif config.init == "random":
                d = torch.randn(n, 3)
                xyz = d / d.norm(dim=-1, keepdim=True) * torch.rand(n, 1).pow(1 / 3) * 0.5 * scene_scale
                rgb = torch.rand(n, 3)
            else:  # poses without points: triangulate them, else sample the training frustums
                xyz, rgb, _ = initial_points(scene, config.init, n)
        gsplat_on_cuda = device.type == "cuda" and config.rasterizer != "torch" and rasterize_gsplat.available()
        config = config.resolved(gsplat_on_cuda=gsplat_on_cuda, initial_gaussians=len(xyz), pixels_per_view=pixels_per_view)
        field = cls(config, targets, len(xyz), scene_scale=scene_scale, max_steps=max_steps,
                    background=None if scene.background is None else list(scene.background),
                    train_views=len(scene.train or range(len(scene))))
        init_opacity, init_scale = config.init_opacity, config.init_scale
        if config.strategy == "mcmc":  # MCMC starts denser-looking and smaller (as gsplat's MCMC recipe)
            init_opacity, init_scale = 0.5, 0.1 * config.init_scale
        with torch.no_grad():
            p = field.params
            p["means"].copy_(xyz)
            p["scales"].copy_(torch.log(knn_scale(xyz.to(device)).cpu() * init_scale)[:, None].expand(-1, 3))
            p["quats"].copy_(F.normalize(torch.rand(len(xyz), 4), dim=-1))
            p["opacities"].fill_(math.log(init_opacity / (1 - init_opacity)))
            p["sh0"].copy_(rgb_to_sh(rgb)[:, None, :])
        return field.to(device)

    def _build_strategy(self):
        """gsplat's strategy for the config (``"auto"`` is resolved by :meth:`create`; a field built directly
        reads it as ``"default"``), its step numbers scaled to the run, and its fresh state."""
        from featurefield.fields.splat.strategy import LeanMCMCStrategy, SyncFreeDefaultStrategy

        cfg = self.config
        if cfg.strategy == "mcmc":
            cap = cfg.resolved(gsplat_on_cuda=True, initial_gaussians=self.num_gaussians).mcmc.cap_max  # 0: its rule
            strategy = LeanMCMCStrategy(**asdict(replace(cfg.scaled_strategy(self.max_steps), cap_max=cap)))
            return strategy, strategy.initialize_state()
        strategy = SyncFreeDefaultStrategy(**asdict(cfg.scaled_strategy(self.max_steps)))
        return strategy, strategy.initialize_state(scene_scale=self.scene_scale)

    # ------------------------------------------------------------------ properties
    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    def default_background(self) -> Tensor:
        bg = self.background_list if self.background_list is not None else [0.0, 0.0, 0.0]
        return torch.tensor(bg, dtype=torch.float32, device=self.device)

    def _use_gsplat(self) -> bool:
        r = self.config.rasterizer
        if r == "torch":
            return False
        if r == "gsplat":
            if self.device.type != "cuda":
                raise FeatureFieldError("--splat.rasterizer gsplat needs a CUDA device; use auto or torch on CPU")
            return True
        return self.device.type == "cuda" and rasterize_gsplat.available()

    # ------------------------------------------------------------------ rasterization
    def _rgb(self, view: View, sh_degree: int, gsplat: bool) -> Tensor:
        p = self.params
        coeffs = torch.cat([p["sh0"], p["shN"]], 1)
        campos = view.campos
        if gsplat:
            from gsplat import spherical_harmonics

            return torch.clamp_min(spherical_harmonics(sh_degree, p["means"] - campos, coeffs) + 0.5, 0.0)
        return sh_to_colors(sh_degree, p["means"], campos, coeffs)

    def _view(self, camera: Cameras | View) -> View:
        if isinstance(camera, View):
            return camera
        if len(camera) != 1:
            raise ValueError("render takes one camera")
        return views_of(camera, self.device)[0]

    def rasterize(self, camera: Cameras | View, extra: Tensor | None = None, background: Tensor | None = None,
                  sh_degree: int | None = None, rgb: bool = True, depth: bool = True, detach_geometry: bool = False
                  ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor, dict]:
        """One rasterization pass of ``[rgb, extra, depth]`` channels.

        Args:
            camera: one canonical camera (or a prepared :class:`View`).
            extra: ``[P, X]`` per-Gaussian channels rendered with the colour (embeddings, projections).
            background: ``[3]`` colour (extra channels get 0 behind the content).
            sh_degree: SH degree to evaluate (default: all).
            rgb: render colour (False renders only ``extra`` and depth).
            depth: render the expected depth (training skips it: one channel less to rasterize).
            detach_geometry: no gradient reaches means, rotations, scales or opacities.
        Returns:
            rgb ``[H, W, 3]`` (or None), extra ``[H, W, X]`` (or None), depth ``[H, W, 1]`` (or None),
            alpha ``[H, W, 1]``, and the rasterizer's info dict (``means2d``, ``radii``...).
        """
        view = self._view(camera)
        use_gsplat = self._use_gsplat()
        p = self.params
        deg = self.config.sh_degree if sh_degree is None else sh_degree
        chans, bgs = [], []
        if rgb:
            chans.append(self._rgb(view, deg, use_gsplat))
            bgs.append(self.default_background() if background is None else background.to(self.device, torch.float32))
        if extra is not None:
            chans.append(extra)
            bgs.append(extra.new_zeros(extra.shape[-1]))
        if not chans:
            raise ValueError("nothing to render")
        colors = torch.cat(chans, -1) if len(chans) > 1 else chans[0]
        bg = torch.cat(bgs)
        W, H = view.width, view.height
        means, quats, scales, opacities = p["means"], p["quats"], p["scales"], p["opacities"]
        if detach_geometry:
            means, quats, scales, opacities = means.detach(), quats.detach(), scales.detach(), opacities.detach()
        args = (means, quats, torch.exp(scales), torch.sigmoid(opacities), colors, view.viewmat, view.K, W, H, bg)
        kw = dict(near_plane=self.config.near_plane, far_plane=self.config.far_plane, expected_depth=depth)
        try:
            if use_gsplat:
                out, alpha, info = rasterize_gsplat.rasterize(*args, **kw, packed=self.config.packed,
                                                              absgrad=self.config.absgrad,
                                                              antialiased=self.config.antialiased)
            else:
                out, alpha, info = rasterize_torch.rasterize(*args, **kw)
        except torch.cuda.OutOfMemoryError as e:
            raise FeatureFieldError(
                f"out of GPU memory rasterizing {self.num_gaussians} Gaussians at {W}x{H}; lower "
                "--splat.max-gaussians (the Gaussian budget), --splat.embed-dim or the image size (--downscale), "
                "or use --splat.packed"
            ) from e
        rgb_map = out[..., :3] if rgb else None
        end = out.shape[-1] - 1 if depth else out.shape[-1]
        extra_map = out[..., (3 if rgb else 0):end] if extra is not None else None
        return rgb_map, extra_map, (out[..., -1:] if depth else None), alpha, info

    # ------------------------------------------------------------------ protocol: rendering
    def render(self, camera: Cameras, *, background: Tensor | None = None, features: bool = True,
               projection: tuple[str, Tensor, Tensor] | None = None, colour: bool = True) -> Render:
        """Render colour, depth, alpha, the embedding map and optionally folded query channels.

        With ``colour=False`` only the embedding/query channels are rasterized (a query's fast path).
        """
        extras, n_emb = [], 0
        if features and self.config.embed_dim > 0:
            extras.append(self.params["embedding"])
            n_emb = self.config.embed_dim
        fold = None
        if projection is not None:
            teacher, P, b = projection
            lin = self.linear_decoder(teacher)
            if lin is not None:
                Wd, bd = lin
                P = P.to(self.device, torch.float32)
                extras.append(self.params["embedding"] @ (Wd @ P))
                fold = bd @ P + b.to(self.device, torch.float32)
            elif n_emb == 0:
                extras.append(self.params["embedding"])
                n_emb = self.config.embed_dim
        extra = torch.cat(extras, -1) if extras else None
        if extra is None and not colour:
            raise ValueError("render(colour=False) needs features=True or a projection")
        rgb, ex, depth, alpha, info = self.rasterize(camera, extra, background, rgb=colour, depth=colour)
        r = Render(rgb=rgb, depth=depth, alpha=alpha, extras={"means2d": info["means2d"], "radii": info["radii"]})
        if ex is not None and n_emb:
            r.embedding = ex[..., :n_emb]
        if projection is not None:
            teacher, P, b = projection
            if fold is not None:
                r.projected = ex[..., n_emb:] + fold
            else:
                feats = self.decode(r, teacher)  # [D, H, W]
                r.projected = feats.permute(1, 2, 0) @ P.to(feats) + b.to(feats)
            if not features:
                r.embedding = None
        return r

    def decode(self, render: Render, teacher: str, grid: tuple[int, int] | None = None, *,
               as_teacher: bool = False, spill: bool = True) -> Tensor:
        """Teacher features ``[D, h, w]``: resample the embedding map to ``grid`` first, then decode
        (with ``as_teacher`` and a ``grid``, through the teacher's learnt spill, if any, in between).

        Under ``torch.autocast("cuda", dtype=torch.float16)`` the decode runs in fp16, the teacher cache's own
        precision: 256-D features at 1080p come 1.5x faster than in fp32 (BENCHMARKS.md, "1080p decoded features").
        """
        if teacher not in self.decoders:
            raise FeatureFieldError(f"this field has no decoder for teacher {teacher!r}; it was trained with "
                                    f"{', '.join(self.decoders) or 'no teachers'}")
        if render.embedding is None:
            raise ValueError("render has no embedding; render with features=True")
        emb = render.embedding.permute(2, 0, 1)  # [E, H, W]
        if grid is not None:
            emb = resample(emb, grid)
        emb = emb.permute(1, 2, 0)  # [h, w, E]
        if not (as_teacher and grid is not None):
            return self.decoders[teacher](emb).permute(2, 0, 1)
        alpha = None if render.alpha is None else resample_hwc(render.alpha, tuple(grid))
        return self.as_teacher_sees(teacher, emb, alpha, spill=spill).permute(2, 0, 1)

    def as_teacher_sees(self, teacher: str, emb: Tensor, alpha: Tensor | None, spill: bool = True) -> Tensor:
        """The field's prediction of the teacher's features ``[h, w, D]`` at its grid, from the embedding
        ``[h, w, E]`` and the opacity ``[h, w, 1]`` resampled there: through the learnt spill and over the
        learnt background map, where the field has them (the opacity's gradient is not taken: the
        teacher's model does not move the Gaussians)."""
        if spill and teacher in self.spills:
            emb = self.spills[teacher](emb)
        out = self.decoders[teacher](emb)
        if teacher in self.backgrounds and alpha is not None:
            bg = self.backgrounds[teacher]
            if bg.shape[:2] != out.shape[:2]:
                bg = resample_hwc(bg, tuple(out.shape[:2]))
            out = out + (1 - alpha.detach()) * bg
        return out

    def models_teacher_spill(self, teacher: str) -> bool:
        return teacher in self.spills

    def linear_decoder(self, teacher: str) -> tuple[Tensor, Tensor] | None:
        dec = self.decoders[teacher] if teacher in self.decoders else None
        if isinstance(dec, nn.Linear):
            return dec.weight.T, dec.bias
        return None

    @torch.no_grad()
    def points_with_features(self, teacher: str | None = None, max_points: int = 1_000_000) -> dict[str, Tensor]:
        """One entry per Gaussian (the most opaque ``max_points``), canonical frame."""
        p = self.params
        opacity = torch.sigmoid(p["opacities"])
        ids = torch.arange(self.num_gaussians, device=self.device)
        if len(ids) > max_points:
            ids = opacity.topk(max_points).indices.sort().values
        out = {"xyz": p["means"][ids], "rgb": sh_to_rgb(p["sh0"][ids, 0]).clamp(0, 1), "opacity": opacity[ids], "ids": ids}
        if teacher is not None:
            if teacher not in self.decoders:
                raise FeatureFieldError(f"this field has no decoder for teacher {teacher!r}")
            out["features"] = self.decoders[teacher](p["embedding"][ids])
        return out

    # ------------------------------------------------------------------ protocol: training
    def sample_batch(self, data: TrainData, step: int, generator: torch.Generator) -> dict[str, Any]:
        """One training view, cycling through shuffled permutations of the views."""
        return self.sample_rank_batch(data, step, generator, 0, 1)

    def sample_rank_batch(self, data: TrainData, step: int, generator: torch.Generator, rank: int, ranks: int
                          ) -> dict[str, Any]:
        """Rank ``rank``'s view of a step on ``ranks`` ranks: the views of all ranks drawn in turn (consecutive
        entries of the shuffled order), this rank's kept; streamed views read ahead are this rank's next ones."""
        batches = [self._draw(data, generator) for _ in range(ranks)]
        if data.views.lookahead:  # streamed views: this one and this rank's next are read while steps run
            upcoming = self._perm[self._cursor + rank::ranks].tolist()  # as far as the current order goes
            data.views.prefetch([batches[rank]["view"], *upcoming][:data.views.lookahead])
        return batches[rank]

    def _draw(self, data: TrainData, generator: torch.Generator) -> dict[str, Any]:
        n = len(data.cameras)
        if self._perm is None or len(self._perm) != n or self._cursor >= n:
            self._perm = torch.randperm(n, generator=generator)
            self._cursor = 0
        view = int(self._perm[self._cursor])
        self._cursor += 1
        batch: dict[str, Any] = {"view": view}
        if self.config.random_background and data.views.has_alpha:
            batch["background"] = torch.rand(3, generator=generator)
        return batch

    def active_sh_degree(self, step: int) -> int:
        interval = self.config.scaled(self.config.sh_degree_interval, self.max_steps)
        return min(step // max(interval, 1), self.config.sh_degree)

    def _train_view(self, data: TrainData, i: int) -> View:
        if self._views is None or self._views[0] is not data.cameras:
            self._views, self._feature_views = (data.cameras, views_of(data.cameras, self.device)), {}
        return self._views[1][i]

    def feature_pass_size(self, view: View) -> tuple[int, int] | None:
        """``(width, height)`` of the separate training pass for the embedding, or None for one joint pass.

        With ``feature_render="separate"`` the embedding is drawn at ``feature_supersample`` times the
        largest teacher grid (at most the image size), in a pass of its own.
        """
        if self.config.feature_render != "separate" or not self.targets or self.config.embed_dim <= 0:
            return None
        k = self.config.feature_supersample
        s = min(1.0, max(max(t.grid[0] * k / view.height, t.grid[1] * k / view.width) for t in self.targets))
        return max(1, round(view.width * s)), max(1, round(view.height * s))

    def _render_embedding(self, i: int, view: View, size: tuple[int, int]) -> Tensor:
        """The embedding map ``[h, w, E]`` of training view ``i`` in its own pass (geometry detached by default)."""
        fview = self._feature_views.get(i) if self.pose_refine is None else view.resized(*size)
        if fview is None:
            fview = self._feature_views[i] = view.resized(*size)
        _, emb, _, _, _ = self.rasterize(fview, self.params["embedding"], rgb=False, depth=False,
                                         detach_geometry=self.config.feature_detach)
        return emb

    def training_loss(self, batch: dict[str, Any], data: TrainData, step: int) -> dict[str, Tensor]:
        """RGB L1 + lambda D-SSIM, plus per-teacher feature losses at each teacher's grid."""
        cfg, dev = self.config, self.device
        i = batch["view"]
        view = self._train_view(data, i)
        if self.pose_refine is not None:
            view = self.pose_refine(view, i)
        train_view = data.views.view(i)
        gt = train_view.image.to(dev).float() / 255.0  # [H, W, 3]
        known_bg = data.background.to(dev).float() if data.background is not None else torch.zeros(3, device=dev)
        bg = known_bg
        if "background" in batch and train_view.alpha is not None:
            bg = batch["background"].to(dev).float()
            a = train_view.alpha.to(dev).float()[..., None] / 255.0
            gt = gt + (bg - known_bg) * (1 - a)  # re-composite: rgb*a + bg*(1-a)
        with_features = bool(self.targets) and cfg.embed_dim > 0
        size = self.feature_pass_size(view) if with_features else None
        joint = with_features and size is None
        rgb, emb, _, alpha, info = self.rasterize(view, self.params["embedding"] if joint else None, bg,
                                                  sh_degree=self.active_sh_degree(step), depth=False)
        if self.appearance is not None:
            rgb = self.appearance(rgb, i)
        if size is not None:
            emb = self._render_embedding(i, view, size)
        if with_features and cfg.feature_geometry_weight != 1.0:
            emb = scale_gradient(emb, cfg.feature_geometry_weight)
        if info["means2d"].requires_grad:
            info["means2d"].retain_grad()  # the strategy's pre-backward hook
        self._info = info
        l1 = losses.l1(rgb, gt)
        ssim = losses.ssim(rgb, gt)
        total = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim)
        out: dict[str, Tensor] = {"rgb": l1.detach(), "ssim": ssim.detach(),
                                  "psnr": psnr_from_mse(F.mse_loss(rgb.detach().float(), gt.float()))}
        if cfg.alpha_weight > 0 and train_view.alpha is not None:
            alpha_gt = train_view.alpha.to(dev).float()[..., None] / 255.0  # [H, W, 1]
            alpha_l1 = losses.l1(alpha, alpha_gt)
            total = total + cfg.alpha_weight * alpha_l1
            out["alpha"] = alpha_l1.detach()
        for t in self.targets:
            target = train_view.features[t.name].to(dev, non_blocking=True).float()  # [D, h, w]
            at_grid = resample_hwc(emb, target.shape[-2:])  # [h, w, E]
            alpha_grid = resample_hwc(alpha, target.shape[-2:]) if t.name in self.backgrounds else None
            pred = self.as_teacher_sees(t.name, at_grid, alpha_grid)  # [h, w, D]
            fl = losses.feature_loss(pred.permute(2, 0, 1), target, cfg.feature_loss, dim=0)
            total = total + cfg.feature_weight * t.weight * fl
            out[f"feature/{t.name}"] = fl.detach()
        if cfg.strategy == "mcmc":
            p = self.params
            total = total + cfg.mcmc_opacity_reg * torch.sigmoid(p["opacities"]).mean()
            total = total + cfg.mcmc_scale_reg * torch.exp(p["scales"]).mean()
        out["loss"] = total
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam: a group per Gaussian parameter (gsplat's strategies edit them) and one for the decoders.

        One ``step()`` (fused) instead of an optimizer per parameter keeps the host's share of a
        training step small.
        """
        if self._optimizers is None:
            cfg = self.config
            lrs = {"means": cfg.lr_means * self.scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
                   "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "embedding": cfg.lr_embedding}
            groups = [{"params": [self.params[name]], "lr": lrs[name], "eps": 1e-15, "name": name}
                      for name in GAUSSIAN_PARAMS]
            decoder_params = list(self.decoders.parameters())
            if decoder_params:
                groups.append({"params": decoder_params, "lr": cfg.lr_decoder, "eps": 1e-8, "name": "decoders"})
            if len(self.spills):
                groups.append({"params": list(self.spills.parameters()), "lr": cfg.lr_spill, "eps": 1e-8, "name": "spills"})
            if len(self.backgrounds):
                groups.append({"params": list(self.backgrounds.parameters()), "lr": cfg.lr_background, "eps": 1e-8,
                               "name": "backgrounds"})
            if self.appearance is not None:
                groups.append({"params": list(self.appearance.parameters()), "lr": cfg.lr_appearance, "eps": 1e-15,
                               "name": "appearance"})
            if self.pose_refine is not None:
                groups.append({"params": list(self.pose_refine.parameters()), "lr": cfg.lr_pose, "eps": 1e-15,
                               "name": "poses"})
            self._optimizers = {"adam": torch.optim.Adam(groups, fused=True)}  # fused on CPU too: 10x the default loop
        return self._optimizers

    def schedulers(self) -> dict[str, Any]:
        """The means LR decays exponentially to ``lr_means_final`` over the run; the others stay."""
        from featurefield.fields.splat.strategy import GroupLambdaLR

        if self._schedulers is None:
            cfg = self.config
            gamma = (cfg.lr_means_final / cfg.lr_means) ** (1.0 / max(self.max_steps, 1))
            opt = self.optimizers()["adam"]
            factors = [(lambda s: gamma**s) if g["name"] == "means" else (lambda s: 1.0) for g in opt.param_groups]
            self._schedulers = {"lr": GroupLambdaLR(opt, factors)}
        return self._schedulers

    def _gaussian_optimizers(self) -> dict[str, Any]:
        from featurefield.fields.splat.strategy import group_optimizers

        return group_optimizers(self.optimizers()["adam"], GAUSSIAN_PARAMS)

    def share_statistics(self, all_reduce) -> None:
        """Densification statistics summed (maxed) over the ranks as they accumulate (MCMC keeps none: its
        decisions follow the opacities, the same on every rank)."""
        self._strategy.reduce = all_reduce

    def after_step(self, step: int, batch: Any, losses: dict[str, Tensor]) -> None:
        """Post-backward: nothing to do yet; the gradients of ``means2d`` are read after the optimizer step."""

    def after_optimizer_step(self, step: int) -> None:
        """Densify / prune / relocate with the gsplat strategy (gsplat's order: after the optimizer step)."""
        info, self._info = self._info, None
        if info is None:
            return
        from gsplat.strategy import MCMCStrategy

        params, opts = self.params, self._gaussian_optimizers()
        if isinstance(self._strategy, MCMCStrategy):
            lr = opts["means"].param_groups[0]["lr"]
            self._strategy.step_post_backward(params, opts, self._strategy_state, step, info, lr=lr)
            return
        key = "means2d"
        grad = info[key].absgrad if self.config.absgrad else info[key].grad
        if grad is None:
            return
        cap = self.config.max_gaussians if self.device.type == "cuda" else self.config.cpu_max_gaussians
        grow = self._strategy.grow_grad2d
        if cap and self.num_gaussians >= cap:
            self._strategy.grow_grad2d = float("inf")  # at the cap: prune only
        try:
            self._strategy.step_post_backward(params, opts, self._strategy_state, step, info, packed=self.config.packed)
        finally:
            self._strategy.grow_grad2d = grow
        self._maybe_reset_opacity(step, params, opts)

    def _maybe_reset_opacity(self, step: int, params, opts) -> None:
        """3DGS's periodic opacity reset (to twice the prune threshold) while densifying.

        gsplat 1.5.3's DefaultStrategy means to do this but its test ``step % every == 0 & step > 0``
        parses as a chained comparison that is never true, so the field does it here; resetting twice
        (should gsplat fix it) is harmless, the reset only lowers opacities.
        """
        from gsplat.strategy.ops import reset_opa

        s = self._strategy
        if s.reset_every < self.config.reset_min_interval:
            return
        if 0 < step < s.refine_stop_iter and step % s.reset_every == 0:
            reset_opa(params=params, optimizers=opts, state=self._strategy_state, value=s.prune_opa * 2.0)

    def stats(self) -> dict[str, float]:
        return {"gaussians": float(self.num_gaussians)}

    # ------------------------------------------------------------------ persistence
    def get_extra_state(self) -> dict:
        """Densification statistics and the view permutation, so a resumed run continues identically."""
        return {"strategy_state": dict(self._strategy_state), "perm": self._perm, "cursor": self._cursor}

    def set_extra_state(self, state: dict) -> None:
        dev = self.device
        fresh = self._build_strategy()[1]
        fresh.update(state.get("strategy_state") or {})
        self._strategy_state = {k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in fresh.items()}
        self._perm = state.get("perm")
        self._cursor = int(state.get("cursor", 0))

    # ------------------------------------------------------------------ capabilities
    @classmethod
    def capabilities(cls) -> frozenset[str]:
        return frozenset({"subset"})

    def subset(self, ids: Tensor, invert: bool = False) -> GaussianField:
        """A copy keeping the Gaussians ``ids [K]`` (or all but them, ``invert``), rebuilt through
        :meth:`from_config` with the smaller parameter tensors; densification statistics are filtered alike."""
        n = self.num_gaussians
        mask = torch.zeros(n, dtype=torch.bool, device=self.device)
        mask[ids.to(self.device)] = True
        if invert:
            mask = ~mask

        def cut(v):
            return v[mask] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v

        state = {}
        for k, v in self.state_dict().items():
            if k.startswith("params."):
                state[k] = cut(v)
            elif k.endswith("_extra_state") and isinstance(v, dict):
                state[k] = {**v, "strategy_state": {a: cut(b) for a, b in v.get("strategy_state", {}).items()}}
            else:
                state[k] = v
        return type(self).from_config(self.config_dict(), state).to(self.device).eval()

    def export(self, normalization, folder, *, name: str | None = None, teacher: str | None = None,
               max_points: int = 1_000_000, decoders: bool | str = True) -> list:
        """A standard 3DGS PLY ``<name or "splat">.ply`` with the embeddings as extra properties, and the decoders
        beside it or shared (``decoders``, see :meth:`FeatureField.export`; :func:`~featurefield.fields.splat.ply.export_splat`);
        every teacher's, so ``teacher`` and ``max_points`` do not apply."""
        from featurefield.fields.splat.ply import export_splat

        return list(export_splat(self, normalization, folder, name or "splat", decoders=decoders))

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"config": self.config.to_dict(), "targets": [asdict(t) for t in self.targets],
                "scene_scale": self.scene_scale, "max_steps": self.max_steps, "background": self.background_list,
                "train_views": self.train_views}

    @classmethod
    def from_config(cls, config: dict, state: dict[str, Tensor]) -> GaussianField:
        """Rebuild with the checkpoint's Gaussian count, then load ``state``."""
        targets = [TeacherTarget(t["name"], int(t["dim"]), tuple(t["grid"]), float(t.get("weight", 1.0)))
                   for t in config["targets"]]
        means = state.get("params.means")
        if means is None:
            raise FeatureFieldError("checkpoint has no Gaussian parameters (params.means); it is not a splat run")
        settings = {"feature_background": "constant", **config["config"]}  # runs from before the map
        field = cls(SplatConfig.from_dict(settings), targets, int(means.shape[0]),
                    scene_scale=config.get("scene_scale", 1.0), max_steps=config.get("max_steps", 30_000),
                    background=config.get("background"), train_views=config.get("train_views", 0))
        field = field.to(means.device)
        field.load_state_dict(state)
        return field

    def _apply(self, fn, *args, **kwargs):
        # keep the strategy state (plain tensors outside the module) on the module's device
        out = super()._apply(fn, *args, **kwargs)
        self._strategy_state = {k: (fn(v) if isinstance(v, Tensor) else v) for k, v in self._strategy_state.items()}
        return out
