"""COLMAP loader: beer reprojection against COLMAP itself, camera models, text models."""

from __future__ import annotations

import os

import numpy as np
import pycolmap
import pytest
import torch

from featurefield.data import detect_format, load_scene
from featurefield.errors import FeatureFieldError
from tests.toyscenes import CAMERA_LINES, write_text_model


def _tracks(rec: pycolmap.Reconstruction, image_ids: list[int]):
    """Every observation of every 3D point: (view index, point index, observed xy)."""
    view_of = {iid: i for i, iid in enumerate(image_ids)}
    views, point_idx, xyz, obs = [], [], [], []
    for k, p in enumerate(rec.points3D.values()):
        xyz.append(p.xyz)
        for el in p.track.elements:
            views.append(view_of[el.image_id])
            point_idx.append(k)
            obs.append(rec.images[el.image_id].points2D[el.point2D_idx].xy)
    return (torch.tensor(views), torch.tensor(point_idx), torch.tensor(np.array(xyz)),
            torch.tensor(np.array(obs)))


def test_beer_reprojects_colmap_points_like_colmap(beer_dir):
    scene = load_scene(beer_dir)
    assert scene.format == "colmap" and len(scene) == 71
    rec = pycolmap.Reconstruction(str(beer_dir / "sparse" / "0"))
    # Intrinsics are COLMAP's (SIMPLE_RADIAL kept as an opencv camera with k1).
    for i in (0, 35, 70):
        im = rec.images[scene.metadata["colmap_image_ids"][i]]
        f, cx, cy, k = rec.cameras[im.camera_id].params
        assert scene.metadata["image_names"][i] == im.name
        assert scene.cameras.fx[i] == pytest.approx(f) and scene.cameras.cx[i] == pytest.approx(cx)
        assert scene.cameras.cy[i] == pytest.approx(cy) and scene.cameras.distortion[i, 0] == pytest.approx(k)
    assert scene.points is not None and len(scene.points.xyz) == len(rec.points3D)

    views, point_idx, xyz, obs = _tracks(rec, scene.metadata["colmap_image_ids"])
    errors = torch.empty(len(views), dtype=torch.float64)
    for i in range(len(scene)):
        m = views == i
        uv, z = scene.cameras.project(xyz[point_idx[m]].float(), i)
        assert (z > 0).all()
        errors[m] = (uv.double() - obs[m]).norm(dim=-1)
    # COLMAP's mean reprojection error averages each point's mean error over its track.
    per_point = torch.zeros(len(xyz), dtype=torch.float64).index_add_(0, point_idx, errors)
    per_point /= torch.bincount(point_idx, minlength=len(xyz))
    ours = float(per_point.mean())
    assert abs(ours - rec.compute_mean_reprojection_error()) < 0.1, ours


def test_beer_split_every_eighth_sorted_by_name(beer_dir):
    scene = load_scene(beer_dir)
    names = scene.metadata["image_names"]
    assert names == sorted(names)
    assert scene.test == list(range(0, 71, 8)) and len(scene.train) == 71 - 9


def test_text_model_equals_binary_and_downscale(beer_dir, tmp_path):
    rec = pycolmap.Reconstruction(str(beer_dir / "sparse" / "0"))
    (tmp_path / "sparse").mkdir()
    rec.write_text(str(tmp_path / "sparse"))  # model directly in sparse/
    os.symlink(beer_dir / "images", tmp_path / "images")
    assert detect_format(tmp_path) == "colmap"
    text = load_scene(tmp_path)
    binary = load_scene(beer_dir)
    torch.testing.assert_close(text.cameras.c2w, binary.cameras.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(text.cameras.fx, binary.cameras.fx)
    small = load_scene(tmp_path, downscale=4)
    assert small.cameras.width[0] == 180 and small.cameras.height[0] == 320
    assert small.rgba(5).shape == (320, 180, 3)
    torch.testing.assert_close(small.cameras.fx, binary.cameras.fx / 4)


@pytest.mark.parametrize("model", list(CAMERA_LINES))
def test_camera_models_project_like_colmap(tmp_path, model):
    root = write_text_model(tmp_path / "scene", model)
    scene = load_scene(root)
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    expected_kind = {"SIMPLE_PINHOLE": "pinhole", "PINHOLE": "pinhole", "OPENCV_FISHEYE": "fisheye"}.get(model, "opencv")
    assert scene.cameras.model == expected_kind
    pts = torch.tensor([[0.1, 0.2, 0.3], [-0.4, 0.1, 0.2], [0.9, -0.6, 0.5], [-0.8, 0.7, -0.3]])
    for i, iid in enumerate(scene.metadata["colmap_image_ids"]):
        im = rec.images[iid]
        ours, _ = scene.cameras.project(pts, i)
        theirs = [im.camera.img_from_cam(im.cam_from_world() * p.double().numpy()) for p in pts]
        torch.testing.assert_close(ours.double(), torch.tensor(np.array(theirs)), atol=1e-3, rtol=0)
    red = (scene.points.xyz - torch.tensor([0.1, 0.2, 0.3])).norm(dim=-1).argmin()
    torch.testing.assert_close(scene.points.rgb[red], torch.tensor([1.0, 0.0, 0.0]))


def test_unsupported_camera_model_is_a_one_line_error(tmp_path):
    root = write_text_model(tmp_path / "scene", "PINHOLE")
    (root / "sparse" / "0" / "cameras.txt").write_text("1 FOV 16 12 20 21 8 6 0.5\n")
    with pytest.raises(FeatureFieldError, match="FOV is not supported"):
        load_scene(root)


def test_model_without_registered_images(beer_dir, tmp_path):
    rec = pycolmap.Reconstruction(str(beer_dir / "sparse" / "0"))
    for frame_id in list(rec.reg_frame_ids()):
        rec.deregister_frame(frame_id)
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    rec.write(str(tmp_path / "sparse" / "0"))
    os.symlink(beer_dir / "images", tmp_path / "images")
    with pytest.raises(FeatureFieldError, match="no registered images") as err:
        load_scene(tmp_path)
    assert str(tmp_path / "sparse" / "0") in str(err.value)


def test_registered_image_missing_on_disk(tmp_path):
    root = write_text_model(tmp_path / "scene", "PINHOLE")
    (root / "images" / "view_1.png").unlink()
    with pytest.raises(FeatureFieldError, match="view_1.png.*missing"):
        load_scene(root)
