"""dino teacher with random weights: stride-14 grid for any size, token order, offline error."""

from __future__ import annotations

import pytest
import torch

from featurefield.errors import FeatureFieldError
from featurefield.teachers.dino import DinoTeacher


@pytest.fixture(scope="module")
def dino():
    return DinoTeacher(pretrained=None, resolution=56)


def test_grid_any_size(dino):
    assert dino.patch == 14 and dino.dim == 384
    f = dino.extract(torch.rand(2, 3, 60, 100))
    h, w = dino.feature_grid(60, 100)
    assert (h, w) == (4, round(100 * 56 / 60 / 14))
    assert f.shape == (2, 384, h, w) and torch.isfinite(f).all()


def test_patch_features_match_forward_features(dino):
    x = torch.rand(1, 3, 56, 84)  # already a whole number of patches at this resolution
    f = dino.extract(x)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    tokens = dino.model.forward_features((x - mean) / std)
    assert tokens.shape[1] == dino.prefix + 4 * 6
    patch = tokens[0, dino.prefix:]
    assert torch.allclose(f[0, :, 1, 2], patch[1 * 6 + 2], atol=1e-5)  # row-major grid
    assert torch.allclose(f[0].flatten(1).T, patch, atol=1e-5)


def test_normalize_option_and_settings():
    t = DinoTeacher(pretrained=None, resolution=28, normalize=True)
    f = t.extract(torch.rand(1, 3, 28, 28))
    assert torch.allclose(f.norm(dim=1), torch.ones(1, 2, 2), atol=1e-4)
    assert t.settings()["normalize"] is True and t.settings()["weights"] == "random-seed0"


def test_random_weights_are_the_same_in_every_process_and_leave_the_rng_alone():
    # the cache keys a random teacher by its settings: another process (an eval, a shard) must rebuild it exactly
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = DinoTeacher(pretrained="random", resolution=28), DinoTeacher(pretrained=None, resolution=28)
    assert torch.equal(torch.get_rng_state(), before)
    pa, pb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    x = torch.rand(1, 3, 28, 28)
    assert torch.equal(a.extract(x), b.extract(x))


def test_offline_error(monkeypatch):
    import featurefield.teachers.dino as dinomod

    monkeypatch.setattr(dinomod, "_cached_hub_file", lambda m, t: ("timm/x", None))
    with pytest.raises(FeatureFieldError, match="vit_small_patch14_dinov2"):
        DinoTeacher()
