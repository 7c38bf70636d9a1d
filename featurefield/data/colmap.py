"""COLMAP sparse models (binary or text), read with ``pycolmap``.

The model is looked for in ``sparse/0``, ``sparse`` or the given folder itself; images in
``images/`` (``images_N`` for ``downscale=N`` when that folder exists). Only registered images
(with a pose) become views, sorted by image name; every 8th of them is held out as test. Label maps:
``labels/NAME.png`` for ``images/NAME.jpg`` with ``labels.json`` (:mod:`featurefield.data.labels`).

Camera models, and the choice made for distortion: featurefield **keeps the distortion in the
camera** instead of resampling images to pinhole. Rays and projections use the exact lens model,
no pixels are lost or blurred, and backends that need pinhole images can call
:func:`featurefield.data.undistort.undistort_scene`.

=================  ==========================  =======================================
COLMAP             featurefield model          coefficients ``[k1, k2, k3, k4, p1, p2]``
=================  ==========================  =======================================
SIMPLE_PINHOLE     pinhole (fx = fy = f)       -
PINHOLE            pinhole                     -
SIMPLE_RADIAL      opencv (fx = fy = f)        ``[k, 0, 0, 0, 0, 0]``
RADIAL             opencv (fx = fy = f)        ``[k1, k2, 0, 0, 0, 0]``
OPENCV             opencv                      ``[k1, k2, 0, 0, p1, p2]``
OPENCV_FISHEYE     fisheye                     ``[k1, k2, k3, k4, 0, 0]``
SIMPLE_RADIAL_/    fisheye (equidistant)       ``[k(1), k2, 0, 0, 0, 0]``
RADIAL_FISHEYE
=================  ==========================  =======================================

COLMAP puts the centre of the top-left pixel at (0.5, 0.5), as featurefield does, so principal
points are taken as they are. Poses are COLMAP's ``cam_from_world`` (OpenCV axes), inverted.
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
    check_sizes,
    downscale_cameras,
    holdout_split,
    prescaled_folder,
    resize_cameras,
    take_options,
)
from featurefield.data.scene import Normalization, PointCloud, Scene
from featurefield.errors import FeatureFieldError

_MODEL_FILES = ("cameras.bin", "cameras.txt")


def _has_model(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _MODEL_FILES)


def find_model(path: Path) -> Path | None:
    """The folder holding ``cameras.{bin,txt}``: ``sparse/0``, ``sparse`` or ``path`` itself."""
    path = Path(path)
    for folder in (path / "sparse" / "0", path / "sparse", path):
        if folder.is_dir() and _has_model(folder):
            return folder
    return None


def detect(path: Path) -> bool:
    return Path(path).is_dir() and find_model(path) is not None


def _scene_root(path: Path, model: Path) -> Path:
    """The folder that holds ``images/``: ``path`` or, for a model folder given directly, its parents."""
    for folder in (Path(path), model, *model.parents):
        if (folder / "images").is_dir():
            return folder
    return Path(path)


def _walk_binary(path: Path, fixed: int, count_at: int, item: int, name_at: int | None = None) -> None:
    """Walk the records of a COLMAP binary file and check that they end exactly at the end of the file.

    Each record is ``fixed`` bytes (after an optional NUL-terminated name at ``name_at``) holding a uint64
    count at ``count_at`` of trailing items of ``item`` bytes. pycolmap trusts the counts: a truncated file
    makes it read garbage counts and allocate until ``std::bad_alloc``, minutes later.
    """
    import struct

    data = path.read_bytes()
    bad = FeatureFieldError(f"{path}: cannot read the COLMAP model (the file is truncated or corrupt); re-export it "
                            "from COLMAP (or copy it again)")
    if len(data) < 8:
        raise bad
    (n,), off = struct.unpack_from("<Q", data, 0), 8
    if n > len(data):  # every record takes at least a byte
        raise bad
    for _ in range(n):
        start = off
        if name_at is not None:
            end = data.find(b"\0", off + name_at)
            if end < 0:
                raise bad
            off = end + 1 - name_at  # the name's length moves every later field
        if off + fixed > len(data):
            raise bad
        (count,) = struct.unpack_from("<Q", data, off + count_at)
        off += fixed + count * item
        if off > len(data) or off <= start:
            raise bad
    if off != len(data):
        raise bad


def check_binary_model(model: Path) -> None:
    """Fail fast on truncated ``images.bin`` / ``points3D.bin`` (a one-line error instead of a long stall)."""
    # images.bin: id u32, qvec 4 f64, tvec 3 f64, camera id u32, name\0, n u64, n x (x, y f64, point id u64)
    if (model / "images.bin").is_file() and not (model / "images.txt").is_file():
        _walk_binary(model / "images.bin", fixed=64 + 8, count_at=64, item=24, name_at=64)
    # points3D.bin: id u64, xyz 3 f64, rgb 3 u8, error f64, n u64, n x (image id u32, point2D idx u32)
    if (model / "points3D.bin").is_file() and not (model / "points3D.txt").is_file():
        _walk_binary(model / "points3D.bin", fixed=51, count_at=43, item=8)


def read_reconstruction(model: Path):
    """``pycolmap.Reconstruction`` of ``model`` with a one-line error for a broken model."""
    import pycolmap

    for name in ("images", "points3D"):
        if not any((model / f"{name}{ext}").is_file() for ext in (".bin", ".txt")):
            raise FeatureFieldError(f"{model}: COLMAP model lacks {name}.bin/{name}.txt; export the full sparse model")
    check_binary_model(model)
    try:
        return pycolmap.Reconstruction(str(model))
    except Exception as err:  # pycolmap raises RuntimeError/ValueError for broken files
        msg = " ".join(str(err).split())[:200]
        raise FeatureFieldError(f"{model}: cannot read the COLMAP model ({msg}); re-export it from COLMAP") from err


def camera_intrinsics(camera, source: Path | str) -> tuple[str, list[float], list[float]]:
    """``(model, [fx, fy, cx, cy], [k1, k2, k3, k4, p1, p2])`` of a ``pycolmap.Camera``."""
    name = camera.model.name
    p = [float(x) for x in camera.params]
    if name == "SIMPLE_PINHOLE":
        return "pinhole", [p[0], p[0], p[1], p[2]], [0.0] * 6
    if name == "PINHOLE":
        return "pinhole", p[:4], [0.0] * 6
    if name == "SIMPLE_RADIAL":
        return "opencv", [p[0], p[0], p[1], p[2]], [p[3], 0, 0, 0, 0, 0]
    if name == "RADIAL":
        return "opencv", [p[0], p[0], p[1], p[2]], [p[3], p[4], 0, 0, 0, 0]
    if name == "OPENCV":
        return "opencv", p[:4], [p[4], p[5], 0, 0, p[6], p[7]]
    if name == "OPENCV_FISHEYE":
        return "fisheye", p[:4], [p[4], p[5], p[6], p[7], 0, 0]
    if name == "SIMPLE_RADIAL_FISHEYE":
        return "fisheye", [p[0], p[0], p[1], p[2]], [p[3], 0, 0, 0, 0, 0]
    if name == "RADIAL_FISHEYE":
        return "fisheye", [p[0], p[0], p[1], p[2]], [p[3], p[4], 0, 0, 0, 0]
    raise FeatureFieldError(
        f"{source}: camera model {name} is not supported; re-run COLMAP with SIMPLE_PINHOLE, PINHOLE, "
        "SIMPLE_RADIAL, RADIAL, OPENCV or OPENCV_FISHEYE, or undistort the images with COLMAP first"
    )


def load(path: Path, *, downscale: float = 1.0, **options) -> Scene:
    """Load a COLMAP scene (sparse model + images).

    Args:
        path: the scene folder (with ``sparse/0`` or ``sparse``) or the model folder itself.
        downscale: shrink images by this factor (``images_N`` used when present).

    Returns:
        A :class:`Scene` with the registered views sorted by name, COLMAP points as
        ``scene.points``, ``metadata["image_names"]`` and ``metadata["colmap_image_ids"]``.
    """
    take_options(options, {}, "colmap")
    check_downscale(downscale)
    path = Path(path)
    model = find_model(path)
    if model is None:
        raise FeatureFieldError(f"{path}: no COLMAP model (cameras.bin or cameras.txt in sparse/0, sparse or the folder)")
    rec = read_reconstruction(model)
    images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise FeatureFieldError(f"{model}: the COLMAP model has no registered images; re-run mapping with more overlap")
    root = _scene_root(path, model)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise FeatureFieldError(f"{root}: no images/ folder beside the COLMAP model")

    lenses, intr, dist, c2w, paths = set(), [], [], [], []
    for im in images:
        cam = rec.cameras[im.camera_id]
        lens, k, d = camera_intrinsics(cam, model)
        lenses.add(lens)
        intr.append(k + [cam.width, cam.height])
        dist.append(d)
        w2c = np.eye(4)
        w2c[:3] = im.cam_from_world().matrix()
        c2w.append(np.linalg.inv(w2c))
        paths.append(image_dir / im.name)
    for p in paths:
        if not p.is_file():
            raise FeatureFieldError(f"{p}: image registered in {model} is missing from {image_dir}")
    if "fisheye" in lenses and len(lenses) > 1:
        raise FeatureFieldError(f"{model}: mixes fisheye and perspective camera models; use one model per scene")
    lens = "fisheye" if "fisheye" in lenses else ("opencv" if "opencv" in lenses else "pinhole")
    intr_t = torch.tensor(intr, dtype=torch.float64)
    width, height = intr_t[:, 4].long(), intr_t[:, 5].long()
    check_sizes(paths, width, height, model / "cameras")
    cameras = Cameras(
        c2w=torch.from_numpy(np.stack(c2w)).to(torch.float32), fx=intr_t[:, 0], fy=intr_t[:, 1],
        cx=intr_t[:, 2], cy=intr_t[:, 3], width=width, height=height, model=lens,
        distortion=None if lens == "pinhole" else torch.tensor(dist, dtype=torch.float32),
    )
    cameras.validate(str(model))

    full_sizes = list(zip(width.tolist(), height.tolist()))
    pre = prescaled_folder(image_dir, downscale)
    if pre is not None and all((pre / im.name).is_file() for im in images):
        pre_paths = [pre / im.name for im in images]
        sizes = [image_size(p) for p in pre_paths]
        cameras = resize_cameras(cameras, torch.tensor([s[0] for s in sizes]), torch.tensor([s[1] for s in sizes]))
        source = ImageFiles(pre_paths)
    else:
        cameras = downscale_cameras(cameras, downscale)
        source = ImageFiles(paths, downscale=downscale)

    points = None
    if len(rec.points3D):
        pts = list(rec.points3D.values())
        xyz = np.array([p.xyz for p in pts], dtype=np.float32)
        rgb = np.array([p.color for p in pts], dtype=np.float32) / 255.0
        points = PointCloud(torch.from_numpy(xyz), torch.from_numpy(rgb))
    scene = Scene(
        cameras=cameras, images=source, split=holdout_split(len(images)),
        normalization=Normalization.fit(cameras), points=points, background=None,
        name=root.name, format="colmap", source=root,
        metadata={"image_names": [im.name for im in images], "colmap_image_ids": [int(im.image_id) for im in images],
                  "model": str(model)},
    )
    return attach_labels(scene, paths, full_sizes, downscale)
