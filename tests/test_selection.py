"""2D mask -> 3D selection: projection, occlusion, multi-view votes, extract/delete, subset rendering."""

from __future__ import annotations

import torch

from featurefield.query.selection import (
    delete_points,
    extract_points,
    lift_masks,
    points_in_mask,
    render_selection,
    subset_field,
    surface_depth,
    vote,
)
from tests.toyfield import ring_cameras, two_spheres


def test_vote_counts_only_views_that_see_the_point():
    inside = [torch.tensor([1, 0, 0, 1]).bool(), torch.tensor([1, 0, 0, 0]).bool(), torch.tensor([0, 0, 0, 0]).bool()]
    visible = [torch.tensor([1, 1, 0, 1]).bool(), torch.tensor([1, 1, 0, 1]).bool(), torch.tensor([0, 1, 0, 1]).bool()]
    sel = vote(inside, visible, min_votes=1, min_ratio=0.5)
    assert sel.keep.tolist() == [True, False, False, False]  # point 3: inside in 1 of 3 views that see it
    assert sel.votes.tolist() == [2, 0, 0, 1] and sel.seen.tolist() == [2, 3, 0, 3]
    assert vote(inside, visible, min_ratio=0.3).keep.tolist() == [True, False, False, True]
    assert vote(inside, visible, min_votes=2, min_ratio=0.0).keep.tolist() == [True, False, False, False]


def test_occluded_points_are_not_selected():
    field = two_spheres()
    cam = ring_cameras(1, size=48)
    pts = field.points_with_features(None)
    full = torch.ones(48, 48, dtype=torch.bool)
    depth = surface_depth(field.render(cam, features=False))
    inside, visible = points_in_mask(pts["xyz"], cam, full, depth)
    # a point is visible iff it faces the camera and nothing is in front: compare with ray casting
    uv, z = cam.project(pts["xyz"], 0)
    normal = pts["xyz"] - field.centers[pts["sphere"]]
    to_cam = cam.centers[0] - pts["xyz"]
    facing = (normal * to_cam).sum(-1) / (normal.norm(dim=-1) * to_cam.norm(dim=-1))
    assert torch.equal(inside, visible)
    assert visible.sum() > 50
    assert not (visible & (facing < -0.4)).any()  # back faces (beyond the depth tolerance) are hidden
    assert visible[facing > 0.3].float().mean() > 0.6  # most clearly front-facing points are seen
    no_occlusion = points_in_mask(pts["xyz"], cam, full, None)[1]
    assert no_occlusion.sum() > visible.sum() * 1.5


def test_lift_mask_of_one_object_across_views():
    field = two_spheres()
    cams = ring_cameras(4, size=40)
    masks = [field.render(cams[i], features=False).extras["hit"] == 1 for i in range(4)]
    sel, pts = lift_masks(field, cams, masks)
    sphere = pts["sphere"]
    # at 40 pixels a few rim points of sphere 0 fall on mask pixels of sphere 1 (pixel quantization)
    assert sel.keep[sphere == 0].float().mean() < 0.03
    one_view, _ = lift_masks(field, cams[[0]], masks[:1], points=pts)
    assert one_view.keep.sum() < sel.keep.sum()  # more views see more of the object
    seen = sel.seen > 0
    assert sel.keep[(sphere == 1) & seen].float().mean() > 0.9
    obj = extract_points(pts, sel.keep)
    rest = delete_points(pts, sel.keep)
    assert len(obj["xyz"]) + len(rest["xyz"]) == len(pts["xyz"]) and (obj["sphere"] == 1).float().mean() > 0.95
    assert torch.equal(obj["sphere"], pts["sphere"][sel.keep]) and not (rest["ids"][:, None] == obj["ids"]).any()


def _splat(n=200):
    from featurefield.fields.base import TeacherTarget
    from featurefield.fields.splat.config import SplatConfig
    from featurefield.fields.splat.model import GaussianField

    field = GaussianField(SplatConfig(embed_dim=4, sh_degree=0, rasterizer="torch"), [TeacherTarget("sam", 8, (4, 4))], n)
    with torch.no_grad():
        p = field.params
        p["means"].copy_(torch.randn(n, 3) * 0.3)
        p["scales"].fill_(-2.5)
        p["opacities"].fill_(2.0)
        p["sh0"].copy_(torch.rand(n, 1, 3))
        p["embedding"].copy_(torch.randn(n, 4))
    return field.eval()


def test_splat_subset_renders_only_the_selection():
    torch.manual_seed(0)
    field = _splat()
    cam = ring_cameras(1, size=24, radius=2.5, elevation=0.0)
    pts = field.points_with_features(None)
    everything = torch.ones(len(pts["xyz"]), dtype=torch.bool)
    same = render_selection(field, cam, pts, everything, features=True)
    ref = field.render(cam, features=True)
    assert torch.allclose(same.rgb, ref.rgb, atol=1e-5) and torch.allclose(same.embedding, ref.embedding, atol=1e-5)
    # keep the Gaussians on one side of the camera's view: the other half of the image empties
    right = cam.c2w[0, :3, 0]
    keep = (pts["xyz"] @ right) > 0.15
    only = render_selection(field, cam, pts, keep)
    deleted = render_selection(field, cam, pts, keep, invert=True)
    assert subset_field(field, pts, keep).num_gaussians == int(keep.sum())
    assert only.alpha[:, :8].max() < 0.05 and only.alpha[:, 16:].mean() > 0.1
    assert deleted.alpha[:, 16:].mean() < ref.alpha[:, 16:].mean()


def test_an_object_is_cut_out_whole_from_views_around_it():
    """One view's mask leaves the object's back and inside behind; views spread around it complete it."""
    from featurefield.query.selection import spread_views

    field = two_spheres()
    cams = ring_cameras(8, size=40)
    surface = field.points_with_features(None)
    centres = field.centers[surface["sphere"]]
    inner = centres + 0.5 * (surface["xyz"] - centres)  # inside the spheres: no view ever sees these
    points = {"xyz": torch.cat([surface["xyz"], inner]), "sphere": torch.cat([surface["sphere"], surface["sphere"]])}
    points["ids"] = torch.arange(len(points["xyz"]))
    target = points["sphere"] == 1
    masks = [field.render(cams[i], features=False).extras["hit"] == 1 for i in range(len(cams))]
    one, _ = lift_masks(field, cams[[0]], masks[:1], points=points)
    assert one.keep[target].float().mean() < 0.5  # from one view: the front of the sphere only
    views = spread_views(cams, field.centers[1], 3, start=cams.centers[0])
    assert len(views) == 3 and views[0] in (3, 4, 5)  # first the view across from the one clicked in
    sel, _ = lift_masks(field, [cams[[0]], *(cams[[i]] for i in views)], [masks[0], *(masks[i] for i in views)],
                        points=points)
    assert sel.keep[target].float().mean() > 0.9  # front, back and inside
    assert sel.keep[~target].float().mean() < 0.03  # and not the other sphere


def test_spread_views_skips_cameras_that_do_not_frame_the_point():
    from featurefield.query.selection import spread_views

    cams = ring_cameras(6, size=32)
    assert sorted(spread_views(cams, torch.zeros(3), 10)) == list(range(6))
    assert spread_views(cams, torch.tensor([0.0, 0.0, 50.0]), 3) == []  # far above every camera: framed by none
    assert len(set(spread_views(cams, torch.zeros(3), 3))) == 3
