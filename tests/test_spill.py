"""The teacher-spill model (a learnt blur on the teacher's grid) and the Gaussian field's use of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featurefield.fields.spill import FeatureSpill
from featurefield.fields.splat.resample import resample
from tests.toysplat import make_field, run_steps, toy_scene, train_data


def test_spill_starts_near_identity_and_keeps_constants():
    spill = FeatureSpill(3)
    k = spill.kernel()
    assert k.shape == (3, 3) and (k >= 0).all() and abs(float(k.sum()) - 1) < 1e-6 and abs(float(k[1, 1]) - 0.98) < 1e-5
    x = torch.randn(6, 7, 4)
    assert (spill(x) - x).abs().max() < 0.1
    const = torch.full((5, 5, 2), 0.3)
    assert torch.allclose(spill(const), const, atol=1e-6)  # weights sum to one, edges replicated
    assert torch.equal(FeatureSpill(1)(x), x)
    with pytest.raises(ValueError):
        FeatureSpill(2)


def test_spill_learns_a_known_blur():
    true = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]])
    x = torch.randn(24, 24, 8, generator=torch.Generator().manual_seed(0))
    target = F.conv2d(F.pad(x.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate"),
                      true[None, None].expand(8, 1, 3, 3), groups=8)[0].permute(1, 2, 0)
    spill = FeatureSpill(3)
    opt = torch.optim.Adam(spill.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = (spill(x) - target).abs().mean()
        loss.backward()
        opt.step()
    assert (spill.kernel().detach() - true).abs().max() < 0.02


def test_an_even_spill_size_is_a_clear_error():
    from featurefield.errors import FeatureFieldError

    scene, feats = toy_scene()
    with pytest.raises(FeatureFieldError, match="--splat.feature-spill"):
        make_field(scene, feats, 5, feature_spill=2)


def test_field_trains_its_spill_and_compares_through_it():
    scene, feats = toy_scene()
    data = train_data(scene, feats)
    field = make_field(scene, feats, 20, feature_spill=3, feature_background="constant")  # the spill alone
    assert field.models_teacher_spill("toy") and not make_field(scene, feats, 20).models_teacher_spill("toy")
    before = field.spills["toy"].logits.detach().clone()
    run_steps(field, data, 20)
    assert not torch.equal(field.spills["toy"].logits.detach(), before)  # the loss reaches the spill
    with torch.no_grad():
        field.spills["toy"].logits.zero_()  # a plain 3 x 3 box blur
        r = field.render(scene.canonical_cameras()[1])
    grid = tuple(feats.shape[-2:])
    plain, as_teacher = field.decode(r, "toy", grid), field.decode(r, "toy", grid, as_teacher=True)
    emb = resample(r.embedding.permute(2, 0, 1), grid).permute(1, 2, 0)  # the field's own resampling
    blurred = F.avg_pool2d(F.pad(emb.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate"), 3, 1)[0]
    expect = field.decoders["toy"](blurred.permute(1, 2, 0)).permute(2, 0, 1)
    assert torch.allclose(as_teacher, expect, atol=1e-4) and not torch.allclose(plain, as_teacher, atol=1e-3)
    assert torch.equal(field.decode(r, "toy"), field.decode(r, "toy", as_teacher=True))  # full resolution: no spill
    # checkpoints keep it
    again = type(field).from_config(field.config_dict(), field.state_dict())
    assert torch.equal(again.spills["toy"].logits, field.spills["toy"].logits)
