"""LLFF loader: beer through poses_bounds.npy agrees with the COLMAP model; synthetic folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurefield.data import detect_format, load_scene
from featurefield.data.sfm import align_similarity
from featurefield.errors import FeatureFieldError
from tests.toyscenes import write_llff


def test_beer_llff_matches_colmap_up_to_similarity(beer_dir):
    llff = load_scene(beer_dir, format="llff")
    colmap = load_scene(beer_dir, format="colmap")
    assert len(llff) == len(colmap) == 71
    assert llff.cameras.model == "pinhole"
    # Pair views by image name (both loaders sort by name, but do not rely on it).
    order = [llff.metadata["image_names"].index(n) for n in colmap.metadata["image_names"]]
    a, b = llff.cameras[order], colmap.cameras
    s, R, t, residuals = align_similarity(a.centers, b.centers)
    extent = float((b.centers - b.centers.mean(0)).norm(dim=-1).max())
    assert float(residuals.max()) < 1e-3 * extent
    # Orientations agree under the same rotation: this pins the [down, right, back] conversion.
    rel = b.c2w[:, :3, :3].double().transpose(1, 2) @ R @ a.c2w[:, :3, :3].double()
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    assert float(torch.rad2deg(torch.arccos(cos)).max()) < 0.1
    # near/far kept; every 8th view held out
    raw = np.load(beer_dir / "poses_bounds.npy")
    assert llff.metadata["near"][3] == pytest.approx(raw[3, 15]) and llff.metadata["far"][3] == pytest.approx(raw[3, 16])
    assert llff.test == list(range(0, 71, 8))


def test_synthetic_llff_conventions(tmp_path):
    root = write_llff(tmp_path / "scene")
    assert detect_format(root) == "llff"
    scene = load_scene(root)
    assert scene.split == {"train": [1, 2, 3, 4, 5, 6, 7], "test": [0, 8]}
    assert scene.metadata["near"][2] == 2.5 and scene.metadata["far"][2] == 12.0
    cams = scene.cameras
    assert cams.fx[0] == 14.0 and cams.cx[0] == 8.0 and cams.cy[0] == 6.0
    # OpenCV axes: x = right column, y = down column, z = -back (forward).
    torch.testing.assert_close(cams.c2w[0, :3, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(cams.c2w[0, :3, 1], torch.tensor([0.0, -1.0, 0.0]))
    torch.testing.assert_close(cams.c2w[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]))
    assert torch.allclose(scene.rgba(3), torch.full((12, 16, 3), 60 / 255))


def test_llff_images_n_and_resize(tmp_path):
    root = write_llff(tmp_path / "scene")
    (root / "images_2").mkdir()
    for p in sorted((root / "images").iterdir()):
        Image.open(p).resize((8, 6)).save(root / "images_2" / p.name)
    half = load_scene(root, downscale=2)
    assert half.images.paths[0].parent.name == "images_2" and half.images.downscale == 1.0
    assert half.cameras.width[0] == 8 and half.cameras.fx[0] == 7.0
    quarter = load_scene(root, downscale=4)  # no images_4: resized on load
    assert quarter.rgba(0).shape == (3, 4, 3) and quarter.cameras.fx[0] == 3.5


def test_llff_image_count_mismatch(tmp_path):
    root = write_llff(tmp_path / "scene")
    (root / "images" / "IMG_04.JPG").unlink()
    with pytest.raises(FeatureFieldError, match="holds 8 images but .*poses_bounds.npy has 9 poses"):
        load_scene(root)


def test_llff_nan_pose(tmp_path):
    root = write_llff(tmp_path / "scene")
    arr = np.load(root / "poses_bounds.npy")
    arr[5, 3] = np.nan
    np.save(root / "poses_bounds.npy", arr)
    with pytest.raises(FeatureFieldError, match="poses_bounds.npy: row 5 contains NaN"):
        load_scene(root)
