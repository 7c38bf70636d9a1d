"""A plain-data summary of a loaded scene (what ``featurefield inspect`` prints)."""

from __future__ import annotations

from featurefield.data.scene import Scene


def summarize(scene: Scene) -> dict:
    """A plain-data summary of ``scene`` (what ``featurefield inspect`` prints)."""
    cams = scene.cameras
    sizes = sorted({(int(w), int(h)) for w, h in zip(cams.width, cams.height)})
    centers = cams.centers
    extent = float((centers - centers.mean(0)).norm(dim=-1).max()) if len(cams) else 0.0
    return {
        "name": scene.name,
        "format": scene.format,
        "source": str(scene.source) if scene.source is not None else None,
        "views": len(scene),
        "resolutions": sizes,
        "split": {k: len(v) for k, v in scene.split.items()},
        "camera_model": cams.model,
        "distorted": cams.is_distorted,
        "focal_px": (float(cams.fx.min()), float(cams.fx.max())),
        "camera_extent": extent,
        "points": 0 if scene.points is None else int(scene.points.xyz.shape[0]),
        "bounds": None if scene.bounds is None else scene.bounds.tolist(),
        "background": scene.background,
        "normalization": scene.normalization.to_dict(),
        "depth": scene.depths is not None,
        "labels": scene.semantics is not None or scene.instances is not None,
    }
