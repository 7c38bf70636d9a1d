"""clip teacher with random weights (no downloads): shapes, normalization, resolution, dense path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featurefield.errors import FeatureFieldError
from featurefield.teachers.clip import ClipTeacher, interpolate_pos_embed

MODEL = "ViT-S-32"  # small ViT of the same family as ViT-L-14-336


@pytest.fixture(scope="module")
def clip():
    return ClipTeacher(model=MODEL, pretrained=None)


def test_shapes_and_normalization(clip):
    assert clip.dim == clip.model.visual.proj.shape[1] and clip.patch == 32
    imgs = torch.rand(2, 3, 96, 160)
    h, w = clip.feature_grid(96, 160)
    assert (h, w) == (clip.input_size // 32, round(160 * clip.input_size / 96 / 32))
    f = clip.extract(imgs)
    assert f.shape == (2, clip.dim, h, w)
    assert torch.allclose(f.norm(dim=1), torch.ones(2, h, w), atol=1e-4)
    t = clip.encode_text(["a red brick", "a dog"])
    assert t.shape == (2, clip.dim) and torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-4)


def test_dense_tokens_match_model_forward(clip):
    """At the native size our per-token path equals open_clip's own tokens -> ln_post -> proj."""
    v = clip.model.visual
    x = torch.randn(2, 3, clip.input_size, clip.input_size)
    v.output_tokens = True
    try:
        pooled, tokens = v(x)
    finally:
        v.output_tokens = False
    ours = clip.dense_tokens(x)
    ref = tokens @ v.proj
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_maskclip_is_value_path_of_last_block(clip):
    """MaskCLIP = the last block's attention with each token attending only to itself, no residual/MLP."""
    mc = ClipTeacher(model=MODEL, pretrained=None, dense="maskclip")
    mc.model.load_state_dict(clip.model.state_dict())
    v = mc.model.visual
    x = torch.randn(1, 3, mc.input_size, mc.input_size)
    ours = mc.dense_tokens(x)
    tok = v.ln_pre(torch.cat([v.class_embedding.expand(1, 1, -1), v.conv1(x).flatten(2).transpose(1, 2)], 1) + v.positional_embedding)
    for blk in v.transformer.resblocks[:-1]:
        tok = blk(tok)
    last = v.transformer.resblocks[-1]
    n = tok.shape[1]
    diag = torch.full((n, n), float("-inf"))
    diag.fill_diagonal_(0.0)
    y = last.ln_1(tok)
    attn = last.attn(y, y, y, need_weights=False, attn_mask=diag)[0]
    ref = v.ln_post(attn[:, 1:]) @ v.proj
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, clip.dense_tokens(x), atol=1e-2)


def test_resolution_and_sliding_windows(clip):
    img = torch.rand(1, 3, 64, 64)
    big = ClipTeacher(model=MODEL, pretrained=None, resolution=2 * clip.input_size)
    big.model.load_state_dict(clip.model.state_dict())
    f_big = big.extract(img)
    assert f_big.shape[-2:] == (2 * clip.input_size // 32,) * 2
    slide = ClipTeacher(model=MODEL, pretrained=None, resolution=2 * clip.input_size, tiling="sliding")
    slide.model.load_state_dict(clip.model.state_dict())
    slide.calls = 0
    f_slide = slide.extract(img)
    assert f_slide.shape == f_big.shape
    assert slide.calls == 1  # 9 windows, one batched forward
    # a window at the native size sees exactly the native-resolution tokens of its crop
    x = F.interpolate(img, size=(2 * clip.input_size,) * 2, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    x = (x - torch.tensor(slide.mean).view(1, 3, 1, 1)) / torch.tensor(slide.std).view(1, 3, 1, 1)
    crop = x[:, :, : clip.input_size, : clip.input_size]
    g = clip.input_size // 32
    corner = F.normalize(slide.dense_tokens(crop).transpose(1, 2).reshape(1, -1, g, g), dim=1)
    # top-left quarter-window region is covered by one window only
    q = g // 2
    assert torch.allclose(f_slide[..., :q, :q], corner[..., :q, :q], atol=1e-4)


def test_pos_embed_interpolation_identity_and_shape():
    pos = torch.randn(1 + 7 * 7, 16)
    assert interpolate_pos_embed(pos, (7, 7), (7, 7)) is pos
    out = interpolate_pos_embed(pos, (7, 7), (5, 9))
    assert out.shape == (1 + 45, 16) and torch.equal(out[0], pos[0])


def test_offline_error_names_model(monkeypatch, tmp_path):
    import featurefield.teachers.clip as clipmod

    monkeypatch.setattr(clipmod, "_find_cached_checkpoint", lambda m, t: None)
    with pytest.raises(FeatureFieldError, match="ViT-L-14-336 / openai"):
        ClipTeacher()
    with pytest.raises(FeatureFieldError, match="not found"):
        ClipTeacher(model=MODEL, weights=tmp_path / "missing.pt")


def test_random_weights_are_rebuilt_identically(clip):
    # a random teacher's cached features must come from the model every process builds
    again = ClipTeacher(model=MODEL, pretrained="random")
    assert clip.settings()["weights"] == again.settings()["weights"] == "random-seed0"
    pa, pb = clip.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
