"""The Gaussian field's model of what the teacher sees through empty space: a learnt map on its grid."""

from __future__ import annotations

import torch

from featurefield.fields.base import Render
from featurefield.fields.splat.model import GaussianField
from tests.toysplat import make_field, run_steps, toy_scene, train_data


def flat_render(alpha: float, emb: torch.Tensor, size: int = 16) -> Render:
    """A render of ``size x size`` pixels with one embedding everywhere and a uniform opacity."""
    return Render(rgb=torch.zeros(size, size, 3), depth=torch.zeros(size, size, 1),
                  alpha=torch.full((size, size, 1), alpha), embedding=emb.expand(size, size, -1).clone())


def test_the_map_shows_where_the_render_is_transparent_and_only_there():
    torch.manual_seed(0)
    scene, feats = toy_scene(grid=(4, 4))
    field = make_field(scene, feats, 10)
    bg = field.backgrounds["toy"]
    assert bg.shape == (4, 4, feats.shape[1]) and not bg.any()  # [h, w, D], starts at the decoder's own value
    with torch.no_grad():
        bg.normal_()
    emb = torch.randn(field.config.embed_dim)
    plain = field.decoders["toy"](emb)  # [D]
    empty = field.decode(flat_render(0.0, emb), "toy", (4, 4), as_teacher=True)  # [D, h, w]
    torch.testing.assert_close(empty, (plain + bg).permute(2, 0, 1).detach())
    opaque = field.decode(flat_render(1.0, emb), "toy", (4, 4), as_teacher=True)
    torch.testing.assert_close(opaque, plain[:, None, None].expand(-1, 4, 4).detach())
    half = field.decode(flat_render(0.5, emb), "toy", (4, 4), as_teacher=True)
    torch.testing.assert_close(half, (plain + 0.5 * bg).permute(2, 0, 1).detach())
    # full-resolution reads (renders, queries) do not use it
    torch.testing.assert_close(field.decode(flat_render(0.0, emb), "toy"), plain[:, None, None].expand(-1, 16, 16))


def test_training_learns_the_map_and_a_constant_background_keeps_feature_3dgs_model():
    torch.manual_seed(0)
    scene, feats = toy_scene(grid=(4, 4))
    data = train_data(scene, feats)
    field = make_field(scene, feats, 20)
    run_steps(field, data, 20)
    assert field.backgrounds["toy"].abs().amax(-1).gt(0).float().mean() > 0.5  # most cells saw empty space
    constant = make_field(scene, feats, 20, feature_background="constant")
    assert len(constant.backgrounds) == 0
    config = field.config_dict()
    config["config"] = {k: v for k, v in config["config"].items() if k != "feature_background"}
    state = {k: v for k, v in constant.state_dict().items()}
    assert len(GaussianField.from_config(config, state).backgrounds) == 0  # runs from before the option
