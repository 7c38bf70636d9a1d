"""``featurefield inspect``: load a scene and print what featurefield sees in it."""

from __future__ import annotations

from typing import Annotated

import torch

from featurefield.commands.options import opt
from featurefield.data.inspect import describe_labels, summarize
from featurefield.data.registry import load_scene


def inspect_command(scene: str, /, format: Annotated[str | None, opt("FORMAT", "detected")] = None,
                    downscale: float = 1.0) -> int:
    """Load a scene folder and summarise it (format, views, resolution, split, cameras, points, labels).

    Args:
        scene: scene folder (Blender, nerfstudio, COLMAP, LLFF), or demo for the built-in scene.
        format: the scene's format: blender, nerfstudio, colmap or llff.
        downscale: shrink images by this factor, as training would.
    """
    from rich.console import Console
    from rich.table import Table

    loaded = load_scene(scene, format=format, downscale=downscale)
    info = summarize(loaded)
    table = Table(title=f"scene {info['name']}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    res = ", ".join(f"{w}x{h}" for w, h in info["resolutions"][:4])
    if len(info["resolutions"]) > 4:
        res += f" (+{len(info['resolutions']) - 4} more)"
    rows = [
        ("format", info["format"]),
        ("source", str(info["source"])),
        ("views", str(info["views"])),
        ("resolution", res),
        ("split", ", ".join(f"{k} {v}" for k, v in info["split"].items())),
        ("camera model", info["camera_model"] + (" (with distortion)" if info["distorted"] else "")),
        ("focal (px)", "{:.1f}".format(info["focal_px"][0]) if info["focal_px"][0] == info["focal_px"][1]
         else "{:.1f} - {:.1f}".format(*info["focal_px"])),
        ("camera extent", f"{info['camera_extent']:.3f} (world units, max distance from mean centre)"),
        ("points", str(info["points"])),
        ("depth", "yes" if info["depth"] else "no"),
        ("labels", describe_labels(info)),
        ("background", "opaque" if info["background"] is None else str(tuple(round(c, 3) for c in info["background"]))),
        ("normalization", "centre ({}), scale {:.4g}".format(
            ", ".join(f"{c:.3f}" for c in info["normalization"]["center"]), info["normalization"]["scale"])),
    ]
    if info["bounds"] is not None:
        b = torch.tensor(info["bounds"])
        rows.append(("bounds", f"{b[0].tolist()} .. {b[1].tolist()}"))
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
    return 0
