"""Sparse points of a posed scene that brought none: SIFT matches triangulated with the known cameras (pycolmap).

A scene from LLFF, a ``transforms.json`` without ``ply_file_path`` or any other format of poses without
points gets them here, as COLMAP's ``point_triangulator`` would: features are extracted and matched
(:func:`featurefield.data.sfm.extract_and_match`) on the training images as the scene loads them, a
COLMAP reconstruction is built from the scene's cameras (poses and intrinsics held fixed), and
``pycolmap.triangulate_points`` triangulates the verified matches. Nothing is estimated about the
cameras, so a few seconds per hundred small images suffice and the points are in the scene's own frame.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from featurefield.cameras import Cameras
from featurefield.data.scene import PointCloud, Scene
from featurefield.errors import FeatureFieldError

#: largest image side handed to SIFT: enough points for initialisation, seconds on a CPU
MAX_IMAGE_SIZE = 1000
#: above this many views, neighbours in name order are matched instead of all pairs
EXHAUSTIVE_MAX_VIEWS = 120


def _colmap_camera(cameras: Cameras, i: int, camera_id: int):
    """Camera ``i`` as a ``pycolmap.Camera`` (OPENCV / OPENCV_FISHEYE where it has distortion)."""
    import pycolmap

    fx, fy, cx, cy = (float(x[i]) for x in (cameras.fx, cameras.fy, cameras.cx, cameras.cy))
    k1, k2, k3, k4, p1, p2 = (float(x) for x in cameras.distortion[i])
    if cameras.model == "opencv" and cameras.is_distorted:
        model, params = "FULL_OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]
    elif cameras.model == "fisheye" and cameras.is_distorted:
        model, params = "OPENCV_FISHEYE", [fx, fy, cx, cy, k1, k2, k3, k4]
    else:
        model, params = "PINHOLE", [fx, fy, cx, cy]
    return pycolmap.Camera(model=model, width=int(cameras.width[i]), height=int(cameras.height[i]),
                           params=params, camera_id=camera_id)


def triangulate_scene(scene: Scene, views: list[int] | None = None, *, max_image_size: int = MAX_IMAGE_SIZE,
                      min_track: int = 3, max_error: float = 2.0, num_threads: int = -1) -> PointCloud:
    """Points triangulated from the scene's known poses, in its world frame.

    Args:
        scene: a posed scene (any format).
        views: the views to match (default: the training views; test views never inform the model).
        max_image_size: longest side SIFT sees.
        min_track: keep points seen in at least this many views.
        max_error: keep points whose mean reprojection error is below this (pixels).
        num_threads: pycolmap worker threads (-1: all cores).
    Returns:
        A :class:`PointCloud` (possibly empty when nothing matched).
    Raises:
        FeatureFieldError: pycolmap is missing or fails on the images.
    """
    try:
        import pycolmap
    except ImportError as err:
        raise FeatureFieldError("triangulating points needs pycolmap (pip install pycolmap); "
                                "or pass --splat.init frustum") from err
    from PIL import Image

    from featurefield.data.sfm import extract_and_match

    views = list(scene.train if views is None else views)
    name = scene.source or scene.name
    if len(views) < 2:
        raise FeatureFieldError(f"{name}: triangulation needs at least two views, found {len(views)}")
    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory(prefix="featurefield-triangulate-") as tmp:
        work = Path(tmp)
        image_dir = work / "images"
        image_dir.mkdir()
        files = {}
        for k, i in enumerate(views):
            rgb = (scene.image(i).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            files[f"{k:05d}.png"] = i
            Image.fromarray(rgb).save(image_dir / f"{k:05d}.png", compress_level=1)
        database = work / "database.db"
        extract_and_match(database, image_dir, matcher="exhaustive" if len(views) <= EXHAUSTIVE_MAX_VIEWS else "sequential",
                          max_image_size=max_image_size, camera_model="PINHOLE", single_camera=False,
                          num_threads=num_threads, source=name)
        db = pycolmap.Database.open(str(database))
        try:
            db_images = db.read_all_images()
        finally:
            db.close()
        rec = pycolmap.Reconstruction()
        w2c = scene.cameras.w2c().double().numpy()
        for im in db_images:
            i = files[im.name]
            rec.add_camera_with_trivial_rig(_colmap_camera(scene.cameras, i, im.camera_id))
            image = pycolmap.Image(name=im.name, camera_id=im.camera_id, image_id=im.image_id)
            rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[i, :3, :4]))
        out = work / "triangulated"
        out.mkdir()
        try:
            rec = pycolmap.triangulate_points(rec, database, image_dir, out)
        except (ValueError, RuntimeError) as err:
            raise FeatureFieldError(f"{name}: triangulating points from the known poses failed "
                                    f"({' '.join(str(err).split())[:200]}); pass --splat.init frustum") from err
    xyz, rgb = [], []
    for p in rec.points3D.values():
        if p.track.length() >= min_track and p.error <= max_error:
            xyz.append(p.xyz)
            rgb.append(p.color)
    if not xyz:
        return PointCloud(torch.zeros(0, 3), torch.zeros(0, 3))
    return PointCloud(torch.from_numpy(np.asarray(xyz)).float(), torch.from_numpy(np.asarray(rgb)).float() / 255.0)
