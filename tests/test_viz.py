"""Pictures: PCA bases, colour maps, depth and mask pictures, PNG and video writers."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from featurefield import viz
from featurefield.errors import FeatureFieldError
from tests.conftest import cuda


def _structured(m: int = 4000, d: int = 16, seed: int = 0):
    """Features with three known directions of decreasing variance plus small isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    dirs = basis[:, :3]  # [D, 3] orthonormal
    coeff = torch.randn(m, 3, generator=g) * torch.tensor([10.0, 5.0, 2.0])
    x = coeff @ dirs.T + 0.05 * torch.randn(m, d, generator=g) + 3.0
    return x, dirs


def test_fit_pca_recovers_known_directions_in_order():
    x, dirs = _structured()
    basis = viz.fit_pca(x, k=3)
    assert basis.components.shape == (16, 3) and basis.mean.shape == (16,)
    cos = (basis.components.T @ dirs).abs()  # [3, 3]
    assert torch.allclose(cos.diagonal(), torch.ones(3), atol=1e-3)
    assert torch.allclose(basis.mean, torch.full((16,), 3.0), atol=0.5)
    # lo/hi bracket the bulk of the projections (1st/99th percentiles of N(0, sigma))
    assert torch.allclose(basis.hi, torch.tensor([10.0, 5.0, 2.0]) * 2.326, rtol=0.15)
    assert torch.allclose(basis.lo, -torch.tensor([10.0, 5.0, 2.0]) * 2.326, rtol=0.15)


