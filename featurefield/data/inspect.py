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
        "semantic_classes": len(scene.class_names) if scene.semantics is not None and scene.class_names else 0,
        "labelled_views": len(scene.labelled_views(list(range(len(scene))))),
        "instance_views": 0 if scene.instances is None else sum(scene.instances.has(i) for i in range(len(scene))),
        "labels_note": scene.metadata.get("labels_note"),
    }


def describe_labels(info: dict) -> str:
    """The labels line of ``featurefield inspect`` from a :func:`summarize` dict."""
    parts = []
    if info["semantic_classes"]:
        parts.append(f"{info['semantic_classes']} classes on {info['labelled_views']} of {info['views']} views")
    if info["instance_views"]:
        parts.append(f"instance ids on {info['instance_views']} of {info['views']} views")
    text = "; ".join(parts) or "none"
    return text + (f" ({info['labels_note']})" if info.get("labels_note") else "")
