"""``featurefield process-images``: camera poses of plain photos with COLMAP, written as a scene folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import tyro

from featurefield.data.sfm import run_sfm


def process_images_command(
    photos: Annotated[Path, tyro.conf.arg(metavar="PHOTOS")],
    output: Annotated[Path, tyro.conf.arg(metavar="OUTPUT")],
    /,
    matcher: Literal["exhaustive", "sequential"] = "exhaustive",
    max_image_size: int = 1600,
    camera_model: str = "SIMPLE_RADIAL",
    overwrite: bool = False,
) -> int:
    """Recover camera poses of plain photos with COLMAP (pycolmap) and write a scene folder.

    Args:
        photos: folder of photos of one scene.
        output: folder to write (``images/`` and the COLMAP model ``sparse/0``).
        matcher: exhaustive (all pairs, up to a few hundred photos) or sequential (video frames).
        max_image_size: longest side, in pixels, used for feature extraction.
        camera_model: COLMAP camera model (SIMPLE_RADIAL, OPENCV, PINHOLE, ...).
        overwrite: replace an existing OUTPUT/images and OUTPUT/sparse.
    """
    import pycolmap
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    pycolmap.logging.minloglevel = 2  # keep COLMAP's own log quiet; rich shows progress
    labels = {"copy": "copy photos", "extract": "extract features", "match": f"match ({matcher})",
              "map": "incremental mapping (images registered)"}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def on_stage(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(labels.get(stage, stage), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        result = run_sfm(photos, output, matcher=matcher, max_image_size=max_image_size,
                         camera_model=camera_model, overwrite=overwrite, on_stage=on_stage)
    print(f"registered {result['registered']} of {result['total']} images, {result['points']} points; "
          f"scene written to {output} (load it with `featurefield inspect {output}`)")
    return 0
