"""``featurefield process-images``: camera poses of plain photos, or of a video's frames, with COLMAP, written as a scene folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from featurefield.commands.options import opt
from featurefield.data.sfm import run_sfm, run_video_sfm


def process_images_command(
    photos: Path,
    output: Path,
    /,
    matcher: Literal["auto", "exhaustive", "sequential"] = "auto",
    max_image_size: Annotated[int | None, opt("PIXELS", "1600 for photos, 1024 for a video")] = None,
    camera_model: Annotated[str, opt("MODEL")] = "SIMPLE_RADIAL",
    num_frames: int = 150,
    min_motion: float = 0.5,
    overwrite: bool = False,
) -> int:
    """Recover camera poses of plain photos, or of a video's frames, with COLMAP (pycolmap) and write a scene folder.

    Args:
        photos: folder of photos of one scene, or a video file, or a folder of videos.
        output: folder to write (images/ and the COLMAP model sparse/0).
        matcher: auto (sequential for videos, exhaustive for photos), exhaustive (all pairs, up to a few
            hundred photos) or sequential (consecutive frames).
        max_image_size: longest side, in pixels, used for feature extraction.
        camera_model: COLMAP camera model (SIMPLE_RADIAL, OPENCV, PINHOLE, ...).
        num_frames: for videos: at most this many frames, sampled evenly, the sharpest of each stretch.
        min_motion: for videos: a frame that moved less than this (in pixels of a 480-pixel preview,
            beyond a small global shift) from the last kept one repeats its view and is skipped; 0 keeps them.
        overwrite: replace an existing OUTPUT/images and OUTPUT/sparse.
    """
    import pycolmap
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from featurefield.data.video import list_videos

    videos = list_videos(photos)
    if matcher == "auto":
        matcher = "sequential" if videos else "exhaustive"
    console = Console(stderr=True)
    pycolmap.logging.minloglevel = 2  # keep COLMAP's own log quiet; rich shows progress
    labels = {"decode": "read the video (frames)", "write": "keep the sharpest frames",
              "copy": "copy photos", "extract": "extract features", "match": f"match ({matcher})",
              "map": "incremental mapping (images registered)"}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def on_stage(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(labels.get(stage, stage), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        options = dict(matcher=matcher, max_image_size=max_image_size, camera_model=camera_model,
                       overwrite=overwrite, on_stage=on_stage)
        if videos:
            result = run_video_sfm(videos, output, num_frames=num_frames, min_motion=min_motion, **options)
        else:
            result = run_sfm(photos, output, **options)
    if videos:
        frames = result["frames"]
        print(f"{len(videos)} video(s): {frames.decoded} frames read, {len(frames.paths)} kept "
              f"({frames.dropped_blurry} stretches dropped as blurred, {frames.dropped_still} as repeating the last view)")
    print(f"registered {result['registered']} of {result['total']} images, {result['points']} points; "
          f"scene written to {output} (load it with `featurefield inspect {output}`)")
    return 0
