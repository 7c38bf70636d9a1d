"""Bad input: every user mistake is a one-line FeatureFieldError naming the file; the CLI exits 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featurefield.cli import main
from featurefield.data import load_scene
from featurefield.errors import FeatureFieldError
from tests.toyscenes import edit_json, raises_one_line, write_blender, write_nerfstudio


# ------------------------------------------------------------------ images
def test_image_referenced_but_absent(tmp_path):
    root = write_blender(tmp_path / "s")
    (root / "train" / "r_1.png").unlink()
    raises_one_line(root, "transforms_train.json", "'./train/r_1'", "does not exist")


def test_unreadable_image(tmp_path):
    root = write_blender(tmp_path / "s")
    (root / "test" / "r_0.png").write_bytes(b"\x89PNG broken")
    raises_one_line(root, str(root / "test" / "r_0.png"), "cannot read image")


def test_unreadable_image_found_at_load_time(tmp_path):
    root = write_nerfstudio(tmp_path / "s", w=12, h=8)
    scene = load_scene(root)  # declared sizes: headers are read, pixels decoded lazily
    (root / "images" / "1.png").write_bytes(b"garbage")
    with pytest.raises(FeatureFieldError, match="1.png: cannot read image"):
        scene.rgba(1)


def test_images_of_different_sizes_with_one_camera(tmp_path):
    root = write_blender(tmp_path / "s")
    Image.fromarray(np.zeros((10, 10, 4), np.uint8)).save(root / "train" / "r_2.png")
    raises_one_line(root, str(root / "train" / "r_2.png"), "10x10", "16x12")
    ns = write_nerfstudio(tmp_path / "ns", w=12, h=8)
    Image.fromarray(np.zeros((9, 12, 3), np.uint8)).save(ns / "images" / "2.png")
    raises_one_line(ns, "2.png", "12x9", "declares a 12x8 camera")


# ------------------------------------------------------------------ poses and intrinsics
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_pose(tmp_path, value):
    root = write_blender(tmp_path / "s")
    edit_json(root / "transforms_train.json", lambda m: m["frames"][1]["transform_matrix"][0].__setitem__(3, value))
    raises_one_line(root, "transforms_train.json", "frame 1", "NaN or inf")
    ns = write_nerfstudio(tmp_path / "ns")
    edit_json(ns / "transforms.json", lambda m: m["frames"][2]["transform_matrix"][1].__setitem__(1, value))
    raises_one_line(ns, "transforms.json", "frame 2", "NaN or inf")


def test_non_rigid_pose(tmp_path):
    root = write_blender(tmp_path / "s")
    edit_json(root / "transforms_test.json", lambda m: m["frames"][0]["transform_matrix"][0].__setitem__(0, 3.0))
    raises_one_line(root, "transforms_test.json", "view 0", "not a rigid transform")


def test_missing_intrinsics(tmp_path):
    root = write_blender(tmp_path / "s")
    edit_json(root / "transforms_train.json", lambda m: m.pop("camera_angle_x"))
    raises_one_line(root, "transforms_train.json", "missing intrinsics")
    ns = write_nerfstudio(tmp_path / "ns")
    edit_json(ns / "transforms.json", lambda m: m.pop("fl_x"))
    raises_one_line(ns, "transforms.json", "missing intrinsics")


def test_broken_json_and_bad_camera_model(tmp_path):
    root = write_blender(tmp_path / "s")
    (root / "transforms_test.json").write_text("{ not json")
    raises_one_line(root, "transforms_test.json", "not valid JSON")
    ns = write_nerfstudio(tmp_path / "ns", camera_model="EQUIRECTANGULAR")
    raises_one_line(ns, "transforms.json", "unsupported camera_model EQUIRECTANGULAR")


# ------------------------------------------------------------------ folders and formats
def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    raises_one_line(tmp_path / "empty", str(tmp_path / "empty"), "empty")
    raises_one_line(tmp_path / "nope", str(tmp_path / "nope"), "no such file or folder")


def test_unrecognised_format(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("hello")
    raises_one_line(tmp_path / "photos", "unrecognised scene format", "process-images")
    raises_one_line(tmp_path / "photos", "unknown format 'mesh'", format="mesh")


def test_fewer_than_two_views(tmp_path):
    root = write_blender(tmp_path / "s", n_train=1, n_test=0)
    (root / "transforms_test.json").unlink()
    raises_one_line(root, str(root), "at least two views", "found 1")


def test_unknown_option(tmp_path):
    root = write_blender(tmp_path / "s")
    raises_one_line(root, "unknown option", "colour", colour=(1, 0, 0))


def test_broken_colmap_model(tmp_path):
    sparse = tmp_path / "sparse" / "0"
    sparse.mkdir(parents=True)
    for name in ("cameras", "images", "points3D"):
        (sparse / f"{name}.bin").write_bytes(b"garbage")
    (tmp_path / "images").mkdir()
    raises_one_line(tmp_path, str(sparse), "cannot read the COLMAP model")


# ------------------------------------------------------------------ through the CLI
def test_cli_inspect_exits_2_with_one_line(tmp_path, capsys):
    root = write_blender(tmp_path / "s")
    (root / "train" / "r_0.png").unlink()
    assert main(["inspect", str(root)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featurefield inspect: error:") and "r_0" in lines[0]
    assert captured.out == ""


def test_cli_subprocess_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "featurefield.cli", "inspect", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "empty" in proc.stderr


def test_cli_inspect_summary(tmp_path, capsys):
    root = write_blender(tmp_path / "s", n_train=3, n_test=2)
    assert main(["inspect", str(root), "--downscale", "2"]) == 0
    out = capsys.readouterr().out
    assert "blender" in out and "8x6" in out and "train 3" in out and "test 2" in out
