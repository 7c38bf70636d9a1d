"""Scene folders written for the loader tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurefield.cameras import OPENGL_TO_OPENCV, look_at
from featurefield.data import load_scene
from featurefield.errors import FeatureFieldError


def write_blender(root: Path, n_train=3, n_test=2, size=(16, 12), ext=".png", with_val=False, rgba=True,
                  drop_ext=True) -> Path:
    """A tiny Blender scene: cameras on a ring around the origin, random RGBA images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {"train": n_train, "test": n_test}
    if with_val:
        splits["val"] = 2
    k = 0
    for split, n in splits.items():
        (root / split).mkdir(exist_ok=True)
        frames = []
        for j in range(n):
            ang = 2 * math.pi * k / 7
            k += 1
            eye = torch.tensor([[4 * math.cos(ang), 4 * math.sin(ang), 1.0]])
            c2w_gl = (look_at(eye, torch.zeros(3)) @ OPENGL_TO_OPENCV)[0]
            arr = rng.integers(0, 255, size=(size[1], size[0], 4 if rgba else 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / split / f"r_{j}{ext}")
            frames.append({"file_path": f"./{split}/r_{j}" + ("" if drop_ext else ext),
                           "transform_matrix": c2w_gl.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return root


def write_llff(root: Path, n: int = 9, size=(16, 12), focal=14.0) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        ang = 0.2 * i
        right = np.array([np.cos(ang), 0.0, -np.sin(ang)])
        down = np.array([0.0, -1.0, 0.0])
        back = np.cross(down, right)
        pose = np.stack([down, right, back, [i * 0.1, 0, 2.0], [size[1], size[0], focal]], 1)
        rows.append(np.concatenate([pose.reshape(-1), [0.5 + i, 10.0 + i]]))
        Image.fromarray(np.full((size[1], size[0], 3), 20 * i, np.uint8)).save(root / "images" / f"IMG_{i:02d}.JPG")
    np.save(root / "poses_bounds.npy", np.stack(rows))
    return root


def edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def raises_one_line(path, *patterns, **kwargs) -> str:
    with pytest.raises(FeatureFieldError) as info:
        load_scene(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for p in patterns:
        assert p in msg, (p, msg)
    return msg


def write_nerfstudio(root: Path, n=3, size=(12, 8), **meta) -> Path:
    (root / "images").mkdir(parents=True)
    frames = []
    for i in range(n):
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(root / "images" / f"{i}.png")
        c2w = np.eye(4)
        c2w[:3, 3] = [i, 0, 3]
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": c2w.tolist()})
    (root / "transforms.json").write_text(json.dumps({"fl_x": 10.0, **meta, "frames": frames}))
    return root


CAMERA_LINES = {
    "SIMPLE_PINHOLE": "20 8.2 6.1",
    "PINHOLE": "20 21 8.2 6.1",
    "SIMPLE_RADIAL": "20 8.2 6.1 -0.08",
    "RADIAL": "20 8.2 6.1 -0.08 0.02",
    "OPENCV": "20 21 8.2 6.1 -0.08 0.02 0.003 -0.002",
    "OPENCV_FISHEYE": "20 21 8.2 6.1 0.05 -0.01 0.002 0.001",
}


def write_text_model(root: Path, model: str, n_images: int = 3, size=(16, 12)) -> Path:
    """A tiny COLMAP text model of ``n_images`` views of a few points, plus the images."""
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    (root / "images").mkdir()
    (sparse / "cameras.txt").write_text(f"1 {model} {size[0]} {size[1]} {CAMERA_LINES[model]}\n")
    lines = []
    for i in range(n_images):
        angle = 0.15 * i
        qw, qy = np.cos(angle / 2), np.sin(angle / 2)  # rotation about y
        lines.append(f"{i + 1} {qw} 0 {qy} 0 {0.3 * i} -0.1 2.5 1 view_{i}.png\n\n")
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(root / "images" / f"view_{i}.png")
    (sparse / "images.txt").write_text("".join(lines))
    (sparse / "points3D.txt").write_text("1 0.1 0.2 0.3 255 0 0 0.5\n2 -0.4 0.1 0.2 0 255 0 0.5\n")
    return root


def random_labels(size, classes: int, seed: int, ignore: int | None = None) -> np.ndarray:
    """``[h, w]`` uint8 labels in ``[0, classes)`` for ``size = (w, h)``, with a few ``ignore`` pixels when given."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=(size[1], size[0])).astype(np.uint8)
    if ignore is not None:
        labels[rng.random(labels.shape) < 0.1] = ignore
    return labels


def write_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> Path:
    """Save ``array`` as a PNG at ``path`` (folders made); a ``palette`` makes it a palette PNG of the same indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is None:
        image = Image.fromarray(array)
    else:
        image = Image.new("P", (array.shape[1], array.shape[0]))
        image.putdata(array.reshape(-1).tolist())
        image.putpalette(palette)
    image.save(path)
    return path


def write_classes(root: Path, classes: list[str], **keys) -> Path:
    """``root/labels.json`` with ``classes`` and any other keys (``ignore``, ``colors``, ...)."""
    path = root / "labels.json"
    path.write_text(json.dumps({"classes": classes, **keys}))
    return path
