"""Text queries: LERF relevancy maths, folding exactness, masks, 3D selection and PLY export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featurefield.data.scene import Normalization
from featurefield.errors import FeatureFieldError
from featurefield.query.text import (
    CANONICAL_NEGATIVES,
    export_selection_ply,
    lerf_relevancy,
    negative_phrases,
    point_relevancy,
    relevancy_map,
    text_scores,
    text_similarity,
)
from tests.toyfield import ring_cameras, two_spheres


class FakeClip:
    """A text teacher whose phrases map to fixed directions of the toy feature space."""

    name = "toy"
    has_text = True

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table

    def encode_text(self, texts):
        return torch.stack([self.table[t] for t in texts])


def _phrase_table(field):
    # "red ball" points at sphere 0's mean feature, the canonical negatives at the background feature
    # and random directions, "blue ball" at sphere 1.
    pts = field.points_with_features("toy")
    f = F.normalize(pts["features"], dim=-1)
    table = {"red ball": f[pts["sphere"] == 0].mean(0), "blue ball": f[pts["sphere"] == 1].mean(0)}
    g = torch.Generator().manual_seed(1)
    for n in CANONICAL_NEGATIVES:
        table[n] = F.normalize(field.b, dim=0) + 0.3 * torch.randn(field.dim, generator=g)
    return table


def test_lerf_relevancy_is_min_of_pairwise_softmax():
    pos = torch.rand(3, 7, 5) * 2 - 1
    neg = torch.rand(4, 7, 5) * 2 - 1
    literal = torch.stack([torch.softmax(10 * torch.stack([pos, n.expand_as(pos)], -1), -1)[..., 0] for n in neg]).amin(0)
    assert torch.allclose(lerf_relevancy(pos, neg), literal, atol=1e-6)
    assert torch.allclose(lerf_relevancy(pos, neg, temperature=3.0),
                          torch.sigmoid(3.0 * (pos - neg.amax(0, keepdim=True))))


def test_text_similarity_is_cosine():
    feats = torch.randn(6, 4, 5)
    text = torch.randn(2, 6)
    sims = text_similarity(feats, text)
    ref = F.cosine_similarity(feats[None], text[:, :, None, None], dim=1)
    assert sims.shape == (2, 4, 5) and torch.allclose(sims, ref, atol=1e-5)


def test_negative_phrases_dedup_and_exclude_positives():
    negs = negative_phrases(["stuff", "mug"], ["cup", "cup", "object"])
    assert negs == ["cup", "object", "things", "texture"]
    assert negative_phrases(["mug"], ["cup"], canonical=False) == ["cup"]


@pytest.mark.parametrize("mode", ["folded", "embedding"])
def test_folded_modes_equal_full_decode(mode):
    field = two_spheres()
    cam = ring_cameras(1, size=24)
    text = torch.randn(5, field.dim)
    full, _ = text_scores(field, cam, "toy", text, mode="full")
    folded, r = text_scores(field, cam, "toy", text, mode=mode)
    assert folded.shape == (5, 24, 24)
    assert torch.allclose(folded, full, atol=1e-4), (folded - full).abs().max()
    if mode == "folded":  # the field rendered r + T projected channels, not D
        assert r.projected.shape[-1] <= field.E + 1 + 5 and r.embedding is None


def test_nonlinear_field_uses_full_decode_and_refuses_folding():
    field = two_spheres(linear=False)
    cam = ring_cameras(1, size=16)
    text = torch.randn(2, field.dim)
    auto, _ = text_scores(field, cam, "toy", text)
    full, _ = text_scores(field, cam, "toy", text, mode="full")
    assert torch.equal(auto, full)
    with pytest.raises(ValueError, match="linear decoder"):
        text_scores(field, cam, "toy", text, mode="folded")


def test_relevancy_map_finds_the_object_and_masks_it():
    field = two_spheres()
    clip = FakeClip(_phrase_table(field))
    cam = ring_cameras(1, size=32)
    q = relevancy_map(field, cam, clip, ["red ball"])
    assert q.negatives == list(CANONICAL_NEGATIVES)
    hit = q.render.extras["hit"]
    mask = q.masks(0.5)[0]
    iou = (mask & (hit == 0)).sum() / (mask | (hit == 0)).sum()
    assert iou > 0.8, float(iou)
    # a user negative equal to the object's own direction kills relevancy on it
    q2 = relevancy_map(field, cam, clip, ["red ball"], ["blue ball"])
    assert q2.negatives[0] == "blue ball"
    assert q2.relevancy[0][hit == 1].mean() < q.relevancy[0][hit == 0].mean()


def test_text_errors_are_one_line_user_errors():
    field = two_spheres()
    cam = ring_cameras(1, size=8)

    class NoText:
        name, has_text = "sam", False

    with pytest.raises(FeatureFieldError, match="no text encoder"):
        relevancy_map(field, cam, NoText(), ["mug"])
    clip = FakeClip(_phrase_table(field))
    with pytest.raises(FeatureFieldError, match="empty"):
        relevancy_map(field, cam, clip, ["  "])
    with pytest.raises(FeatureFieldError, match="at least one phrase"):
        relevancy_map(field, cam, clip, [])


def test_point_relevancy_selects_the_object_and_exports_world_ply(tmp_path):
    from plyfile import PlyData

    field = two_spheres()
    clip = FakeClip(_phrase_table(field))
    pq = point_relevancy(field, clip, ["blue ball"], ["red ball"])
    keep = pq.select(0.5)
    sphere = pq.points["sphere"]
    assert keep[sphere == 1].float().mean() > 0.9 and keep[sphere == 0].float().mean() < 0.1
    norm = Normalization(torch.tensor([10.0, -2.0, 3.0]), 0.25)
    path = export_selection_ply(tmp_path / "sel.ply", pq.points, keep, norm, extra={"relevancy": pq.relevancy[0]})
    v = PlyData.read(str(path))["vertex"]
    xyz = torch.tensor([list(v["x"]), list(v["y"]), list(v["z"])]).T
    assert len(xyz) == int(keep.sum())
    assert torch.allclose(xyz, norm.to_world(pq.points["xyz"][keep]), atol=1e-4)
    assert (torch.tensor(list(v["relevancy"])) > 0.5).all()


def test_point_relevancy_of_a_field_with_no_points_is_empty(monkeypatch):
    """An early or empty field (a NeRF whose density is nowhere above the threshold) selects nothing, without error."""
    field = two_spheres()
    clip = FakeClip(_phrase_table(field))
    full = field.points_with_features
    monkeypatch.setattr(field, "points_with_features",
                        lambda teacher=None, max_points=1_000_000: {k: v[:0] for k, v in full(teacher).items()})
    pq = point_relevancy(field, clip, ["blue ball"], ["red ball"])
    assert pq.relevancy.shape == (1, 0) and not pq.select(0.5).any()


def test_gaussian_field_folded_query_matches_full_decode():
    from featurefield.fields.base import TeacherTarget
    from featurefield.fields.splat.config import SplatConfig
    from featurefield.fields.splat.model import GaussianField

    torch.manual_seed(0)
    n = 300
    field = GaussianField(SplatConfig(embed_dim=6, sh_degree=0, rasterizer="torch"), [TeacherTarget("clip", 10, (4, 4))], n)
    with torch.no_grad():
        p = field.params
        p["means"].copy_(torch.randn(n, 3) * 0.3)
        p["scales"].fill_(-2.5)
        p["opacities"].fill_(1.0)
        p["sh0"].copy_(torch.rand(n, 1, 3))
        p["embedding"].copy_(torch.randn(n, 6))
        field.decoders["clip"].bias.copy_(torch.randn(10))
    field.eval()
    cam = ring_cameras(1, size=20, radius=2.5, elevation=0.5)
    text = torch.randn(5, 10)
    full, _ = text_scores(field, cam, "clip", text, mode="full")
    folded, r = text_scores(field, cam, "clip", text, mode="folded")
    emb, _ = text_scores(field, cam, "clip", text, mode="embedding")
    assert r.embedding is None and r.projected.shape[-1] == 7 + 5
    assert torch.allclose(folded, full, atol=1e-3) and torch.allclose(emb, full, atol=1e-3)
    fast, r_fast = text_scores(field, cam, "clip", text, colour=False)  # auto: embedding channels alone
    assert r_fast.rgb is None and r_fast.depth is None and r_fast.embedding.shape[-1] == 6
    assert torch.allclose(fast, emb, atol=1e-5)
