"""LLFF scenes: ``poses_bounds.npy`` with ``images/`` (or ``images_N/``).

``poses_bounds.npy`` is ``[N, 17]``: a 3x5 matrix per view, flattened row-major, whose first three
columns are the camera-to-world rotation with axes ``[down, right, back]``, the fourth the camera
centre and the fifth ``[H, W, f]`` (full-resolution size and focal length), then the near and far
depth bounds. Views pair with the image files sorted by name. Rotations are converted to OpenCV
(``x = right, y = down, z = -back``); the principal point is the image centre and intrinsics scale
to the size of the images actually found. Every 8th view (``i % 8 == 0``) is held out as test;
near/far are kept in ``scene.metadata["near"]`` / ``["far"]``. Label maps: ``labels/IMG_01.png`` for
``images/IMG_01.JPG`` with ``labels.json`` (:mod:`featurefield.data.labels`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from featurefield.cameras import Cameras
from featurefield.data.images import ImageFiles, image_size
from featurefield.data.labels import attach_labels
from featurefield.data.loading import (
    check_downscale,
    downscaled_size,
    holdout_split,
    list_photos,
    prescaled_folder,
    take_options,
    uniform_size,
)
from featurefield.data.scene import Normalization, Scene
from featurefield.errors import FeatureFieldError

FILE = "poses_bounds.npy"


def detect(path: Path) -> bool:
    path = Path(path)
    return path.name == FILE if path.is_file() else (path / FILE).is_file()


def llff_to_opencv(poses: np.ndarray) -> np.ndarray:
    """``[N, 3, 4]`` LLFF ``[down, right, back | t]`` -> ``[N, 4, 4]`` OpenCV c2w."""
    c2w = np.tile(np.eye(4), (len(poses), 1, 1))
    c2w[:, :3, 0] = poses[:, :, 1]
    c2w[:, :3, 1] = poses[:, :, 0]
    c2w[:, :3, 2] = -poses[:, :, 2]
    c2w[:, :3, 3] = poses[:, :, 3]
    return c2w


def load(path: Path, *, downscale: float = 1.0, **options) -> Scene:
    """Load an LLFF scene.

    Args:
        path: the scene folder (or its ``poses_bounds.npy``).
        downscale: shrink images by this factor (``images_N`` used when it exists).
    """
    take_options(options, {}, "llff")
    check_downscale(downscale)
    path = Path(path)
    root = path.parent if path.is_file() else path
    file = root / FILE
    try:
        arr = np.load(file, allow_pickle=False)
    except FileNotFoundError as err:
        raise FeatureFieldError(f"{file}: file not found") from err
    except (OSError, ValueError) as err:
        raise FeatureFieldError(f"{file}: cannot read ({err}); regenerate it with LLFF's imgs2poses") from err
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise FeatureFieldError(f"{file}: expected an [N, 17] array, found shape {tuple(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = int(np.nonzero(~np.isfinite(arr).all(1))[0][0])
        raise FeatureFieldError(f"{file}: row {bad} contains NaN or inf; fix or remove that view")
    poses = arr[:, :15].reshape(-1, 3, 5)
    hwf = poses[:, :, 4]
    if (hwf <= 0).any():
        raise FeatureFieldError(f"{file}: missing intrinsics (H, W, focal must be positive)")
    near, far = arr[:, 15], arr[:, 16]
    bad = np.nonzero((near <= 0) | (far <= near))[0]
    if len(bad):
        raise FeatureFieldError(f"{file}: row {int(bad[0])} has depth bounds near={near[bad[0]]:g}, far={far[bad[0]]:g}; "
                                "they must satisfy 0 < near < far (regenerate with LLFF's imgs2poses)")

    image_dir = root / "images"
    pre = prescaled_folder(image_dir, downscale)
    folder = pre if pre is not None else image_dir
    if not folder.is_dir():
        raise FeatureFieldError(f"{root}: no images/ folder beside {FILE}")
    paths = list_photos(folder)
    if len(paths) != len(arr):
        raise FeatureFieldError(f"{folder}: holds {len(paths)} images but {file} has {len(arr)} poses; they must match one to one")
    width, height = uniform_size(paths, folder)
    file_downscale = 1.0 if pre is not None else downscale
    out_w, out_h = downscaled_size(width, height, file_downscale)
    sx, sy = out_w / hwf[:, 1], out_h / hwf[:, 0]
    fx = hwf[:, 2] * sx
    fy = hwf[:, 2] * sy
    cameras = Cameras(
        c2w=torch.from_numpy(llff_to_opencv(poses[:, :, :4])).to(torch.float32),
        fx=torch.from_numpy(fx), fy=torch.from_numpy(fy), cx=out_w / 2, cy=out_h / 2, width=out_w, height=out_h,
    )
    cameras.validate(str(file))
    scene = Scene(
        cameras=cameras, images=ImageFiles(paths, downscale=file_downscale), split=holdout_split(len(paths)),
        normalization=Normalization.fit(cameras), background=None, name=root.name, format="llff", source=root,
        metadata={"near": arr[:, 15].tolist(), "far": arr[:, 16].tolist(), "image_names": [p.name for p in paths]},
    )
    return attach_labels(scene, paths, [_full_size(image_dir, pre, (width, height), hwf)] * len(paths), downscale)


def _full_size(image_dir: Path, pre: Path | None, found: tuple[int, int], hwf: np.ndarray) -> tuple[int, int]:
    """The full-resolution ``(w, h)`` that ``labels/`` maps must have: that of ``images/`` (read from a header when
    ``images_N/`` was read instead), else the size ``poses_bounds.npy`` records."""
    if pre is None:
        return found
    photos = list_photos(image_dir) if image_dir.is_dir() else []
    return image_size(photos[0]) if photos else (int(round(hwf[0, 1])), int(round(hwf[0, 0])))
