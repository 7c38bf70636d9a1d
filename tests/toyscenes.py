"""Scene folders written for the loader tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featurefield.cameras import OPENGL_TO_OPENCV, look_at


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
