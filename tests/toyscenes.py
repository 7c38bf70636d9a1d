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
