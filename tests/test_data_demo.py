"""The built-in procedural demo scene: determinism, options, and labels/depth consistent with geometry."""

from __future__ import annotations

import pytest
import torch

from featurefield.data import load_scene
from featurefield.data.demo_scene import CLASS_NAMES, make_demo_scene
from featurefield.errors import FeatureFieldError

SMALL = dict(size=48, views=8, points=800)


@pytest.fixture(scope="module")
def scene():
    return make_demo_scene(seed=3, **SMALL)


def _unproject(scene, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[M, 3]`` of view ``i``'s foreground pixels (depth > 0) and their ``[M]`` flat indices."""
    cams = scene.cameras
    depth = scene.depth(i)
    grid = cams.pixel_grid(i)
    x = (grid[..., 0] - cams.cx[i]) / cams.fx[i] * depth
    y = (grid[..., 1] - cams.cy[i]) / cams.fy[i] * depth
    pc = torch.stack([x, y, depth], -1).reshape(-1, 3)
    keep = (depth.reshape(-1) > 0).nonzero().squeeze(1)
    pw = pc[keep] @ cams.c2w[i, :3, :3].T + cams.c2w[i, :3, 3]
    return pw, keep


def test_same_seed_same_scene_other_seed_differs(scene):
    again = make_demo_scene(seed=3, **SMALL)
    other = make_demo_scene(seed=4, **SMALL)
    for i in (0, 5):
        assert torch.equal(scene.image(i), again.image(i))
        assert torch.equal(scene.semantic(i), again.semantic(i))
        assert torch.equal(scene.depth(i), again.depth(i))
    assert torch.equal(scene.points.xyz, again.points.xyz)
    assert torch.equal(scene.cameras.c2w, again.cameras.c2w)
    assert not torch.equal(scene.image(1), other.image(1))
    assert scene.metadata["objects"] != other.metadata["objects"]


def test_shapes_split_and_fields(scene):
    assert len(scene) == 8 and scene.format == "demo" and scene.name == "demo"
    assert scene.split["test"] == [0] and scene.split["train"] == list(range(1, 8))
    img, depth, sem, inst = scene.image(2), scene.depth(2), scene.semantic(2), scene.instance(2)
    assert img.shape == (48, 48, 3) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert depth.shape == (48, 48) and sem.shape == (48, 48) and inst.shape == (48, 48)
    assert sem.dtype == torch.int64 and inst.dtype == torch.int64
    assert scene.class_names == CLASS_NAMES
    # every view sees the ground and at least three object classes; background is sky only
    present = set(torch.cat([scene.semantic(i).flatten() for i in range(len(scene))]).tolist())
    assert {0, 1, 2, 3, 4, 5} <= present
    assert ((depth > 0) == (sem > 0)).all()
    # instance ids map onto one class each, as listed in the metadata
    classes = scene.metadata["instance_classes"]
    for obj in scene.metadata["objects"]:
        mask = torch.cat([scene.instance(i).flatten() for i in range(len(scene))]) == obj["instance"]
        labels = torch.cat([scene.semantic(i).flatten() for i in range(len(scene))])[mask]
        assert mask.any() and (labels == obj["label"]).all() and classes[obj["instance"]] == obj["class"]
    # background pixels (away from anti-aliased edges) show the background colour
    pure_bg = (torch.nn.functional.max_pool2d((sem > 0).float()[None, None], 3, 1, 1)[0, 0] == 0)
    assert pure_bg.any() and torch.allclose(img[pure_bg], torch.ones(3))
    # points lie inside the bounds, colours in range
    pts = scene.points
    assert 500 <= len(pts.xyz) <= 1100 and pts.rgb.shape == pts.xyz.shape
    assert (pts.xyz >= scene.bounds[0] - 1e-4).all() and (pts.xyz <= scene.bounds[1] + 1e-4).all()
    assert 0 <= pts.rgb.min() and pts.rgb.max() <= 1
    # the normalization puts every camera inside the unit sphere, the content near the origin
    assert scene.canonical_cameras().centers.norm(dim=-1).max() <= 1 + 1e-5
    assert scene.canonical_bounds().mean(0).norm() < 1e-5


def test_options():
    s = make_demo_scene(seed=0, size=40, height=24, views=6, test_every=3, background=(0, 0, 0), points=300,
                        supersample=1)
    assert s.image(0).shape == (24, 40, 3) and s.depth(0).shape == (24, 40)
    assert s.split["test"] == [0, 3] and len(s) == 6 and s.background == (0.0, 0.0, 0.0)
    sky = s.semantic(1) == 0
    assert sky.any() and (s.image(1)[sky] == 0).all()
    assert s.metadata["options"]["background"] == [0.0, 0.0, 0.0] and s.metadata["options"]["views"] == 6
    with pytest.raises(FeatureFieldError):
        make_demo_scene(views=1)
    with pytest.raises(FeatureFieldError):
        make_demo_scene(size=2)
    with pytest.raises(FeatureFieldError, match="no_such_option"):
        load_scene("demo", no_such_option=1)


def test_registry_loads_demo_by_seed():
    s = load_scene("demo:5", size=32, views=4, points=200)
    direct = make_demo_scene(seed=5, size=32, views=4, points=200)
    assert s.metadata["seed"] == 5 and torch.equal(s.image(1), direct.image(1))


def test_lazy_scene_renders_each_view_on_demand_as_the_eager_one(scene):
    lazy = make_demo_scene(seed=3, lazy=True, **SMALL)
    for i in (6, 1):
        assert torch.equal(lazy.image(i), scene.image(i)) and torch.equal(lazy.depth(i), scene.depth(i))
        assert torch.equal(lazy.semantic(i), scene.semantic(i)) and torch.equal(lazy.instance(i), scene.instance(i))
    assert torch.equal(lazy.points.xyz, scene.points.xyz) and lazy.split == scene.split
    sub = lazy.images.subset([5, 2])
    assert torch.equal(sub.load(1), scene.image(2)) and sub.fingerprint(1) == lazy.images.fingerprint(2)
    assert lazy.images.fingerprint(2) != lazy.images.fingerprint(3)
    assert lazy.images.fingerprint(2) != make_demo_scene(seed=4, lazy=True, **SMALL).images.fingerprint(2)
    # nothing is rendered up front: 4,000 views of 512 x 512 would take minutes (and ~12 GB) made eagerly
    huge = make_demo_scene(seed=3, size=512, views=4000, points=200, lazy=True)
    assert len(huge) == 4000 and huge.metadata["options"]["lazy"] is True
    assert not huge.images.views._kept
    with pytest.raises(FeatureFieldError, match="lazy"):
        make_demo_scene(lazy="yes")


def test_ground_pixels_unproject_onto_the_ground_plane(scene):
    pw, keep = _unproject(scene, 1)
    ground = scene.semantic(1).reshape(-1)[keep] == CLASS_NAMES.index("ground")
    assert ground.sum() > 100
    assert pw[ground, 2].abs().max() < 1e-3
    objects = scene.semantic(1).reshape(-1)[keep] >= 2
    assert (pw[objects, 2] > -1e-3).all()  # everything stands on the table


@pytest.mark.parametrize("a,b", [(0, 1), (2, 5), (7, 3)])
def test_depth_and_labels_agree_across_views(scene, a, b):
    """Re-projecting view a's depth into view b lands on the same label where b sees that point."""
    cams = scene.cameras
    pw, keep = _unproject(scene, a)
    uv, z = cams.project(pw, b)
    H, W = scene.depth(b).shape
    u, v = torch.floor(uv[:, 0]).long(), torch.floor(uv[:, 1]).long()
    inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    u, v, z, src = u[inside], v[inside], z[inside], keep[inside]
    depth_b = scene.depth(b)[v, u]
    visible = (depth_b > 0) & ((depth_b - z).abs() < 0.03 * z)
    assert visible.sum() > 300, "the two views must share many visible pixels"
    for labels in (scene.semantics, scene.instances):
        la = labels.load(a).reshape(-1)[src[visible]]
        lb = labels.load(b)[v[visible], u[visible]]
        assert (la > 0).all()
        agree = (la == lb).float().mean()
        assert agree >= 0.97, f"only {agree:.3f} of re-projected labels agree"
    # objects are covered too, not only the ground
    la = scene.semantics.load(a).reshape(-1)[src[visible]]
    assert (la >= 2).sum() > 20
