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
    """Nerfacto + F3RM feature field. Defaults are the published model's; where a setting lists a small value,
    the small preset (the CPU's) uses that one unless the setting is given.

    Attributes:
        preset: auto (full on CUDA, small on the CPU), full or small.
        contraction: auto (aabb when the scene has bounds, else linf), linf (unbounded scenes: an L-infinity
            contraction into a radius-2 box) or aabb (bounded scenes).
        hashgrid_backend: auto (Triton on CUDA, else torch), torch or triton.
        table_dtype: the type the kernels read the hash tables in (the parameters stay float32).
        num_levels: levels of the radiance field's hash grid (small: 8).
        features_per_level: features per level of the radiance hash grid.
        log2_hashmap_size: log2 of the radiance hash grid's table size per level (small: 15).
        base_res: resolution of the radiance hash grid's coarsest level.
        max_res: resolution of the radiance hash grid's finest level (small: 256).
        hidden_dim: width of the density MLP (small: 32).
        num_layers: hidden layers of the density MLP.
        geo_feat_dim: size of the geometry feature the density MLP hands to the colour MLP.
        hidden_dim_color: width of the colour MLP (small: 32).
        num_layers_color: hidden layers of the colour MLP.
        appearance_dim: size of the per-image appearance embedding (small: 8).
        sh_degree: bands of the spherical-harmonic encoding of the view direction (its size is the square).
        num_proposal_samples: samples per ray of each proposal round (small: 32).
        num_nerf_samples: samples per ray of the radiance field, placed by the proposals (small: 16).
        proposal_levels: hash-grid levels of each proposal density field (small: 4).
        proposal_log2_hashmap_size: log2 of each proposal grid's table size per level (small: 13).
        proposal_max_res: finest resolution of each proposal grid, one per round (small: 64).
        proposal_hidden_dim: width of the proposal density MLPs.
        proposal_update_every: steps between proposal updates once warmed up (small: 2).
        proposal_warmup: steps over which the proposal update interval grows from 1 to its value (small: 500).
        proposal_anneal_slope: slope of the annealing that sharpens the proposal weights early in training.
        proposal_anneal_steps: steps of that annealing (small: 300).
        single_jitter: jitter all of a ray's samples by one shared offset, as Nerfacto does.
        interlevel_loss_weight: weight of the loss that makes the proposals bound the radiance field's weights.
        distortion_loss_weight: weight of Mip-NeRF 360's distortion loss (compact weights along each ray).
        feature_levels: levels of the feature field's hash grid (small: 6).
        feature_features_per_level: features per level of the feature hash grid (small: 4).
        feature_log2_hashmap_size: log2 of the feature hash grid's table size per level (small: 14).
        feature_base_res: resolution of the feature hash grid's coarsest level.
        feature_max_res: resolution of the feature hash grid's finest level (small: 64).
        feature_pe_frequencies: frequencies of the positional encoding beside the feature grid (small: 4).
        feature_hidden_dim: width of each teacher's feature MLP (small: 32).
        feature_num_layers: hidden layers of each teacher's feature MLP.
        feature_loss_weight: weight of the feature MSE loss (F3RM's 1e-3).
        feature_spill: size (odd, in teacher-grid cells) of a learnt blur through which the field is compared with the
            teacher: the teacher's features spill past object outlines, where a radiance field has no density to carry
            them. Training then draws its rays in square patches one teacher cell apart and compares the blurred
            features of each patch with the teacher at its centre. 0 is off (F3RM's model); all teachers must share
            one grid.
        lr_spill: Adam learning rate of the spill kernels' logits (constant).
        feature_background: the teacher's features seen through empty space, composited behind the field's like a
            background colour: image (a learnt map on each teacher's grid, read at the ray's position in the image: a
            ViT's features of an empty background vary across the frame with its position embeddings) or constant (one
            learnt vector per teacher). Opaque scenes do not see it.
        predict_normals: add the predicted-normal head and the orientation and normal-consistency losses.
        orientation_loss_weight: weight of the loss against normals facing away from the camera (with
            predict_normals).
        pred_normal_loss_weight: weight of the loss tying predicted normals to the density's gradient (with
            predict_normals).
        rays_per_batch: rays per training step (small: 512).
        lr: Adam's learning rate at the start.
        lr_final: the learning rate at the end of its exponential decay (small: 0.01, no decay).
        lr_decay_steps: steps of that decay; 0 decays over the run's steps (small: 0).
        adam_eps: Adam's epsilon.
        mixed_precision: bf16 autocast for the MLPs on CUDA.
        render_chunk: rays per chunk when rendering a full view (small: 8192).
        near_plane: where rays start, in canonical units.
        far_plane: where rays end in unbounded scenes, in canonical units.
        point_threshold: opacity above which grid points count as content (exports, cut-outs, 3D queries).
    """

    preset: Literal["auto", "full", "small"] = "auto"
    contraction: Literal["auto", "linf", "aabb"] = "auto"
    hashgrid_backend: Literal["auto", "torch", "triton"] = "auto"
    table_dtype: Literal["float32", "float16"] = "float32"
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
    predict_normals: bool = False
    orientation_loss_weight: float = 1e-4
    pred_normal_loss_weight: float = 1e-3
    rays_per_batch: int = 8192
    lr: float = 1e-2
    lr_final: float = 1e-4
    lr_decay_steps: int = 200_000
    adam_eps: float = 1e-15
    mixed_precision: bool = True
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
