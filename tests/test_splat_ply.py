"""Splat export: a standard 3DGS PLY in the world frame, read back equal; the field rebuilds from it."""

from __future__ import annotations

import math

import torch
from plyfile import PlyData

from featurefield.fields.splat.ply import export_splat, field_from_ply, read_splat_ply
from tests.toysplat import make_field, toy_scene


def test_export_read_back_world_frame(tmp_path):
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=3)
    field = make_field(scene, feats, steps=10, sh_degree=3, feature_spill=3)
    with torch.no_grad():
        field.params["shN"].normal_()
        field.params["embedding"].normal_()
        field.spills["toy"].logits.normal_()
        field.backgrounds["toy"].normal_()
    norm = scene.normalization
    paths = export_splat(field, norm, tmp_path)
    assert [p.name for p in paths] == ["splat.ply", "splat.decoders.pt"] and all(p.exists() for p in paths)

    names = [p.name for p in PlyData.read(str(paths[0]))["vertex"].properties]
    std = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
           + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names[: len(std)] == std and names[len(std):] == [f"emb_{i}" for i in range(field.config.embed_dim)]

    p = {k: v.detach() for k, v in field.params.items()}
    world = read_splat_ply(paths[0])
    assert torch.allclose(world["means"], norm.to_world(p["means"]), atol=1e-5)
    assert torch.allclose(world["scales"], p["scales"] - math.log(norm.scale), atol=1e-5)
    for k in ("quats", "opacities", "sh0", "shN", "embedding"):
        assert torch.allclose(world[k], p[k], atol=1e-6), k
    canon = read_splat_ply(paths[0], frame="canonical")
    assert torch.allclose(canon["means"], p["means"], atol=1e-5)

    rebuilt = field_from_ply(paths[0])
    cam = scene.canonical_cameras()[0]
    with torch.no_grad():
        a, b = field.render(cam), rebuilt.render(cam)
        assert torch.allclose(a.rgb, b.rgb, atol=1e-4)
        assert torch.allclose(field.decode(a, "toy"), rebuilt.decode(b, "toy"), atol=1e-4)
        grid = tuple(feats.shape[-2:])  # and what the teacher sees: the spill and background maps travel too
        assert torch.allclose(field.decode(a, "toy", grid, as_teacher=True), rebuilt.decode(b, "toy", grid, as_teacher=True),
                              atol=1e-4)
