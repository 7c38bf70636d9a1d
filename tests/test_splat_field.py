"""The Gaussian feature field: training raises PSNR, render shapes, query folding, checkpoints, densification."""

from __future__ import annotations

import torch

from featurefield.fields.registry import field_spec
from featurefield.fields.splat.model import GaussianField
from tests.toysplat import make_field, run_steps, toy_scene, train_data


@torch.no_grad()
def mean_psnr(field, scene, views):
    cams = scene.canonical_cameras()
    vals = []
    for i in views:
        r = field.render(cams[i], features=False)
        vals.append(-10 * torch.log10(((r.rgb - scene.image(i)) ** 2).mean()))
    return float(torch.stack(vals).mean())


def test_training_raises_psnr_and_feature_fit():
    torch.manual_seed(0)
    scene, feats = toy_scene()
    data = train_data(scene, feats)
    field = make_field(scene, feats, steps=80)
    before = mean_psnr(field, scene, [0, 3])
    first = run_steps(field, data, 1)
    last = run_steps(field, data, 79, start=1)
    after = mean_psnr(field, scene, [0, 3])
    assert after > before + 5 and after > 20, (before, after)
    assert last["feature/toy"] < 0.8 * first["feature/toy"]
    assert set(last) >= {"loss", "rgb", "ssim", "psnr", "feature/toy"}
    assert field_spec("splat").field_class() is GaussianField


def test_render_shapes_decode_and_projection_folding():
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=3)
    field = make_field(scene, feats, steps=10)
    with torch.no_grad():
        field.params["embedding"].normal_()  # non-trivial embeddings
    cam = scene.canonical_cameras()[0]
    P, b = torch.randn(6, 3), torch.randn(3)
    r = field.render(cam, projection=("toy", P, b))
    assert r.rgb.shape == (32, 32, 3) and r.depth.shape == (32, 32, 1) and r.alpha.shape == (32, 32, 1)
    assert r.embedding.shape == (32, 32, field.config.embed_dim) and r.projected.shape == (32, 32, 3)
    feats_full = field.decode(r, "toy")  # [D, H, W]
    assert feats_full.shape == (6, 32, 32)
    assert field.decode(r, "toy", grid=(8, 8)).shape == (6, 8, 8)
    expected = feats_full.permute(1, 2, 0) @ P + b
    assert torch.allclose(r.projected, expected, atol=1e-4)
    only = field.render(cam, features=False, projection=("toy", P, b))  # folded: K channels, no embedding
    assert only.embedding is None and torch.allclose(only.projected, expected, atol=1e-4)
    pts = field.points_with_features("toy")
    assert pts["xyz"].shape == (field.num_gaussians, 3) and pts["features"].shape == (field.num_gaussians, 6)


def test_checkpoint_round_trip_and_densification():
    torch.manual_seed(0)
    scene, feats = toy_scene(n_views=4)
    data = train_data(scene, feats)
    steps = 60  # schedule scaled to the run: refine from step 1 every 10 steps
    field = make_field(scene, feats, steps=steps, cpu_max_init=300, cpu_max_gaussians=5000)
    n0 = field.num_gaussians
    run_steps(field, data, 25)
    assert field.num_gaussians != n0  # clone/split/prune changed the count
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in field.state_dict().items()}
    opt_states = {k: o.state_dict() for k, o in field.optimizers().items()}
    restored = GaussianField.from_config(field.config_dict(), state)
    assert restored.num_gaussians == field.num_gaussians
    for k, o in restored.optimizers().items():
        o.load_state_dict(opt_states[k])
    cam = scene.canonical_cameras()[1]
    with torch.no_grad():
        a, b = field.render(cam), restored.render(cam)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.embedding, b.embedding)
    assert restored._cursor == field._cursor and torch.equal(restored._perm, field._perm)
