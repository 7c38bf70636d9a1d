"""Settings of the NeRF feature field (F3RM = Nerfacto + a hash-grid feature field).

The defaults are the published architecture. ``preset`` scales it down for CPU runs: ``"auto"``
uses the full model on CUDA and :data:`SMALL` on CPU; ``"small"`` forces the small model. A preset only
replaces settings still at their full-model default, so an explicit ``--nerf.xxx`` always wins.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class NerfConfig:
    """Nerfacto + F3RM feature field.

    Attributes:
        preset: ``"auto"`` (full on CUDA, small on CPU), ``"full"`` or ``"small"``.
        contraction: ``"auto"`` (``"aabb"`` when the scene has bounds, else ``"linf"``), ``"linf"``
            (unbounded: L-infinity contraction into a radius-2 box) or ``"aabb"`` (bounded scenes).
        hashgrid_backend: ``"auto"`` (Triton on CUDA), ``"torch"`` or ``"triton"``.
        table_dtype: dtype the hash tables are read in by the kernels (parameters stay fp32).
        num_levels .. max_res: radiance hash grid.
        hidden_dim, num_layers, geo_feat_dim: geometry MLP (density + geometry feature).
        hidden_dim_color, num_layers_color, appearance_dim, sh_degree: colour MLP.
        proposal_*: the proposal density fields and sampler; num_nerf_samples: final samples per ray.
        feature_*: the feature field (positions detached) and its MSE loss weight.
        feature_spill: size (odd, in teacher-grid cells) of a learnt blur through which the field is
            compared with the teacher (``fields/spill.py``): the teacher's features spill past object
            outlines, where a radiance field has no density to carry them. Training then draws its rays
            in square patches one teacher cell apart (as many rays per step) and compares the blurred
            features of each patch with the teacher at its centre. 0 = off (F3RM's model). All teachers
            must share one grid.
        lr_spill: Adam learning rate of the spill kernels' logits (constant).
        feature_background: the teacher's features seen through empty space, composited behind the
            field's like a background colour: ``"image"`` (a learnt map on each teacher's grid, read at the
            ray's position in the image: a ViT's features of an empty background vary across the frame
            with its position embeddings) or ``"constant"`` (one learnt vector per teacher). Opaque scenes
            (accumulation ~1 everywhere) do not see it.
        predict_normals: add the predicted-normal head and the orientation / normal-consistency losses.
        rays_per_batch: rays per training step.
        lr, lr_final, lr_decay_steps, adam_eps: Adam with Nerfacto's exponential decay
            (``lr_decay_steps`` 0: decay over the run's steps).
        mixed_precision: bf16 autocast for the MLPs on CUDA.
        render_chunk: rays per chunk when rendering a full view.
        near_plane, far_plane: ray bounds for unbounded scenes.
        point_threshold: opacity above which grid points count as content in ``points_with_features``.
    """

    preset: Literal["auto", "full", "small"] = "auto"
    contraction: Literal["auto", "linf", "aabb"] = "auto"
    hashgrid_backend: Literal["auto", "torch", "triton"] = "auto"
    table_dtype: Literal["float32", "float16"] = "float32"
    # radiance field
    num_levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_res: int = 16
    max_res: int = 2048
    hidden_dim: int = 64
    num_layers: int = 2
    geo_feat_dim: int = 15
    hidden_dim_color: int = 64
    num_layers_color: int = 3
    appearance_dim: int = 32
    sh_degree: int = 4
    # proposal sampler
    num_proposal_samples: tuple[int, ...] = (256, 96)
    num_nerf_samples: int = 48
    proposal_levels: int = 5
    proposal_log2_hashmap_size: int = 17
    proposal_max_res: tuple[int, ...] = (128, 256)
    proposal_hidden_dim: int = 16
    proposal_update_every: int = 5
    proposal_warmup: int = 5000
    proposal_anneal_slope: float = 10.0
    proposal_anneal_steps: int = 1000
    single_jitter: bool = True
    interlevel_loss_weight: float = 1.0
    distortion_loss_weight: float = 0.002
    # feature field (F3RM)
    feature_levels: int = 12
    feature_features_per_level: int = 8
    feature_log2_hashmap_size: int = 19
    feature_base_res: int = 16
    feature_max_res: int = 128
    feature_pe_frequencies: int = 6
    feature_hidden_dim: int = 64
    feature_num_layers: int = 2
    feature_loss_weight: float = 1e-3
    feature_spill: int = 0
    lr_spill: float = 2e-2
    feature_background: Literal["image", "constant"] = "image"
    # normals
    predict_normals: bool = False
    orientation_loss_weight: float = 1e-4
    pred_normal_loss_weight: float = 1e-3
    # optimisation
    rays_per_batch: int = 8192
    lr: float = 1e-2
    lr_final: float = 1e-4
    lr_decay_steps: int = 200_000
    adam_eps: float = 1e-15
    mixed_precision: bool = True
    # rendering
    render_chunk: int = 16384
    near_plane: float = 0.05
    far_plane: float = 1000.0
    point_threshold: float = 0.5

    def __post_init__(self) -> None:
        # JSON round trips (config.json, checkpoints) turn tuples into lists
        self.num_proposal_samples = tuple(int(v) for v in self.num_proposal_samples)
        self.proposal_max_res = tuple(int(v) for v in self.proposal_max_res)

    @staticmethod
    def small(**overrides) -> NerfConfig:
        """The CPU-sized model (demo scene in minutes on 2 cores)."""
        return dataclasses.replace(NerfConfig(preset="full"), **{**SMALL, **overrides, "preset": "small"})

    def resolved(self, device: torch.device | str) -> NerfConfig:
        """The concrete settings for ``device`` (preset applied), with ``preset="full"`` or ``"small"``."""
        preset = self.preset
        if preset == "auto":
            preset = "full" if torch.device(device).type == "cuda" else "small"
        if preset == "full":
            return dataclasses.replace(self, preset="full")
        default = NerfConfig()
        changes = {k: v for k, v in SMALL.items() if getattr(self, k) == getattr(default, k)}
        return dataclasses.replace(self, preset="small", **changes)


#: what the ``small`` preset changes (CPU runs).
SMALL: dict = {
    "num_levels": 8,
    "log2_hashmap_size": 15,
    "max_res": 256,
    "hidden_dim": 32,
    "hidden_dim_color": 32,
    "appearance_dim": 8,
    "num_proposal_samples": (32,),
    "num_nerf_samples": 16,
    "proposal_levels": 4,
    "proposal_log2_hashmap_size": 13,
    "proposal_max_res": (64,),
    "proposal_warmup": 500,
    "proposal_update_every": 2,
    "proposal_anneal_steps": 300,
    "feature_levels": 6,
    "feature_features_per_level": 4,
    "feature_log2_hashmap_size": 14,
    "feature_max_res": 64,
    "feature_pe_frequencies": 4,
    "feature_hidden_dim": 32,
    "rays_per_batch": 512,
    "lr_decay_steps": 0,
    "lr_final": 1e-2,  # no decay: a few thousand steps are all still far from converged (+2 dB at 800 steps)
    "render_chunk": 8192,
}
