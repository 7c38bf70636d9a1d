"""Scene files with wrong types, repeated frames, cut-short files: one line each, before any work (issue 23)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from featurefield.data import load_scene
from featurefield.errors import FeatureFieldError
from tests.toyscenes import edit_json, raises_one_line, write_blender, write_llff, write_nerfstudio

BEER = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "beer"


@pytest.mark.parametrize(("key", "value", "words"), [
    ("camera_angle_x", "wide", ["camera_angle_x", '"wide"']),
    ("camera_angle_x", None, ["camera_angle_x", "null"]),
    ("camera_angle_x", 0, ["camera_angle_x", "> 0"]),
    ("camera_angle_x", 4.0, ["camera_angle_x", "< 3.14159"]),
    ("camera_angle_x", True, ["camera_angle_x", "true"]),
    ("fl_x", -3, ["fl_x", "> 0"]),
    ("cx", [1, 2], ["cx"]),
])
def test_blender_values_of_the_wrong_type_or_range(tmp_path, key, value, words):
    root = write_blender(tmp_path / "s")
    edit_json(root / "transforms_train.json", lambda m: m.update({key: value}))
    raises_one_line(root, "transforms_train.json", *words)


@pytest.mark.parametrize(("w", "h"), [([16], 12), (16.5, 12), ("16", 12), (0, 12), (16, -12)])
def test_blender_declared_size_must_be_whole_positive_numbers(tmp_path, w, h):
    root = write_blender(tmp_path / "s")
    edit_json(root / "transforms_test.json", lambda m: m.update({"w": w, "h": h}))
    raises_one_line(root, "transforms_test.json", "whole number")


def test_nerfstudio_values_of_the_wrong_type(tmp_path):
    raises_one_line(write_nerfstudio(tmp_path / "a", fl_x="ten"), "fl_x of frame 0", '"ten"')
    raises_one_line(write_nerfstudio(tmp_path / "b", w=[12], h=8), "w of frame 0", "whole number")
    raises_one_line(write_nerfstudio(tmp_path / "c", k1="x"), "k1 of frame 0")
    raises_one_line(write_nerfstudio(tmp_path / "d", applied_transform=[["a"] * 4] * 3), "applied_transform")


def test_a_repeated_frame_is_refused(tmp_path):
    root = write_blender(tmp_path / "s")
    edit_json(root / "transforms_train.json", lambda m: m["frames"].append(m["frames"][0]))
    raises_one_line(root, "transforms_train.json", "frame 3 repeats the image of frame 0")
    root = write_nerfstudio(tmp_path / "n")
    edit_json(root / "transforms.json", lambda m: m["frames"].append(dict(m["frames"][1])))
    raises_one_line(root, "frame 3 repeats the image of frame 1")


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_truncated_image_is_found_at_load_time(tmp_path, split):
    """Its header reads fine; the missing end marker is found before training, not after it."""
    root = write_blender(tmp_path / "s", size=(64, 48))
    png = root / split / "r_1.png"
    png.write_bytes(png.read_bytes()[:-40])
    raises_one_line(root, str(png), "truncated")


def test_a_truncated_jpeg_is_found_at_load_time(tmp_path):
    root = write_blender(tmp_path / "s", ext=".jpg", rgba=False)
    jpg = root / "test" / "r_0.jpg"
    jpg.write_bytes(jpg.read_bytes()[:-30])
    raises_one_line(root, str(jpg), "truncated")


@pytest.mark.parametrize(("near", "far"), [(0.0, 5.0), (-1.0, 5.0), (5.0, 2.0), (3.0, 3.0)])
def test_llff_depth_bounds_must_be_ordered_and_positive(tmp_path, near, far):
    root = write_llff(tmp_path / "s")
    arr = np.load(root / "poses_bounds.npy")
    arr[2, 15:] = [near, far]
    np.save(root / "poses_bounds.npy", arr)
    raises_one_line(root, "poses_bounds.npy", "row 2", "0 < near < far")


@pytest.mark.skipif(not BEER.is_dir(), reason="needs ../shared/datasets/beer")
@pytest.mark.parametrize("name", ["points3D.bin", "images.bin"])
def test_a_truncated_colmap_file_fails_fast(tmp_path, name):
    """pycolmap trusts a cut-short file's counts and allocates for minutes; it is refused in well under a second."""
    sparse = tmp_path / "beer" / "sparse" / "0"
    shutil.copytree(BEER / "sparse" / "0", sparse)
    (tmp_path / "beer" / "images").symlink_to(BEER / "images")
    data = (sparse / name).read_bytes()
    (sparse / name).write_bytes(data[: len(data) * 2 // 3])
    t = time.perf_counter()
    raises_one_line(tmp_path / "beer", str(sparse / name), "truncated")
    assert time.perf_counter() - t < 5.0


def test_a_truncated_binary_model_with_a_few_bytes_missing(tmp_path):
    """Two points, the second's track cut by 4 bytes: the walk over the records finds it."""
    import struct

    from featurefield.data.colmap import check_binary_model

    rec = lambda i, n: struct.pack("<Q3d3BdQ", i, 0.0, 0.0, 0.0, 1, 2, 3, 0.5, n) + b"\0" * 8 * n  # noqa: E731
    (tmp_path / "points3D.bin").write_bytes(struct.pack("<Q", 2) + rec(1, 2) + rec(2, 3))
    check_binary_model(tmp_path)
    (tmp_path / "points3D.bin").write_bytes((tmp_path / "points3D.bin").read_bytes()[:-4])
    with pytest.raises(FeatureFieldError, match="truncated"):
        check_binary_model(tmp_path)


def test_valid_scenes_still_load(tmp_path):
    assert len(load_scene(write_blender(tmp_path / "b"))) == 5
    assert len(load_scene(write_nerfstudio(tmp_path / "n", k1=0.0, cx=6, cy=4.0, w=12, h=8))) == 3
    assert len(load_scene(write_llff(tmp_path / "l"))) == 9
    meta = json.loads((tmp_path / "b" / "transforms_train.json").read_text())
    assert meta["camera_angle_x"] == 0.69
