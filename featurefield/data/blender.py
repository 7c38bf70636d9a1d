"""Blender / NeRF-synthetic scenes: ``transforms_{train,val,test}.json`` beside their images.

Each split file holds ``camera_angle_x`` (horizontal field of view, radians) — or explicit
``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` — and ``frames`` with ``file_path`` (often without an
extension) and a 4x4 OpenGL camera-to-world ``transform_matrix``. Poses are converted to OpenCV
(``c2w @ OPENGL_TO_OPENCV``). RGBA images stay RGBA: :meth:`Scene.image` composites them on
``scene.background`` (the ``background`` option, white by default). The content of these scenes lies
in the standard box ``[-1.5, 1.5]^3``, recorded as ``scene.bounds``. Label maps: ``labels/train/r_0.png``
for ``train/r_0.png`` with ``labels.json`` (:mod:`featurefield.data.labels`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from featurefield.cameras import OPENGL_TO_OPENCV, Cameras
from featurefield.data.images import ImageFiles
from featurefield.data.labels import attach_labels
from featurefield.data.loading import (
    background_option,
    check_downscale,
    check_sizes,
    check_unique,
    downscale_cameras,
    finite_matrix,
    json_number,
    read_json,
    resolve_image,
    take_options,
    uniform_size,
)
from featurefield.data.scene import Normalization, Scene
from featurefield.errors import FeatureFieldError

SPLITS = ("train", "val", "test")
#: The standard NeRF-synthetic bounding box, ``[2, 3]`` (min, max).
SYNTHETIC_BOUNDS = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])


def _root(path: Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def detect(path: Path) -> bool:
    """A folder with ``transforms_train.json`` (or that file itself)."""
    path = Path(path)
    if path.is_file():
        return path.name.startswith("transforms_") and path.suffix == ".json"
    return (path / "transforms_train.json").is_file()


def _read_split(file: Path) -> tuple[Cameras, list[Path]]:
    """Cameras (OpenCV, full resolution) and image files of one split file."""
    meta = read_json(file)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise FeatureFieldError(f"{file}: no 'frames' listed; a transforms file needs at least one frame")
    root = file.parent
    paths, poses = [], []
    for k, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise FeatureFieldError(f"{file}: frame {k} needs 'file_path' and 'transform_matrix'")
        paths.append(resolve_image(root, str(frame["file_path"]), file))
        poses.append(finite_matrix(frame["transform_matrix"], (4, 4), file, f"transform_matrix of frame {k}"))

    check_unique(paths, file)
    if "fl_x" not in meta and "camera_angle_x" not in meta:
        raise FeatureFieldError(f"{file}: missing intrinsics; give 'camera_angle_x' or 'fl_x'")
    # every value is checked before the images are opened: a typo costs no time
    fl_x = json_number(meta["fl_x"], file, "fl_x", positive=True) if "fl_x" in meta else None
    angle = None if fl_x is not None else json_number(meta["camera_angle_x"], file, "camera_angle_x (radians)",
                                                      positive=True, below=math.pi)
    fl_y = json_number(meta["fl_y"], file, "fl_y", positive=True) if "fl_y" in meta else None
    given = {k: json_number(meta[k], file, k) for k in ("cx", "cy") if k in meta}
    if "w" in meta and "h" in meta:
        width = json_number(meta["w"], file, "w", positive=True, integer=True)
        height = json_number(meta["h"], file, "h", positive=True, integer=True)
        check_sizes(paths, [width] * len(paths), [height] * len(paths), file)
    else:
        width, height = uniform_size(paths, file)
    fx = fl_x if fl_x is not None else 0.5 * width / math.tan(0.5 * angle)
    fy = fl_y if fl_y is not None else fx
    cx = given.get("cx", width / 2)
    cy = given.get("cy", height / 2)

    c2w = torch.from_numpy(np.stack(poses)).to(torch.float32) @ OPENGL_TO_OPENCV
    cams = Cameras(c2w=c2w, fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height)
    cams.validate(str(file))
    return cams, paths


def load(path: Path, *, downscale: float = 1.0, **options) -> Scene:
    """Load a NeRF-synthetic scene.

    Args:
        path: the scene folder (or one of its ``transforms_*.json``).
        downscale: shrink images (and intrinsics) by this factor.
        options: ``background`` (RGB in [0, 1], default white) used to composite RGBA images.

    Returns:
        A :class:`Scene` with splits ``train``, ``test`` and (when present) ``val``.
    """
    opts = take_options(options, {"background": (1.0, 1.0, 1.0)}, "blender")
    check_downscale(downscale)
    background = background_option(opts["background"], "blender")
    root = _root(path)
    if not (root / "transforms_train.json").is_file():
        raise FeatureFieldError(f"{root}: no transforms_train.json; not a Blender/NeRF-synthetic scene")

    cams, paths, split = [], [], {}
    start = 0
    for name in SPLITS:
        file = root / f"transforms_{name}.json"
        if not file.is_file():
            continue
        c, p = _read_split(file)
        cams.append(c)
        paths += p
        split[name] = list(range(start, start + len(p)))
        start += len(p)
    split.setdefault("test", [])
    cameras = Cameras(
        c2w=torch.cat([c.c2w for c in cams]), fx=torch.cat([c.fx for c in cams]), fy=torch.cat([c.fy for c in cams]),
        cx=torch.cat([c.cx for c in cams]), cy=torch.cat([c.cy for c in cams]),
        width=torch.cat([c.width for c in cams]), height=torch.cat([c.height for c in cams]),
    )
    full_sizes = list(zip(cameras.width.tolist(), cameras.height.tolist()))
    cameras = downscale_cameras(cameras, downscale)
    bounds = SYNTHETIC_BOUNDS.clone()
    scene = Scene(
        cameras=cameras,
        images=ImageFiles(paths, downscale=downscale),
        split=split,
        normalization=Normalization.fit(cameras, bounds=bounds),
        points=None,
        bounds=bounds,
        background=background,
        name=root.name,
        format="blender",
        source=root,
        metadata={"image_names": [os.path.relpath(p, root) for p in paths]},  # frames may name files elsewhere
    )
    return attach_labels(scene, paths, full_sizes, downscale)
