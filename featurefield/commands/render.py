"""``featurefield render``: test views or a camera path of a trained run, to PNGs and MP4s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np

from featurefield.commands.options import Device, opt
from featurefield.errors import FeatureFieldError
from featurefield.render import render_path
from featurefield.run import load_run


def render_command(
    run: Path,
    /,
    output: Annotated[Path | None, opt("FOLDER", "RUN/renders/PATH")] = None,
    path: Literal["test", "train", "orbit", "interpolate"] = "test",
    frames: int = 120,
    orbit: Literal["auto", "full", "captured"] = "auto",
    fps: int = 30,
    outputs: Annotated[tuple[str, ...], opt("{rgb,depth,pca} [...]")] = ("rgb", "depth", "pca"),
    max_views: Annotated[int | None, opt("INT", "all of them")] = None,
    device: Device = "auto",
) -> int:
    """Render a trained RUN to PNGs and MP4s.

    Args:
        run: run folder written by `featurefield train`.
        output: where to write.
        path: the test or train views, a smooth orbit, or a path interpolated through the train views.
        frames: frames of an orbit or an interpolated path.
        orbit: a full circle, captured (a sweep over the azimuths the train views cover, and back), or auto
            (captured when the capture leaves a gap over 90 degrees, e.g. a phone capture from one side).
        fps: frames per second of the videos.
        outputs: which pictures: colour (rgb), depth, feature PCA (pca).
        max_views: render at most this many views of a split (evenly spaced).
    """
    from featurefield.outputs import at_least, check_output_dir

    at_least("--frames", frames)
    at_least("--fps", fps)
    at_least("--max-views", max_views)
    bad = set(outputs) - {"rgb", "depth", "pca"}
    if bad:
        raise FeatureFieldError(f"unknown output(s) {sorted(bad)}; choose from rgb, depth, pca")
    check_output_dir(output or Path(run) / "renders" / path, default=output is None)
    loaded = load_run(run, device=device)
    if "pca" in outputs and not loaded.teacher_names:
        outputs = tuple(o for o in outputs if o != "pca")
    from featurefield.camera_paths import interpolate_path, orbit_path

    if path in ("test", "train"):
        views = loaded.view_indices(path)
        if max_views:
            views = [views[int(i)] for i in np.linspace(0, len(views) - 1, min(max_views, len(views))).round()]
        cams = loaded.normalization.cameras_to_canonical(loaded.scene().cameras[views]).to(loaded.device)
        names = [f"view_{v:04d}" for v in views]
    else:
        train = loaded.cameras("train").to("cpu")
        cams = (orbit_path(train, frames, arc=orbit) if path == "orbit" else interpolate_path(train, frames)).to(loaded.device)
        names = None
    out = output or loaded.path / "renders" / path
    written = render_path(loaded, cams, out, tuple(outputs), fps=fps, names=names)
    for kind, files in written.items():
        pngs = [f for f in files if f.suffix == ".png"]
        videos = [f for f in files if f.suffix != ".png"]
        print(f"{kind}: {len(pngs)} frames in {out / kind}" + "".join(f", video {v}" for v in videos))
    return 0
