"""Where the Gaussians start, in the canonical frame: the scene's points, points triangulated from its poses,
or samples through the training frustums.

``init="auto"`` uses the first that the scene allows: its own sparse points; points triangulated from the
known poses (:mod:`featurefield.data.triangulate`, when pycolmap finds enough of them); samples through
the training frustums between near and far bounds (LLFF's, or :func:`~featurefield.fields.splat.frustum.estimate_bounds`).
A scene with poses and no points thus trains with no extra flag, object-centred or forward-facing.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError
from featurefield.fields.splat.frustum import bounds_from_points, check_bounds, estimate_bounds, frustum_points

log = logging.getLogger(__name__)

#: fewer triangulated points than this and the frustums are sampled with the scene's (or estimated) bounds
MIN_TRIANGULATED = 20


def scene_bounds(scene, views: list[int]) -> tuple[Tensor, Tensor, str]:
    """Near and far z-depths ``[V]`` of ``views`` in the canonical frame, and where they came from.

    LLFF scenes carry them (``scene.metadata["near"/"far"]``, world units, checked); any other scene gets
    an estimate from its cameras.

    Raises:
        FeatureFieldError: the scene's bounds are NaN, inf, not above 0, or inverted (one line).
    """
    meta = scene.metadata or {}
    name = str(scene.source or scene.name)
    if "near" in meta and "far" in meta:
        near = torch.as_tensor(meta["near"], dtype=torch.float64)
        far = torch.as_tensor(meta["far"], dtype=torch.float64)
        if near.shape != (len(scene),) or far.shape != (len(scene),):
            raise FeatureFieldError(f"{name}: {len(scene)} views but {near.numel()} near and {far.numel()} far bounds; "
                                    "fix poses_bounds.npy or pass --splat.init random")
        check_bounds(near, far, f"{name}/poses_bounds.npy" if scene.format == "llff" else name)
        scale = scene.normalization.scale
        return (near[views] * scale).float(), (far[views] * scale).float(), "bounds"
    near, far = estimate_bounds(scene.canonical_cameras()[views])
    return near, far, "estimated bounds"


def frustum_init(scene, count: int, points: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, str]:
    """``count`` points sampled through the training frustums: xyz ``[count, 3]`` (canonical), rgb ``[count, 3]``.

    With ``points`` (``[P, 3]``, canonical) each sample takes the depth of the point nearest to its pixel,
    within the depths they span in that view; without, a random depth within the scene's bounds
    (:func:`scene_bounds`), uniform in inverse depth.
    """
    views = list(scene.train) or list(range(len(scene)))
    cams = scene.canonical_cameras()[views]
    if points is not None:
        near, far = bounds_from_points(cams, points)
        origin = "the triangulated points' depths"
    else:
        near, far, origin = scene_bounds(scene, views)
    bg = None if scene.background is None else torch.tensor(scene.background, dtype=torch.float32)
    xyz, rgb = frustum_points(cams, near, far, count, lambda k: scene.image(views[k]), generator, background=bg,
                              anchors=points)
    return xyz, rgb, f"frustums ({origin})"


def triangulated_init(scene) -> tuple[Tensor, Tensor] | None:
    """Points triangulated from the training views' known poses (canonical frame), or None where pycolmap is
    missing, fails, or finds fewer than :data:`MIN_TRIANGULATED`."""
    try:
        import pycolmap  # noqa: F401
    except ImportError:
        return None
    from featurefield.data.triangulate import triangulate_scene

    try:
        cloud = triangulate_scene(scene)
    except FeatureFieldError as err:
        log.warning("%s; sampling the training frustums instead", err)
        return None
    if len(cloud.xyz) < MIN_TRIANGULATED:
        return None
    return scene.normalization.to_canonical(cloud.xyz), cloud.rgb


def initial_points(scene, init: str, count: int) -> tuple[Tensor, Tensor, str]:
    """Initial Gaussian centres ``[P, 3]`` (canonical) and colours ``[P, 3]`` for a scene without sparse points.

    Args:
        scene: the scene.
        init: ``"auto"`` (triangulate, else frustums), ``"triangulate"`` (an error when that fails),
            ``"frustum"``.
        count: points to sample through the frustums.
    Returns:
        xyz, rgb and a few words on where they came from.
    """
    name = scene.source or scene.name
    if "near" in (scene.metadata or {}):
        scene_bounds(scene, list(scene.train))  # a scene's own bounds are checked whichever way they are used
    if init in ("auto", "triangulate"):
        got = triangulated_init(scene)
        if got is not None:
            # the triangulated points, plus frustum samples between the depths they span: SIFT finds few
            # points on small or textureless images, and none where nothing matched
            xyz, rgb = got
            fill, fill_rgb, _ = frustum_init(scene, max(count - len(xyz), 0), points=xyz)
            return torch.cat([xyz, fill]), torch.cat([rgb.clamp(0, 1), fill_rgb]), "points triangulated from the known poses"
        if init == "triangulate":
            raise FeatureFieldError(f"{name}: --splat.init triangulate found too few points (needs pycolmap and "
                                    f"matching views, at least {MIN_TRIANGULATED}); use --splat.init frustum")
    return frustum_init(scene, count)
