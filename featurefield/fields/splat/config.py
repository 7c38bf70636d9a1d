"""Configuration of the Gaussian feature field (``--field splat``; exposed on the CLI as ``--splat.xxx``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

from gsplat.strategy import DefaultStrategy, MCMCStrategy

# the automatic MCMC budget of a scene with large views: lego at 30k steps fits 6 minutes with it
# (BENCHMARKS.md, "Densification: 3DGS-MCMC vs 3DGS's strategy")
MCMC_MIN_AUTO_CAP = 300_000
# Small views get fewer: at most one Gaussian per 2 pixels of a training view in the automatic budget, one per 4
# in a random init. On the 128 x 128 demo scene 12k Gaussians fit 7000 steps in 53 s for 28.9 dB, where 300k
# took 136 s for 28.6 dB (BENCHMARKS.md, "CPU demo"); lego (640k pixels a view) keeps 300k.
MCMC_PIXELS_PER_GAUSSIAN = 2
INIT_PIXELS_PER_GAUSSIAN = 4


@dataclass
class DefaultSettings(DefaultStrategy):
    """gsplat's DefaultStrategy (3DGS's clone, split and prune). Its step numbers are written for schedule_steps
    and scale with the run length.

    Attributes:
        prune_opa: Gaussians below this opacity are pruned.
        grow_grad2d: Gaussians whose mean screen-space gradient exceeds this are cloned or split.
        grow_scale3d: of those, the ones smaller than this (relative to the scene) are cloned, larger ones split.
        grow_scale2d: Gaussians larger than this on screen (relative to the image) are split.
        prune_scale3d: Gaussians larger than this (relative to the scene) are pruned.
        prune_scale2d: Gaussians larger than this on screen are pruned (until refine_scale2d_stop_iter).
        refine_scale2d_stop_iter: the step to stop using screen-space sizes at; 0 never uses them.
        refine_start_iter: the step densification starts at.
        refine_stop_iter: the step densification stops at.
        reset_every: steps between opacity resets.
        refine_every: steps between densifications.
        pause_refine_after_reset: steps after an opacity reset without densification.
        absgrad: densify by absolute screen-space gradients (AbsGS; the rasterizer then keeps them).
        revised_opacity: the revised opacity of clones from arXiv:2404.06109.
        verbose: print each densification's counts.
        key_for_gradient: whose gradient drives densification: means2d (3DGS) or gradient_2dgs (2DGS).
    """


@dataclass
class MCMCSettings(MCMCStrategy):
    """gsplat's MCMCStrategy (3DGS-MCMC: dead Gaussians relocated, new ones added up to a budget, position noise).
    Its step numbers are written for schedule_steps and scale with the run length.

    Attributes:
        cap_max: the Gaussian budget; 0 is max(min(300k, pixels of a training view / 2), 3 x the initial Gaussians),
            at most max_gaussians when that is set.
        noise_lr: scale of the position noise (times the means' learning rate).
        refine_start_iter: the step relocation and growth start at.
        refine_stop_iter: the step they stop at.
        refine_every: steps between relocations.
        min_opacity: Gaussians below this opacity count as dead and are relocated.
        verbose: print each relocation's counts.
    """

    cap_max: int = 0


@dataclass
class SplatConfig:
    """Gaussian feature field settings. Step counts are for schedule_steps and scale with the run length.

    Attributes:
        sh_degree: max spherical-harmonic degree of the colours (0 to 3).
        sh_degree_interval: raise the active degree by one every this many (scaled) steps.
        embed_dim: per-Gaussian embedding size E; the decoders map it to each teacher's dimension. The default 14
            makes training's colour and embedding pass 17 channels, a size gsplat compiles a kernel for, so it
            rasterizes in one piece (16 would be 19 channels, drawn as 16 + 3: lego trained 17% longer).
        init: where the Gaussians start: auto (the scene's points; else, in a bounded synthetic scene, random in its
            box; else points triangulated from the known poses with pycolmap, falling back to frustum), points,
            triangulate, frustum (samples through the training frustums between the near and far bounds, uniform in
            inverse depth, coloured by their pixel) or random (the box, or a ball around the centre).
        init_points_random: Gaussians of a random or frustum start, at most one per 4 pixels of a training view (and
            at most cpu_max_init on the CPU).
        cpu_max_init: that count's cap when training on the CPU.
        max_gaussians: stop growing above this count, and bound the automatic MCMC budget; 0 is no cap.
        cpu_max_gaussians: the same cap when training on the CPU (the torch rasterizer is slow).
        init_opacity: opacity of the initial Gaussians.
        init_scale: factor on the initial Gaussians' size (their nearest neighbours' distance).
        strategy: densification: default (3DGS's clone, split and prune; --splat.default.*), mcmc (3DGS-MCMC:
            relocation and noise within a budget; --splat.mcmc.*; needs gsplat on CUDA) or auto (mcmc where gsplat
            rasterizes on CUDA, else default; the run's config records the choice).
        default: gsplat's DefaultStrategy settings.
        mcmc: gsplat's MCMCStrategy settings.
        schedule_steps: the run length the strategies' step numbers are written for (30k, as 3DGS).
        reset_min_interval: skip opacity resets when the scaled reset_every is shorter than this (a short run has no
            time to recover from them).
        mcmc_opacity_reg: weight of 3DGS-MCMC's opacity regularizer (mcmc only).
        mcmc_scale_reg: weight of 3DGS-MCMC's scale regularizer (mcmc only).
        lr_means: Adam learning rate of the means at the start (times the scene's scale).
        lr_means_final: the means' learning rate at the end of its exponential decay.
        lr_scales: Adam learning rate of the log-scales.
        lr_quats: Adam learning rate of the rotations.
        lr_opacities: Adam learning rate of the opacity logits.
        lr_sh0: Adam learning rate of the base colour.
        lr_shN: Adam learning rate of the higher spherical-harmonic coefficients.
        lr_embedding: Adam learning rate of the embeddings.
        lr_decoder: Adam learning rate of the decoders.
        lr_spill: Adam learning rate of the spill kernels' logits (feature_spill).
        decoder: linear (a 1x1 convolution; queries fold into it) or mlp (a small non-linear head).
        decoder_hidden: hidden width of the mlp decoder.
        feature_loss: l1, or l1+cos (L1 plus a cosine term).
        feature_weight: weight of the feature losses (times each teacher's weight).
        feature_render: how training draws the embedding: joint (channels of the colour pass at full resolution;
            feature gradients reach the geometry and its densification, as Feature 3DGS) or separate (its own pass at
            feature_supersample times the teacher's grid; densification sees colour only). On lego, separate trains 15-20%
            faster and fits colour better, joint reproduces the teacher's features better.
        feature_geometry_weight: how strongly the feature losses move the Gaussians' geometry and drive their
            densification, relative to the colour loss: 1 is Feature 3DGS's joint pass; towards 0, the features barely
            move the geometry. The embeddings and decoders learn alike at any value above 0.
        feature_supersample: the separate pass's resolution in multiples of the largest teacher grid.
        feature_detach: in the separate pass, the features do not move the Gaussians (off: they move them as in the
            joint pass, but still do not drive densification).
        feature_spill: size (odd, in teacher-grid cells) of a learnt blur applied to the embedding where the field is
            compared with the teacher (training and fidelity metrics): it explains the teacher's features spilling
            past object outlines in 2D, instead of with halo Gaussians. 0 is off (Feature 3DGS's model).
        feature_background: what the teacher sees through empty space where the field is compared with it: image (a
            learnt map on each teacher's grid, added where the render is transparent: a ViT's features of an empty
            background vary across the frame with its position embeddings) or constant (the decoder's value of an
            empty embedding, as Feature 3DGS). Full-resolution reads (renders, queries) do not use it.
        lr_background: Adam learning rate of the background maps.
        ssim_lambda: weight of D-SSIM in the colour loss.
        random_background: composite the targets on a random colour each step (scenes with alpha).
        alpha_weight: weight of an L1 loss between the rendered opacity and the images' alpha (scenes with alpha; 0 is
            off): empty space seen against the background is kept empty, instead of holding background-coloured
            Gaussians that show from other directions.
        appearance: per-training-image affine colour transforms applied to the render before the colour loss (exposure,
            white balance of phone captures), kept centred over the images, so renders of new views are the
            plain render.
        lr_appearance: Adam learning rate of the appearance transforms.
        pose_refine: learn a small SE(3) correction per training camera with the scene (SfM poses are off by a
            little); test cameras are used as given.
        lr_pose: Adam learning rate of the pose corrections (translation in canonical units, rotation in radians).
        rasterizer: auto (gsplat on CUDA, else torch), torch or gsplat.
        packed: gsplat's packed mode (less memory for large scenes, a little slower).
        antialiased: gsplat's antialiased rasterization (Mip-Splatting's 2D filter).
        near_plane: Gaussians nearer than this to the camera are culled (canonical units).
        far_plane: Gaussians farther than this are culled (canonical units).
    """

    sh_degree: int = 3
    sh_degree_interval: int = 1000
    embed_dim: int = 14
    init: Literal["auto", "points", "triangulate", "frustum", "random"] = "auto"
    init_points_random: int = 100_000
    cpu_max_init: int = 4_000
    max_gaussians: int = 0
    cpu_max_gaussians: int = 6_000
    init_opacity: float = 0.1
    init_scale: float = 1.0
    strategy: Literal["auto", "default", "mcmc"] = "auto"
    default: DefaultSettings = field(default_factory=DefaultSettings)
    mcmc: MCMCSettings = field(default_factory=MCMCSettings)
    schedule_steps: int = 30_000
    reset_min_interval: int = 500
    mcmc_opacity_reg: float = 0.01
    mcmc_scale_reg: float = 0.01
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_embedding: float = 2.5e-3
    lr_decoder: float = 1e-3
    lr_spill: float = 2e-2
    decoder: Literal["linear", "mlp"] = "linear"
    decoder_hidden: int = 64
    feature_loss: Literal["l1", "l1+cos"] = "l1"
    feature_weight: float = 1.0
    feature_render: Literal["joint", "separate"] = "joint"
    feature_geometry_weight: float = 1.0
    feature_supersample: int = 4
    feature_detach: bool = True
    feature_spill: int = 0
    feature_background: Literal["image", "constant"] = "image"
    lr_background: float = 5e-3
    ssim_lambda: float = 0.2
    random_background: bool = False
    alpha_weight: float = 0.0
    appearance: bool = False
    lr_appearance: float = 1e-3
    pose_refine: bool = False
    lr_pose: float = 1e-4
    rasterizer: Literal["auto", "torch", "gsplat"] = "auto"
    packed: bool = False
    antialiased: bool = False
    near_plane: float = 0.01
    far_plane: float = 1e10

    def scaled(self, step: int, max_steps: int) -> int:
        """A schedule step written for ``schedule_steps`` mapped onto a run of ``max_steps``."""
        if max_steps >= self.schedule_steps:
            return step
        return max(1, round(step * max_steps / self.schedule_steps))

    def resolved(self, *, gsplat_on_cuda: bool, initial_gaussians: int,
                 pixels_per_view: int | None = None) -> SplatConfig:
        """This config with ``strategy="auto"`` and an automatic MCMC cap replaced by what they mean here.

        ``pixels_per_view`` (the training views' median width x height) scales the automatic budget down for
        small views; None (a field built without its scene) leaves it at the large views' 300k.
        """
        strategy = self.strategy
        if strategy == "auto":
            strategy = "mcmc" if gsplat_on_cuda else "default"
        cap = self.mcmc.cap_max
        if strategy == "mcmc" and cap <= 0:
            budget = MCMC_MIN_AUTO_CAP
            if pixels_per_view is not None:
                budget = min(budget, pixels_per_view // MCMC_PIXELS_PER_GAUSSIAN)
            cap = max(budget, 3 * initial_gaussians)
            if self.max_gaussians > 0:
                cap = min(cap, self.max_gaussians)
        return replace(self, strategy=strategy, mcmc=replace(self.mcmc, cap_max=cap))

    @property
    def absgrad(self) -> bool:
        """Whether the rasterizer keeps absolute screen-space gradients (the default strategy's ``absgrad``)."""
        return self.strategy == "default" and self.default.absgrad

    def scaled_strategy(self, max_steps: int) -> DefaultStrategy | MCMCStrategy:
        """The strategy's settings (``"auto"`` read as ``"default"``) with its step numbers mapped onto a run of
        ``max_steps`` (densification at least every 10 steps, or as written when that is rarer)."""
        chosen = self.mcmc if self.strategy == "mcmc" else self.default
        steps = {k: self.scaled(getattr(chosen, k), max_steps) for k in _SCHEDULE_STEPS if getattr(chosen, k, 0) > 0}
        steps["refine_every"] = max(self.scaled(chosen.refine_every, max_steps), min(chosen.refine_every, 10))
        return replace(chosen, **steps)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> SplatConfig:
        """Rebuild from :meth:`to_dict` (settings unknown to this version are dropped; a config written before
        the strategies were nested has its flat ``refine_*`` / ``mcmc_*`` settings moved into them)."""
        d = _nest_flat_strategy(dict(d))
        known = {f.name for f in fields(SplatConfig)}
        out = {k: v for k, v in d.items() if k in known}
        for name, cls in (("default", DefaultSettings), ("mcmc", MCMCSettings)):
            if isinstance(out.get(name), dict):
                names = {f.name for f in fields(cls)}
                out[name] = cls(**{k: v for k, v in out[name].items() if k in names})
        return SplatConfig(**out)


#: strategy settings counted in steps, scaled with the run length (``refine_every`` has its own rule)
_SCHEDULE_STEPS = ("refine_start_iter", "refine_stop_iter", "reset_every", "refine_scale2d_stop_iter",
                   "pause_refine_after_reset")

#: settings of configs written before the strategies were nested: flat name -> (strategy, its name there)
_FLAT_STRATEGY = {
    "refine_start": (("default", "refine_start_iter"), ("mcmc", "refine_start_iter")),
    "refine_stop": (("default", "refine_stop_iter"),),
    "refine_every": (("default", "refine_every"), ("mcmc", "refine_every")),
    "reset_every": (("default", "reset_every"),),
    "grow_grad2d": (("default", "grow_grad2d"),),
    "prune_opacity": (("default", "prune_opa"), ("mcmc", "min_opacity")),
    "absgrad": (("default", "absgrad"),),
    "mcmc_cap_max": (("mcmc", "cap_max"),),
    "mcmc_noise_lr": (("mcmc", "noise_lr"),),
}


def _nest_flat_strategy(d: dict) -> dict:
    """A config dict of an older run with its flat strategy settings moved into ``default`` / ``mcmc``."""
    flat = {k: d.pop(k) for k in list(d) if k in _FLAT_STRATEGY}
    if not flat:
        return d
    nested = {"default": {**asdict(DefaultSettings()), **d.get("default", {})},
              "mcmc": {**asdict(MCMCSettings()), **d.get("mcmc", {})}}
    for k, v in flat.items():
        for strategy, name in _FLAT_STRATEGY[k]:
            nested[strategy][name] = v
    return {**d, **nested}
