"""A NeRF field small enough for the CPU tests, and one optimisation step of it."""

from __future__ import annotations

#: NerfConfig settings of a field that trains in seconds on a 24 x 24 scene
TINY = dict(num_levels=4, log2_hashmap_size=12, max_res=64, hidden_dim=32, hidden_dim_color=32, appearance_dim=4,
            num_proposal_samples=(24,), proposal_max_res=(32,), proposal_levels=3, proposal_log2_hashmap_size=10,
            num_nerf_samples=12, feature_levels=3, feature_features_per_level=4, feature_log2_hashmap_size=10,
            feature_max_res=32, feature_pe_frequencies=2, feature_hidden_dim=16, rays_per_batch=256,
            proposal_warmup=50, proposal_anneal_steps=30, lr_decay_steps=0, render_chunk=4096)


def _step(fld, data, step, gen):
    """One optimisation step through the protocol; the losses as floats."""
    from featurefield.train import optimization_step

    return {k: float(v.detach()) for k, v in optimization_step(fld, data, step, gen).items()}