def test_pca_colours_are_stable_and_round_trip():
    x, _ = _structured()
    feats = x.T.reshape(16, 40, 100)  # [D, h, w]
    basis = viz.fit_pca(x)
    a, b = viz.pca_image(feats, basis), viz.pca_image(feats.half(), basis)
    assert a.shape == (40, 100, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    # refitting on a shuffled copy gives the same basis (sign fixed), hence the same colours
    again = viz.fit_pca(x[torch.randperm(len(x))])
    assert np.abs(viz.pca_image(feats, again).astype(int) - a.astype(int)).max() <= 2
    restored = viz.PCABasis.from_dict(basis.to_dict())
    assert np.array_equal(viz.pca_image(feats, restored), a)
    # without a basis the picture still uses the colour range
    auto = viz.pca_image(feats)
    assert auto.min() == 0 and auto.max() == 255
    with pytest.raises(FeatureFieldError):
        viz.pca_image(torch.randn(8, 4, 4), basis)


def test_fewer_dims_than_components():
    basis = viz.fit_pca(torch.randn(100, 2), k=3)
    assert basis.components.shape == (2, 3) and (basis.components[:, 2] == 0).all()
    assert viz.pca_image(torch.randn(2, 5, 5), basis).shape == (5, 5, 3)


def test_heatmap_range_and_colours():
    values = torch.linspace(-2, 5, 64).reshape(8, 8)
    img = viz.heatmap(values)
    lut = viz.colormap("turbo")
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    assert np.array_equal(img[0, 0], lut[0]) and np.array_equal(img[-1, -1], lut[255])
    # explicit limits clip
    clipped = viz.heatmap(values, vmin=0, vmax=1, cmap="viridis")
    assert np.array_equal(clipped[0, 0], viz.colormap("viridis")[0])
    assert np.array_equal(clipped[-1, -1], viz.colormap("viridis")[255])
    gray = viz.heatmap(np.array([[0.0, 0.5, 1.0, np.nan]]), cmap="gray")
    assert gray[0, :, 0].tolist() == [0, 128, 255, 0]
    with pytest.raises(FeatureFieldError):
        viz.heatmap(values, cmap="nope")


def test_depth_image_orders_near_and_far_and_keeps_background():
    depth = torch.linspace(1, 3, 20).repeat(10, 1)  # near on the left
    depth[:, -2:] = 0  # background
    img = viz.depth_image(depth)
    assert (img[:, -1] == 255).all()
    lut = viz.colormap("turbo")
    assert np.abs(img[0, 0].astype(int) - lut[255].astype(int)).max() < 40  # near end of the map
    assert np.abs(img[0, 17].astype(int) - lut[0].astype(int)).max() < 40  # far end of the map
    half = viz.depth_image(depth, alpha=torch.full((10, 20), 0.5))
    assert (half[:, 5].astype(int) > img[:, 5].astype(int) - 1).all()  # blended towards white


def test_overlay_mask_and_side_by_side():
    rgb = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    out = viz.overlay_mask(rgb, mask, color=(0, 255, 0), opacity=0.5, outline=True)
    assert (out[~mask] == 0).all()
    assert tuple(out[10, 15]) == (0, 128, 0) and tuple(out[5, 15]) == (0, 255, 0)
    row = viz.side_by_side([rgb, np.ones((10, 15)), out], labels=["a", "b", "c"])
    assert row.dtype == np.uint8 and row.ndim == 3 and row.shape[0] > 20 and row.shape[1] >= 30 + 30 + 30
    with pytest.raises(FeatureFieldError):
        viz.side_by_side([rgb], labels=["a", "b"])


def test_save_png_atomic_and_readable(tmp_path):
    img = (np.arange(12 * 7 * 3) % 256).astype(np.uint8).reshape(12, 7, 3)
    path = viz.save_png(tmp_path / "sub" / "x.png", img)
    assert np.array_equal(np.asarray(Image.open(path)), img)
    viz.save_png(path, np.ones((4, 4)))  # float grey overwrites
    assert np.asarray(Image.open(path)).shape == (4, 4, 3)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["x.png"]  # no temp files left


def _frames(n=6, h=31, w=41):
    return [np.full((h, w, 3), 40 * i, np.uint8) for i in range(n)]


def test_write_video_mp4_readable(tmp_path):
    path = viz.write_video(tmp_path / "v.mp4", _frames(), fps=10)
    assert path == tmp_path / "v.mp4" and path.stat().st_size > 0
    frames = imageio.mimread(path)
    assert len(frames) == 6 and frames[0].shape[:2] == (32, 42)  # padded to even size
    assert abs(int(frames[3][10, 10, 0]) - 120) < 12


def test_write_video_falls_back_to_gif(tmp_path, monkeypatch):
    monkeypatch.setattr(viz, "_ffmpeg_available", lambda: False)
    with pytest.warns(UserWarning, match="GIF"):
        path = viz.write_video(tmp_path / "v.mp4", _frames(4), fps=10)
    assert path.suffix == ".gif" and not (tmp_path / "v.mp4").exists()
    assert len(imageio.mimread(path)) == 4
    with pytest.raises(FeatureFieldError):
        viz.write_video(tmp_path / "w.mp4", [np.zeros((4, 4, 3), np.uint8), np.zeros((6, 4, 3), np.uint8)])


def test_labels_image_colours_each_label_and_draws_unlabelled_black():
    labels = torch.tensor([[0, 1, 2], [-1, 11, 1]])
    picture = viz.labels_image(labels)
    assert picture.shape == (2, 3, 3) and picture.dtype == np.uint8
    assert (picture[0, 0] == 255).all() and (picture[1, 0] == 0).all()  # 0 white, unlabelled (-1) black
    assert (picture[0, 1] == picture[1, 2]).all() and (picture[0, 1] != picture[0, 2]).any()
    assert (picture[1, 1] == viz.LABEL_PALETTE[1]).all()  # the palette repeats after 10 colours


def test_depth_image_shared_range_compares_two_maps():
    a = torch.full((4, 4), 2.0)
    b = torch.full((4, 4), 4.0)
    near, far = viz.depth_range(torch.cat([a, b], 1))
    assert near == pytest.approx(2.0) and far == pytest.approx(4.0)
    pa, pb = viz.depth_image(a, near=near, far=far), viz.depth_image(b, near=near, far=far)
    assert not np.array_equal(pa, pb)  # same colour scale: different depths, different colours
    assert np.array_equal(pa[0, 0], viz.colormap("turbo")[255]) and np.array_equal(pb[0, 0], viz.colormap("turbo")[0])


def test_draw_keypoints_puts_each_index_in_its_own_colour_where_asked():
    from featurefield.viz import LABEL_PALETTE, draw_keypoints

    rgb = np.full((40, 60, 3), 255, np.uint8)
    uv = np.array([[10.0, 10.0], [45.0, 30.0]])
    out = draw_keypoints(rgb, uv, radius=3, numbers=False)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert tuple(out[10, 10]) == tuple(LABEL_PALETTE[2]) and tuple(out[30, 45]) == tuple(LABEL_PALETTE[3])
    untouched = np.ones((40, 60), bool)
    untouched[5:16, 5:16] = untouched[25:36, 40:51] = False
    assert (out[untouched] == 255).all()  # nothing drawn away from the two points
    again = draw_keypoints(rgb[:, ::-1].copy(), uv[::-1].copy(), radius=3, numbers=False)
    assert tuple(again[30, 45]) == tuple(LABEL_PALETTE[2])  # colour follows the index, not the position


def test_distinct_colours_and_a_legend_beside_the_picture():
    from featurefield.viz import LABEL_PALETTE, distinct_colours, legend_picture

    colours = distinct_colours(40)
    assert colours.shape == (40, 3) and len({tuple(c) for c in colours.tolist()}) == 40  # more than the palette
    assert np.array_equal(colours[:9], LABEL_PALETTE[1:10])  # the labels' colours first
    picture = np.zeros((30, 20, 3), np.uint8)
    out = legend_picture(picture, colours[:3], ["00  seg a", "01  seg b", "02  seg c"], marks=[(10.0, 15.0), None, None],
                         scale=2)
    assert out.shape[0] >= 60 and out.shape[1] > 40  # the picture enlarged twice, the legend to its right
    swatches = out[:, 40:]
    for colour in colours[:3]:
        assert (swatches == colour).all(-1).sum() >= 50  # each entry's swatch
    assert (out[:60, :40] != 0).any(-1).sum() > 0  # the number written on the picture
    assert np.array_equal(legend_picture(picture, colours[:0], []), picture)  # no entries: the picture alone


@cuda
def test_pictures_of_gpu_maps_match_the_cpu_ones():
    """Colour and depth pictures are made on the GPU for GPU renders; they match the CPU's to one step."""
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(64, 80, 3, generator=g) * 1.2 - 0.1
    depth = torch.rand(64, 80, generator=g) * 3 + 1
    depth[:, :10] = 0
    alpha = torch.rand(64, 80, generator=g)
    for cpu, gpu in [(viz.to_uint8(rgb), viz.to_uint8(rgb.cuda())),
                     (viz.depth_image(depth, alpha), viz.depth_image(depth.cuda(), alpha.cuda()))]:
        assert cpu.shape == gpu.shape and cpu.dtype == gpu.dtype == np.uint8
        assert np.abs(cpu.astype(int) - gpu.astype(int)).max() <= 8  # a colour-map step at most
